//! The guest's IP from the host's DHCP leases (`/var/db/dhcpd_leases`, written by bootpd for
//! Virtualization.framework's NAT), looked up by MAC. A fallback for when the runner-agent's
//! authenticated notify has not arrived; it is what tart uses by default.
//!
//! The file is a list of `{ key=value … }` blocks; bootpd prints MACs without leading zeros
//! (`hw_address=1,7a:1c:3:5b:93:7`) and `lease` as hex seconds since the epoch (expiry).
//!
//! [`select`] never returns an expired lease: bootpd hands expired addresses to other MACs
//! (tart#20, tart#1097), so one may belong to another guest by now (tart
//! Sources/tart/MACAddressResolver/Leases.swift skips them too, `expiresAt.isInFuture`). For a
//! VM restored from a Saved State it also skips every lease that existed before the restore:
//! the guest still holds its slot's old address, and only a lease renewed after the restore
//! says which address is its own now.

use crate::mac_address::MacAddress;
use std::net::Ipv4Addr;
use std::path::Path;

pub const DHCPD_LEASES: &str = "/var/db/dhcpd_leases";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub ip: Ipv4Addr,
    pub mac: MacAddress,
    pub name: Option<String>,
    /// Expiry, seconds since the epoch.
    pub expires: u64,
}

/// Parses the leases file; blocks that are malformed or not Ethernet (`hw_address=1,…`) are
/// skipped, so one odd entry never hides the others.
pub fn parse(text: &str) -> Vec<Lease> {
    let mut leases = Vec::new();
    let mut block: Option<Vec<(&str, &str)>> = None;
    for line in text.lines() {
        let line = line.trim();
        match line {
            "{" => block = Some(Vec::new()),
            "}" => {
                if let Some(fields) = block.take() {
                    leases.extend(lease_from(&fields));
                }
            }
            _ => {
                if let (Some(fields), Some((key, value))) = (block.as_mut(), line.split_once('=')) {
                    fields.push((key.trim(), value.trim()));
                }
            }
        }
    }
    leases
}

fn lease_from(fields: &[(&str, &str)]) -> Option<Lease> {
    let get = |key: &str| fields.iter().find(|(k, _)| *k == key).map(|(_, v)| *v);
    let ip = get("ip_address")?.parse().ok()?;
    let (hw_type, mac) = get("hw_address")?.split_once(',')?;
    if hw_type != "1" {
        return None;
    }
    let mac = mac.parse().ok()?;
    let expires = u64::from_str_radix(get("lease")?.trim_start_matches("0x"), 16).ok()?;
    Some(Lease {
        ip,
        mac,
        name: get("name").map(str::to_string),
        expires,
    })
}

/// Which leases of a MAC count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseFilter {
    /// Seconds since the epoch now: leases expiring at or before it are skipped.
    pub now: u64,
    /// For a restored VM: the latest expiry this MAC had before the restore (0 when it had
    /// none). Only a lease expiring later was granted or renewed after the restore.
    pub renewed_after: Option<u64>,
}

impl LeaseFilter {
    /// A cold-booted VM: any unexpired lease of its (fresh) MAC.
    pub fn cold(now: u64) -> LeaseFilter {
        LeaseFilter {
            now,
            renewed_after: None,
        }
    }

    /// A VM restored from a Saved State, given the leases as they were just before it.
    pub fn restored(now: u64, before: &[Lease], mac: MacAddress) -> LeaseFilter {
        LeaseFilter {
            now,
            renewed_after: Some(baseline(before, mac)),
        }
    }

    fn accepts(&self, lease: &Lease) -> bool {
        lease.expires > self.now
            && self
                .renewed_after
                .is_none_or(|before| lease.expires > before)
    }
}

/// The latest expiry of `mac`'s leases (0 when there is none).
pub fn baseline(leases: &[Lease], mac: MacAddress) -> u64 {
    leases
        .iter()
        .filter(|l| l.mac == mac)
        .map(|l| l.expires)
        .max()
        .unwrap_or(0)
}

/// The address leased to `mac` that `filter` accepts and that expires last (bootpd may keep
/// an old block around).
pub fn select(leases: &[Lease], mac: MacAddress, filter: LeaseFilter) -> Option<Ipv4Addr> {
    leases
        .iter()
        .filter(|l| l.mac == mac && filter.accepts(l))
        .max_by_key(|l| l.expires)
        .map(|l| l.ip)
}

/// Reads `path` (usually [`DHCPD_LEASES`]); a missing file is no leases yet.
pub fn read(path: &Path) -> std::io::Result<Vec<Lease>> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(parse(&text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

/// Reads `path` and selects `mac`'s address with `filter`.
pub fn lookup(
    path: &Path,
    mac: MacAddress,
    filter: LeaseFilter,
) -> std::io::Result<Option<Ipv4Addr>> {
    Ok(select(&read(path)?, mac, filter))
}

/// Seconds since the epoch (bootpd's clock), for [`LeaseFilter`].
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    const LEASES: &str = "{
	name=admins-Virtual-Machine
	ip_address=192.168.64.3
	hw_address=1,7a:1c:3:5b:93:7
	identifier=1,7a:1c:3:5b:93:7
	lease=0x6720a1b0
}
{
	name=old
	ip_address=192.168.64.2
	hw_address=1,7a:1c:3:5b:93:7
	identifier=1,7a:1c:3:5b:93:7
	lease=0x6720a000
}
{
	name=other
	ip_address=192.168.64.4
	hw_address=1,aa:bb:cc:dd:ee:ff
	lease=0x6720a1b0
}
{
	ip_address=not-an-ip
	hw_address=1,aa:bb:cc:dd:ee:f0
	lease=0x1
}
{
	ip_address=192.168.64.9
	hw_address=ff,00:11:22:33:44:55:66:77
	lease=0x1
}
";

    /// Before every lease in [`LEASES`] expires.
    const EARLY: u64 = 0x6720_0000;

    #[test]
    fn finds_the_newest_lease_for_a_mac_in_bootpd_format() {
        let leases = parse(LEASES);
        assert_eq!(leases.len(), 3, "malformed and non-Ethernet blocks skipped");
        let mac: MacAddress = "7a:1c:03:5b:93:07".parse().expect("mac");
        let cold = LeaseFilter::cold(EARLY);
        assert_eq!(
            select(&leases, mac, cold),
            Some(Ipv4Addr::new(192, 168, 64, 3))
        );
        assert_eq!(leases[0].name.as_deref(), Some("admins-Virtual-Machine"));
        assert_eq!(leases[0].expires, 0x6720a1b0);
        assert_eq!(select(&leases, MacAddress::derive(1), cold), None);
    }

    #[test]
    fn expired_leases_are_skipped() {
        let leases = parse(LEASES);
        let mac: MacAddress = "7a:1c:03:5b:93:07".parse().expect("mac");
        // Between the two leases' expiries: only the newer one still counts.
        let between = LeaseFilter::cold(0x6720a100);
        assert_eq!(
            select(&leases, mac, between),
            Some(Ipv4Addr::new(192, 168, 64, 3))
        );
        // At the newer one's expiry, both are gone: bootpd may give the address to anyone.
        assert_eq!(select(&leases, mac, LeaseFilter::cold(0x6720a1b0)), None);
        assert_eq!(select(&leases, mac, LeaseFilter::cold(u64::MAX)), None);
    }

    #[test]
    fn a_restored_vm_takes_only_a_lease_renewed_after_the_restore() {
        let mac: MacAddress = "7a:1c:03:5b:93:07".parse().expect("mac");
        let before = parse(LEASES);
        let filter = LeaseFilter::restored(EARLY, &before, mac);
        assert_eq!(filter.renewed_after, Some(0x6720a1b0));
        // Still valid, but from before the restore: the slot's old address, not taken.
        assert_eq!(select(&before, mac, filter), None);
        // bootpd renews it (same address, later expiry) or grants another: taken.
        let renewed = format!(
            "{LEASES}{{\n\tip_address=192.168.64.12\n\thw_address=1,7a:1c:3:5b:93:7\n\tlease=0x6720b000\n}}\n"
        );
        assert_eq!(
            select(&parse(&renewed), mac, filter),
            Some(Ipv4Addr::new(192, 168, 64, 12))
        );
        // A MAC without any lease before the restore takes its first one.
        let other: MacAddress = "aa:bb:cc:dd:ee:ff".parse().expect("mac");
        let fresh = LeaseFilter::restored(EARLY, &[], other);
        assert_eq!(fresh.renewed_after, Some(0));
        assert_eq!(
            select(&before, other, fresh),
            Some(Ipv4Addr::new(192, 168, 64, 4))
        );
    }

    #[test]
    fn a_missing_file_means_no_lease_yet() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("dhcpd_leases");
        let cold = LeaseFilter::cold(EARLY);
        assert_eq!(
            lookup(&path, MacAddress::derive(1), cold).expect("missing ok"),
            None
        );
        assert!(read(&path).expect("missing ok").is_empty());
        std::fs::write(&path, LEASES).expect("write");
        let mac: MacAddress = "aa:bb:cc:dd:ee:ff".parse().expect("mac");
        assert_eq!(
            lookup(&path, mac, cold).expect("read"),
            Some(Ipv4Addr::new(192, 168, 64, 4))
        );
        assert!(unix_now() > EARLY);
    }
}
