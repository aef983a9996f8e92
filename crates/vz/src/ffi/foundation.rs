//! Small bridges between Foundation objects and plain Rust.

use crate::errors::{framework_error, FrameworkError, VzError};
use block2::RcBlock;
use objc2::rc::Retained;
use objc2_foundation::{NSData, NSError, NSString, NSURL};
use objc2_virtualization::VZErrorDomain;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::oneshot;

/// A file URL for `path` (absolute and UTF-8: plans are validated to be absolute).
pub(crate) fn file_url(path: &Path) -> Result<Retained<NSURL>, VzError> {
    let text = path.to_str().ok_or(VzError::InvalidData {
        what: "a file path",
        hint: "Virtualization.framework paths must be UTF-8; rename the directory",
    })?;
    Ok(NSURL::fileURLWithPath(&NSString::from_str(text)))
}

pub(crate) fn data(bytes: &[u8]) -> Retained<NSData> {
    NSData::with_bytes(bytes)
}

/// Copies what matters out of an `NSError` (valid only during the call that handed it over).
pub(crate) fn plain_error(error: &NSError) -> FrameworkError {
    let domain = error.domain();
    // SAFETY: `VZErrorDomain` is an immutable NSString constant exported by the framework;
    // reading the static has no side effects.
    let vz_domain = unsafe { VZErrorDomain };
    FrameworkError {
        in_vz_domain: vz_domain.is_some_and(|vz| domain.isEqualToString(vz)),
        domain: domain.to_string(),
        code: error.code() as i64,
        description: error.localizedDescription().to_string(),
    }
}

pub(crate) type Completion = RcBlock<dyn Fn(*mut NSError)>;

/// Where a completion's result goes; shared so the caller can also answer (e.g. when it
/// decides not to call the framework at all).
pub(crate) type Done<T> = Arc<Mutex<Option<oneshot::Sender<Result<T, VzError>>>>>;

pub(crate) fn done_channel<T>() -> (Done<T>, oneshot::Receiver<Result<T, VzError>>) {
    let (sender, receiver) = oneshot::channel();
    (Arc::new(Mutex::new(Some(sender))), receiver)
}

/// The block VZ calls when `operation` finishes (`error` null on success). `on_success` runs
/// first, on the thread VZ calls from (the VM's queue for VM operations), so state it records
/// is ordered with the delegate's reports. VZ calls it once; later calls are ignored.
pub(crate) fn completion(
    operation: &'static str,
    done: Done<()>,
    on_success: impl Fn() + 'static,
) -> Completion {
    RcBlock::new(move |error: *mut NSError| {
        // SAFETY: VZ passes null or a pointer to an NSError that is valid for this call.
        let result = match unsafe { error.as_ref() } {
            None => {
                on_success();
                Ok(())
            }
            Some(error) => Err(framework_error(operation, plain_error(error))),
        };
        send_once(&done, result);
    })
}

/// Sends through a oneshot kept in a mutex (blocks are `Fn`, so they cannot consume it).
pub(crate) fn send_once<T>(slot: &Mutex<Option<oneshot::Sender<T>>>, value: T) {
    let sender = match slot.lock() {
        Ok(mut guard) => guard.take(),
        Err(poisoned) => poisoned.into_inner().take(),
    };
    if let Some(sender) = sender {
        // The receiver may have timed out and gone: nothing left to tell.
        let _ = sender.send(value);
    }
}

/// Waits for a completion with a timeout.
pub(crate) async fn wait<T>(
    operation: &'static str,
    receiver: oneshot::Receiver<Result<T, VzError>>,
    timeout: Duration,
) -> Result<T, VzError> {
    match tokio::time::timeout(timeout, receiver).await {
        Err(_) => Err(VzError::Timeout {
            operation,
            after: timeout,
        }),
        Ok(Err(_)) => Err(VzError::Abandoned {
            operation,
            detail: "the framework released the completion handler without calling it",
        }),
        Ok(Ok(result)) => result,
    }
}
