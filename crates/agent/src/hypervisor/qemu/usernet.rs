//! Reads the host ports QEMU's user-mode network chose for `hostfwd=tcp:127.0.0.1:0-:PORT`
//! from the HMP `info usernet` table: the kernel picks free ports, so runners never race.

use std::collections::BTreeMap;

/// Guest port → host port of every TCP host forward in an `info usernet` reply.
pub fn host_forwards(info: &str) -> BTreeMap<u16, u16> {
    let mut forwards = BTreeMap::new();
    for line in info.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        // Protocol[State] FD SrcAddr SrcPort DstAddr DstPort RecvQ SendQ
        if fields.len() < 6 || fields[0] != "TCP[HOST_FORWARD]" {
            continue;
        }
        if let (Ok(host), Ok(guest)) = (fields[3].parse::<u16>(), fields[5].parse::<u16>()) {
            if host != 0 {
                forwards.insert(guest, host);
            }
        }
    }
    forwards
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_qemu_7_2_output() {
        // Verbatim from QEMU 7.2 (Debian 12) with two forwards.
        let info = "Hub -1 (n0):\r\n  Protocol[State]    FD  Source Address  Port   Dest. Address  Port RecvQ SendQ\r\n  TCP[HOST_FORWARD]   9       127.0.0.1 39515       10.0.2.15    22     0     0\r\n  TCP[HOST_FORWARD]   8       127.0.0.1 36787       10.0.2.15  8080     0     0\r\n  TCP[ESTABLISHED]   12       10.0.2.15 50322        10.0.2.2  8000     0     0\r\n";
        let forwards = host_forwards(info);
        assert_eq!(forwards.get(&22), Some(&39515));
        assert_eq!(forwards.get(&8080), Some(&36787));
        assert_eq!(forwards.len(), 2);
        assert!(host_forwards("").is_empty());
        assert!(host_forwards("  TCP[HOST_FORWARD] x y z w").is_empty());
    }
}
