//! The private channel between the shoes-vz agent (host) and one runner's guest.
//!
//! - **Config disk** (host → guest): the agent writes a small FAT image per runner with
//!   [`write_ephemeral_image`] (a warm template's, which outlives its VM, with [`write_image`])
//!   and attaches it, read-only, to that VM alone; the guest's runner-agent finds it with
//!   [`find_config_device`] and reads it with [`read_image`] — no mount, no user session, the same for QEMU and Virtualization.framework guests. It holds a
//!   [`GuestConfig`]: runner id, a fresh [`ApiToken`], the notify URL, the SSH key to
//!   authorize and the guest's SSH host key.
//! - **Notify** (guest → host): the guest [`sign`]s a [`NotifyRequest`] with its token; the
//!   host's [`NotifyVerifier`] accepts it only for that runner, once, while fresh.
//!
//! Secrets ([`ApiToken`], [`OpenSshPrivateKey`]) print as `<redacted>` and are wiped from
//! memory when dropped; no error message quotes them.
//!
//! # Layout
//! - `secret`: the token and private-key types.
//! - `config`: [`GuestConfig`], its JSON form and validation.
//! - `image`: building, writing and reading the FAT image; `sparse`: the in-memory disk it
//!   is built on (only blocks with data).
//! - `device`: finding the config disk among a guest's block devices.
//! - `notify`: the signed, replay-safe notify.

mod config;
mod device;
mod image;
mod notify;
mod secret;
mod sparse;

pub use config::{
    default_http_listen, is_valid_name, is_valid_public_key_line, ConfigError, GuestConfig,
    DEFAULT_HTTP_LISTEN, FORMAT_VERSION, MAX_CONFIG_JSON_BYTES, RUNNER_ID_MAX_LEN, VSOCK_PORT,
};
pub use device::{find_among, find_config_device, linux_candidates, macos_candidates, DeviceError};
pub use image::{
    build_image, probe_image, read_image, write_ephemeral_image, write_image, ConfigImage,
    ImageError, CONFIG_PATH, IMAGE_BYTES, MAX_IMAGE_BYTES, MIN_IMAGE_BYTES, VOLUME_LABEL,
};
pub use notify::{
    sign, unix_ms_now, NotifyError, NotifyRequest, NotifyVerifier, SignedNotify, DEFAULT_WINDOW,
    MAX_NONCES_PER_RUNNER, MAX_NOTIFY_BODY_BYTES, SIGNATURE_HEADER,
};
pub use secret::{ApiToken, OpenSshPrivateKey, SecretError, TOKEN_BYTES};
