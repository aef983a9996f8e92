//! Guest MAC addresses: locally administered unicast, derived from a machine identifier so a
//! runner's address is stable for its life and distinct from every other runner's.
//!
//! The host's DHCP server (bootpd) keys leases by MAC: a fresh MAC per runner takes a fresh lease
//! (see docs/macos.md on lease time), and two running VMs must never share one.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::str::FromStr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MacAddress(pub [u8; 6]);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MacAddressError {
    #[error("{text:?} is not a MAC address; expected six hex octets separated by ':', e.g. 7a:1c:43:5b:93:07")]
    Parse { text: String },
}

impl MacAddress {
    /// A locally administered unicast address derived from `identifier` (e.g. a runner's
    /// 64-bit machine identifier). Distinct identifiers give distinct addresses except with
    /// probability ~2^-46 per pair.
    pub fn derive(identifier: u64) -> MacAddress {
        let mixed = splitmix64(identifier).to_be_bytes();
        let mut bytes = [0u8; 6];
        bytes.copy_from_slice(&mixed[..6]);
        // Bit 0 of the first octet: multicast (clear it); bit 1: locally administered (set it).
        bytes[0] = (bytes[0] & 0b1111_1100) | 0b0000_0010;
        MacAddress(bytes)
    }

    pub fn is_locally_administered(&self) -> bool {
        self.0[0] & 0b10 != 0
    }

    pub fn is_unicast(&self) -> bool {
        self.0[0] & 0b1 == 0
    }

    /// bootpd writes octets without leading zeros (`1,7a:1c:3:5b:93:7`); this is that form.
    pub fn to_bootpd_string(&self) -> String {
        self.0
            .iter()
            .map(|b| format!("{b:x}"))
            .collect::<Vec<_>>()
            .join(":")
    }
}

/// A bijective 64-bit mixer (SplitMix64's finaliser): neighbouring identifiers spread out.
fn splitmix64(value: u64) -> u64 {
    let mut z = value.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl fmt::Display for MacAddress {
    /// The form `VZMACAddress initWithString:` and tart use: `7a:1c:43:5b:93:07`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl FromStr for MacAddress {
    type Err = MacAddressError;

    /// Accepts `7a:1c:43:5b:93:07` and bootpd's `7a:1c:43:5b:93:7` (one-digit octets).
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = || MacAddressError::Parse {
            text: text.chars().take(40).collect(),
        };
        let parts: Vec<&str> = text.trim().split(':').collect();
        if parts.len() != 6 {
            return Err(bad());
        }
        let mut bytes = [0u8; 6];
        for (slot, part) in bytes.iter_mut().zip(parts) {
            if part.is_empty() || part.len() > 2 || !part.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(bad());
            }
            *slot = u8::from_str_radix(part, 16).map_err(|_| bad())?;
        }
        Ok(MacAddress(bytes))
    }
}

impl Serialize for MacAddress {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for MacAddress {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn derived_addresses_are_local_unicast_stable_and_distinct() {
        let a = MacAddress::derive(0xab);
        assert_eq!(a, MacAddress::derive(0xab), "same identifier, same MAC");
        let mut seen = HashSet::new();
        for id in 0..10_000u64 {
            let mac = MacAddress::derive(id);
            assert!(mac.is_locally_administered() && mac.is_unicast(), "{mac}");
            assert!(seen.insert(mac), "collision at {id}");
        }
    }

    #[test]
    fn parses_and_prints_both_forms() {
        let mac: MacAddress = "7a:1c:43:5b:93:07".parse().expect("mac");
        assert_eq!(mac.to_string(), "7a:1c:43:5b:93:07");
        assert_eq!(mac.to_bootpd_string(), "7a:1c:43:5b:93:7");
        let short: MacAddress = "7a:1c:43:5b:93:7".parse().expect("bootpd form");
        assert_eq!(short, mac);
        assert_eq!(
            "7A:1C:43:5B:93:07".parse::<MacAddress>().expect("upper"),
            mac
        );
        for bad in [
            "",
            "7a:1c:43:5b:93",
            "7a:1c:43:5b:93:07:00",
            "7a:1c:43:5b:93:xyz",
            "7a-1c-43-5b-93-07",
            "7a:1c:43:5b::07",
        ] {
            assert!(bad.parse::<MacAddress>().is_err(), "{bad:?} accepted");
        }
        let json = serde_json::to_string(&mac).expect("json");
        assert_eq!(json, r#""7a:1c:43:5b:93:07""#);
        assert_eq!(
            serde_json::from_str::<MacAddress>(&json).expect("back"),
            mac
        );
    }
}
