//! The host's end of a guest's virtio socket (vsock): `VZVirtioSocketDevice
//! connectToPort:completionHandler:` on the VM's queue. The connection's file descriptor is
//! duplicated and the connection closed, so the caller owns a plain socket descriptor it can
//! hand to tokio (tart's ControlSocket.swift does the same with the descriptor through NIO).

use super::foundation::{done_channel, plain_error, send_once, wait};
use super::vm::VzVm;
use crate::errors::{framework_error, VzError};
use block2::RcBlock;
use objc2_foundation::NSError;
use objc2_virtualization::{VZVirtioSocketConnection, VZVirtioSocketDevice};
use std::os::fd::{BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

const OPERATION: &str = "connect to the guest's vsock port";

impl VzVm {
    /// Connects to `port` of the guest's vsock (the plan must have `devices.vsock`). The
    /// guest must be listening there; the framework fails the connection otherwise.
    pub async fn connect_vsock(&self, port: u32, timeout: Duration) -> Result<OwnedFd, VzError> {
        let (done, receiver) = done_channel::<OwnedFd>();
        let on_queue = Arc::clone(&done);
        let no_device = VzError::InvalidData {
            what: "the VM's socket devices",
            hint: "the VM has no virtio socket device; its plan must include vsock",
        };
        self.exec_value(OPERATION, timeout, move |objects| {
            // SAFETY: on the VM's queue.
            let devices = unsafe { objects.vm.socketDevices() };
            let Some(device) = devices.firstObject() else {
                return Err(no_device);
            };
            let Ok(device) = device.downcast::<VZVirtioSocketDevice>() else {
                return Err(no_device);
            };
            let done = Arc::clone(&on_queue);
            let block = RcBlock::new(
                move |connection: *mut VZVirtioSocketConnection, error: *mut NSError| {
                    // SAFETY: the framework passes null or objects valid for this call.
                    let result = match unsafe { (connection.as_ref(), error.as_ref()) } {
                        (_, Some(error)) => Err(framework_error(OPERATION, plain_error(error))),
                        (Some(connection), None) => owned_descriptor(connection),
                        (None, None) => Err(VzError::Abandoned {
                            operation: OPERATION,
                            detail: "the framework returned neither a connection nor an error",
                        }),
                    };
                    send_once(&done, result);
                },
            );
            // SAFETY: on the VM's queue; the framework copies the block.
            unsafe { device.connectToPort_completionHandler(port, &block) };
            Ok(())
        })
        .await?;
        wait(OPERATION, receiver, timeout).await
    }
}

/// A descriptor of our own for the connection's socket; the connection itself is closed.
fn owned_descriptor(connection: &VZVirtioSocketConnection) -> Result<OwnedFd, VzError> {
    // SAFETY: the connection owns this descriptor and keeps it open until `close` below; we
    // only borrow it for the `dup` that `try_clone_to_owned` makes.
    let borrowed = unsafe { BorrowedFd::borrow_raw(connection.fileDescriptor()) };
    let owned = borrowed.try_clone_to_owned().map_err(|source| VzError::Io {
        action: "duplicate the vsock descriptor of",
        path: "VZVirtioSocketConnection".into(),
        source,
    });
    // SAFETY: closing a connection we were handed; our duplicate stays open.
    unsafe { connection.close() };
    owned
}
