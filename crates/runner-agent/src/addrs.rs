//! The guest's own addresses for the notify: every interface address (`getifaddrs`, the same
//! call on Linux and macOS) except loopback, link-local and the like, IPv4 first.

use std::net::IpAddr;

/// Whether the host could reach the guest at `addr`.
pub fn usable(addr: IpAddr) -> bool {
    match addr {
        IpAddr::V4(v4) => {
            !(v4.is_loopback() || v4.is_unspecified() || v4.is_link_local() || v4.is_multicast())
        }
        IpAddr::V6(v6) => {
            // fe80::/10
            let link_local = (v6.segments()[0] & 0xffc0) == 0xfe80;
            !(v6.is_loopback() || v6.is_unspecified() || v6.is_multicast() || link_local)
        }
    }
}

/// Usable addresses, IPv4 before IPv6, each once, otherwise in the order given.
pub fn select(addrs: impl IntoIterator<Item = IpAddr>) -> Vec<String> {
    let mut usable_addrs: Vec<IpAddr> = Vec::new();
    for addr in addrs {
        if usable(addr) && !usable_addrs.contains(&addr) {
            usable_addrs.push(addr);
        }
    }
    usable_addrs.sort_by_key(|addr| addr.is_ipv6());
    usable_addrs.iter().map(IpAddr::to_string).collect()
}

/// The machine's usable addresses now; none if the interfaces cannot be listed.
pub fn discover() -> Vec<String> {
    match if_addrs::get_if_addrs() {
        Ok(interfaces) => select(interfaces.iter().map(|iface| iface.ip())),
        Err(err) => {
            tracing::warn!(error = %err, "could not list network interfaces");
            Vec::new()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test addresses are valid")
    }

    #[test]
    fn loopback_link_local_and_duplicates_are_dropped_and_ipv4_comes_first() {
        let found = select([
            ip("127.0.0.1"),
            ip("::1"),
            ip("fe80::1c2b:3aff:fe4d:5e6f"),
            ip("2001:db8::5"),
            ip("169.254.10.1"),
            ip("192.168.64.7"),
            ip("10.0.2.15"),
            ip("192.168.64.7"),
            ip("0.0.0.0"),
        ]);
        assert_eq!(found, ["192.168.64.7", "10.0.2.15", "2001:db8::5"]);
    }

    #[test]
    fn discover_never_reports_loopback() {
        assert!(discover().iter().all(|a| a != "127.0.0.1" && a != "::1"));
    }
}
