//! shoes-vz-test-support: scaffolding shared by the workspace's tests (dev-dependency only).
//!
//! A test whose prerequisite is missing (QEMU, Go, PostgreSQL, a reflink filesystem…) skips
//! loudly on a developer's machine, but **fails in CI**, so a CI run that quietly tested less
//! can never be green. Call [`prerequisite_missing`] (or [`prerequisite_missing_because`]) and
//! then `return` from the test.
//!
//! # Layout
//! - [`prerequisite`]: the missing-prerequisite policy and [`running_in_ci`].
//! - [`shared`]: [`shared_dir`], the project's read-only shared material beside the checkout.
//! - [`go_client`]: the go-plugin v1.7.0 client myshoes uses, built from the client kit.

pub mod go_client;
pub mod prerequisite;
pub mod shared;

pub use prerequisite::{prerequisite_missing, prerequisite_missing_because, running_in_ci};
pub use shared::shared_dir;
