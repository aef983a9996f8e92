//! Per-runner hardware identity derived from the bundle's [`MachineIdentifier`]: the same
//! runner always gets the same values, two runners practically never share them.

use crate::bundle::MachineIdentifier;
use sha2::{Digest, Sha256};

fn derive(purpose: &str, id: MachineIdentifier) -> [u8; 32] {
    let mut hash = Sha256::new();
    hash.update(b"shoes-vz ");
    hash.update(purpose.as_bytes());
    hash.update([0]);
    hash.update(id.ecid.to_be_bytes());
    hash.finalize().into()
}

/// A locally administered, unicast MAC address (`x2:…`, `x6:…`, `xa:…`, `xe:…`).
pub fn mac_address(id: MachineIdentifier) -> [u8; 6] {
    let bytes = derive("mac", id);
    let mut mac = [0u8; 6];
    mac.copy_from_slice(&bytes[..6]);
    mac[0] = (mac[0] & 0xFC) | 0x02;
    mac
}

pub fn format_mac(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The VM's UUID (an RFC 9562 version 8 UUID). QEMU's microvm machine has no SMBIOS tables,
/// so the guest sees it on the kernel command line (`shoesvz.machine_id=`); the host sees it
/// through QMP `query-uuid` (`-uuid`).
pub fn machine_uuid(id: MachineIdentifier) -> uuid::Uuid {
    let bytes = derive("machine uuid", id);
    let mut custom = [0u8; 16];
    custom.copy_from_slice(&bytes[..16]);
    uuid::Builder::from_custom_bytes(custom).into_uuid()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_is_stable_per_runner_and_distinct_across_runners() {
        let a = MachineIdentifier { ecid: 1 };
        let b = MachineIdentifier { ecid: 2 };
        assert_eq!(mac_address(a), mac_address(a));
        assert_ne!(mac_address(a), mac_address(b));
        assert_eq!(machine_uuid(a), machine_uuid(a));
        assert_ne!(machine_uuid(a), machine_uuid(b));
        assert_eq!(machine_uuid(a).get_version_num(), 8);
        for ecid in 0..64 {
            let mac = mac_address(MachineIdentifier { ecid });
            assert_eq!(mac[0] & 0x01, 0, "unicast");
            assert_eq!(mac[0] & 0x02, 0x02, "locally administered");
        }
        let text = format_mac([0x02, 0xab, 0, 1, 2, 0xff]);
        assert_eq!(text, "02:ab:00:01:02:ff");
    }
}
