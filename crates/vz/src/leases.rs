//! The guest's IP from the host's DHCP leases (`/var/db/dhcpd_leases`, written by bootpd for
//! Virtualization.framework's NAT), looked up by MAC. A fallback for when the runner-agent's
//! authenticated notify has not arrived; it is what tart uses by default.
//!
//! The file is a list of `{ key=value … }` blocks; bootpd prints MACs without leading zeros
//! (`hw_address=1,7a:1c:3:5b:93:7`) and `lease` as hex seconds since the epoch (expiry).

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

/// The address leased to `mac` that expires last (bootpd may keep an old block around).
pub fn find(leases: &[Lease], mac: MacAddress) -> Option<Ipv4Addr> {
    leases
        .iter()
        .filter(|l| l.mac == mac)
        .max_by_key(|l| l.expires)
        .map(|l| l.ip)
}

/// Reads `path` (usually [`DHCPD_LEASES`]) and looks `mac` up. A missing file is "no lease yet".
pub fn lookup(path: &Path, mac: MacAddress) -> std::io::Result<Option<Ipv4Addr>> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(find(&parse(&text), mac)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
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

    #[test]
    fn finds_the_newest_lease_for_a_mac_in_bootpd_format() {
        let leases = parse(LEASES);
        assert_eq!(leases.len(), 3, "malformed and non-Ethernet blocks skipped");
        let mac: MacAddress = "7a:1c:03:5b:93:07".parse().expect("mac");
        assert_eq!(find(&leases, mac), Some(Ipv4Addr::new(192, 168, 64, 3)));
        assert_eq!(leases[0].name.as_deref(), Some("admins-Virtual-Machine"));
        assert_eq!(leases[0].expires, 0x6720a1b0);
        assert_eq!(find(&leases, MacAddress::derive(1)), None);
    }

    #[test]
    fn a_missing_file_means_no_lease_yet() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("dhcpd_leases");
        assert_eq!(
            lookup(&path, MacAddress::derive(1)).expect("missing ok"),
            None
        );
        std::fs::write(&path, LEASES).expect("write");
        let mac: MacAddress = "aa:bb:cc:dd:ee:ff".parse().expect("mac");
        assert_eq!(
            lookup(&path, mac).expect("read"),
            Some(Ipv4Addr::new(192, 168, 64, 4))
        );
    }
}
