//! [`VzVm`]: one VM on its own serial dispatch queue, driven from async Rust.
//!
//! The `VZVirtualMachine` is created with `initWithConfiguration:queue:` and touched only in
//! closures on that queue. Completions come back through oneshot channels (every wait has a
//! timeout); the delegate and completions publish [`VmStatus`] on a watch channel, all from the
//! queue, so their order is the framework's order.
//!
//! Dropping the last handle of a VM that still runs stops it (forcefully) and releases the
//! objects on the queue: a VM never outlives its owner.

use super::config;
use super::foundation::{completion, done_channel, file_url, plain_error, send_once, wait, Done};
use super::observer::VmObserver;
use crate::errors::{framework_error, VzError};
use crate::plan::VmPlan;
use crate::state::{VmState, VmStatus};
use crate::version::{self, HostFeature};
use block2::RcBlock;
use dispatch2::{DispatchQueue, DispatchQueueAttr, DispatchRetained};
use objc2::rc::Retained;
use objc2::runtime::ProtocolObject;
use objc2::AnyThread;
use objc2_foundation::NSError;
use objc2_virtualization::{VZMacOSInstaller, VZVirtualMachine, VZVirtualMachineConfiguration};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::sync::{oneshot, watch};

/// How long the framework gets for quick calls (state reads, forced stop, configuration).
pub const QUICK_TIMEOUT: Duration = Duration::from_secs(30);

/// How a [`VzVm::stop`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopOutcome {
    /// It had already stopped.
    AlreadyStopped,
    /// The guest shut down when asked, within the grace period.
    Graceful,
    /// The grace period ran out (or the guest could not be asked): stopped forcefully.
    Forced,
}

/// A value that is created, used and dropped only on one serial dispatch queue.
pub(crate) struct QueueBound<T>(T);

// SAFETY: every `QueueBound` in this module lives in `Inner::objects` and is only reached
// through `Inner::exec` (and `Inner::drop`), which run their closures on the VM's serial
// queue. No two threads ever touch the value at once, and every access happens on the queue
// the framework requires for the VM.
unsafe impl<T> Send for QueueBound<T> {}

impl<T> QueueBound<T> {
    fn into_inner(self) -> T {
        self.0
    }

    fn get_mut(&mut self) -> &mut T {
        &mut self.0
    }
}

/// The framework objects of one VM (used only on its queue).
pub(crate) struct VmObjects {
    pub(crate) vm: Retained<VZVirtualMachine>,
    pub(crate) configuration: Retained<VZVirtualMachineConfiguration>,
    /// The VM's `delegate` is weak: this keeps the observer alive.
    _observer: Retained<VmObserver>,
    /// Kept alive while `template create --ipsw` installs.
    pub(crate) installer: Option<Retained<VZMacOSInstaller>>,
}

struct Inner {
    queue: DispatchRetained<DispatchQueue>,
    objects: Mutex<Option<QueueBound<VmObjects>>>,
    status: watch::Sender<VmStatus>,
    stop_requested: Arc<AtomicBool>,
}

impl Inner {
    /// Runs `f` on the VM's queue with the VM's objects (`None` once they are gone).
    fn exec(self: &Arc<Self>, f: impl FnOnce(Option<&mut VmObjects>) + Send + 'static) {
        let inner = Arc::clone(self);
        self.queue.exec_async(move || {
            let mut guard = inner.objects.lock().unwrap_or_else(PoisonError::into_inner);
            f(guard.as_mut().map(QueueBound::get_mut));
        });
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        let objects = self
            .objects
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        let Some(objects) = objects else { return };
        // Runs on the queue even if the last handle was dropped elsewhere.
        self.queue.exec_async(move || {
            let objects = objects.into_inner();
            // SAFETY: on the VM's queue.
            let (state, can_stop) = unsafe { (objects.vm.state(), objects.vm.canStop()) };
            if !VmState::from_raw(state.0 as i64).is_final() && can_stop {
                tracing::warn!("a VM handle was dropped while its VM ran; stopping the VM");
                let keep_alive = objects.vm.clone();
                let done = RcBlock::new(move |_error: *mut NSError| {
                    let _vm = &keep_alive;
                });
                // SAFETY: on the VM's queue; the block keeps the VM alive until it stops.
                unsafe { objects.vm.stopWithCompletionHandler(&done) };
            }
        });
    }
}

/// One VM. Cheap to share behind an `Arc`; all methods are async and bounded by timeouts.
pub struct VzVm {
    inner: Arc<Inner>,
}

fn gone(operation: &'static str) -> VzError {
    VzError::Abandoned {
        operation,
        detail: "the VM's objects are gone",
    }
}

fn mark_running(status: &watch::Sender<VmStatus>) {
    status.send_if_modified(|s| {
        if s.is_stopped() || *s == VmStatus::Running {
            false
        } else {
            *s = VmStatus::Running;
            true
        }
    });
}

fn mark_stopped_by_host(status: &watch::Sender<VmStatus>) {
    status.send_if_modified(|s| {
        if s.is_stopped() {
            false
        } else {
            *s = VmStatus::StoppedByHost;
            true
        }
    });
}

/// A dispatch queue label from a caller's name (letters, digits, '-', '_', '.').
fn queue_label(name: &str) -> String {
    let clean: String = name
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        .take(64)
        .collect();
    format!("shoes-vz.vm.{clean}")
}

fn current_state(objects: &VmObjects) -> VmState {
    // SAFETY: called only from closures run on the VM's queue.
    VmState::from_raw(unsafe { objects.vm.state() }.0 as i64)
}

impl VzVm {
    /// Builds the configuration for `plan`, validates it and creates the VM (not started).
    /// `name` labels the dispatch queue (e.g. the runner id).
    pub async fn create(plan: &VmPlan, name: &str) -> Result<VzVm, VzError> {
        super::host::probe().check_macos_guests()?;
        let (status, _) = watch::channel(VmStatus::Created);
        let stop_requested = Arc::new(AtomicBool::new(false));
        let inner = Arc::new(Inner {
            queue: DispatchQueue::new(&queue_label(name), DispatchQueueAttr::SERIAL),
            objects: Mutex::new(None),
            status,
            stop_requested,
        });
        let (sender, receiver) = oneshot::channel();
        let plan = plan.clone();
        let on_queue = Arc::clone(&inner);
        inner.queue.exec_async(move || {
            let result = config::build(&plan).map(|configuration| {
                // SAFETY: we run on `on_queue.queue`, the queue the VM is created for and the
                // only one it is ever used from.
                let vm = unsafe {
                    VZVirtualMachine::initWithConfiguration_queue(
                        VZVirtualMachine::alloc(),
                        &configuration,
                        &on_queue.queue,
                    )
                };
                let observer = VmObserver::new(
                    on_queue.status.clone(),
                    Arc::clone(&on_queue.stop_requested),
                );
                // SAFETY: on the VM's queue; the observer outlives the VM's use of it (both
                // are kept in `VmObjects` and released together).
                unsafe { vm.setDelegate(Some(ProtocolObject::from_ref(&*observer))) };
                let objects = VmObjects {
                    vm,
                    configuration,
                    _observer: observer,
                    installer: None,
                };
                *on_queue
                    .objects
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner) = Some(QueueBound(objects));
            });
            // The caller may have timed out; then dropping the VM via `Inner` cleans up.
            let _ = sender.send(result);
        });
        wait("create the VM", receiver, QUICK_TIMEOUT).await?;
        Ok(VzVm { inner })
    }

    /// The latest status and a receiver for changes (guest shutdowns, errors, stops).
    pub fn subscribe(&self) -> watch::Receiver<VmStatus> {
        self.inner.status.subscribe()
    }

    pub fn status(&self) -> VmStatus {
        self.inner.status.borrow().clone()
    }

    /// Runs `f` on the queue and returns its value.
    pub(crate) async fn exec_value<T: Send + 'static>(
        &self,
        operation: &'static str,
        timeout: Duration,
        f: impl FnOnce(&mut VmObjects) -> Result<T, VzError> + Send + 'static,
    ) -> Result<T, VzError> {
        let (sender, receiver) = oneshot::channel();
        self.inner.exec(move |objects| {
            let result = match objects {
                Some(objects) => f(objects),
                None => Err(gone(operation)),
            };
            let _ = sender.send(result);
        });
        wait(operation, receiver, timeout).await
    }

    /// Runs `f` on the queue; `f` starts a framework call whose completion answers `done`
    /// (or answers it itself with an error, without calling the framework).
    pub(crate) async fn call(
        &self,
        operation: &'static str,
        timeout: Duration,
        f: impl FnOnce(&mut VmObjects, Done<()>) -> Result<(), VzError> + Send + 'static,
    ) -> Result<(), VzError> {
        let (done, receiver) = done_channel();
        self.inner.exec(move |objects| match objects {
            Some(objects) => {
                if let Err(error) = f(objects, Arc::clone(&done)) {
                    send_once(&done, Err(error));
                }
            }
            None => send_once(&done, Err(gone(operation))),
        });
        wait(operation, receiver, timeout).await
    }

    pub async fn state(&self) -> Result<VmState, VzError> {
        self.exec_value("read the VM state", QUICK_TIMEOUT, |objects| {
            Ok(current_state(objects))
        })
        .await
    }

    /// Starts the VM (cold boot). Returns when the framework reports it started.
    pub async fn start(&self, timeout: Duration) -> Result<(), VzError> {
        const OPERATION: &str = "start the VM";
        let status = self.inner.status.clone();
        self.call(OPERATION, timeout, move |objects, done| {
            // SAFETY: on the VM's queue.
            if !unsafe { objects.vm.canStart() } {
                return Err(VzError::WrongState {
                    operation: OPERATION,
                    state: current_state(objects),
                });
            }
            let block = completion(OPERATION, done, move || mark_running(&status));
            // SAFETY: on the VM's queue; the framework copies the block.
            unsafe { objects.vm.startWithCompletionHandler(&block) };
            Ok(())
        })
        .await
    }

    /// Asks the guest to shut down, waits up to `graceful`, then stops the VM forcefully.
    pub async fn stop(&self, graceful: Duration) -> Result<StopOutcome, VzError> {
        self.inner.stop_requested.store(true, Ordering::SeqCst);
        let mut status = self.inner.status.subscribe();
        if self.state().await?.is_final() {
            mark_stopped_by_host(&self.inner.status);
            return Ok(StopOutcome::AlreadyStopped);
        }
        let asked = self
            .exec_value("ask the guest to shut down", QUICK_TIMEOUT, |objects| {
                // SAFETY: on the VM's queue.
                if !unsafe { objects.vm.canRequestStop() } {
                    return Err(VzError::WrongState {
                        operation: "ask the guest to shut down",
                        state: current_state(objects),
                    });
                }
                // SAFETY: on the VM's queue.
                unsafe { objects.vm.requestStopWithError() }.map_err(|error| {
                    framework_error("ask the guest to shut down", plain_error(&error))
                })
            })
            .await;
        match asked {
            Ok(()) => {
                let stopped = tokio::time::timeout(graceful, status.wait_for(VmStatus::is_stopped))
                    .await
                    .is_ok_and(|changed| changed.is_ok());
                if stopped {
                    return Ok(StopOutcome::Graceful);
                }
                tracing::warn!(
                    ?graceful,
                    "the guest did not shut down in time; stopping the VM"
                );
            }
            Err(error) => {
                tracing::warn!(error = %error, "cannot ask the guest to shut down; stopping the VM")
            }
        }
        self.force_stop(QUICK_TIMEOUT).await?;
        Ok(StopOutcome::Forced)
    }

    /// Stops the VM at once and releases its framework objects, returning only when both are
    /// done: the framework's 2-VM count has this VM off it before a cold fallback starts
    /// another (a dropped handle would release it some time later).
    pub async fn release(self, timeout: Duration) -> Result<(), VzError> {
        let stopped = self.force_stop(timeout).await;
        let (sender, receiver) = oneshot::channel();
        let inner = Arc::clone(&self.inner);
        self.inner.queue.exec_async(move || {
            let objects = inner
                .objects
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take();
            // Dropped here, on the VM's queue.
            drop(objects.map(QueueBound::into_inner));
            let _ = sender.send(Ok(()));
        });
        wait("release the VM", receiver, timeout).await?;
        stopped
    }

    /// Stops the VM at once (like pulling the power cord).
    pub async fn force_stop(&self, timeout: Duration) -> Result<(), VzError> {
        const OPERATION: &str = "stop the VM";
        self.inner.stop_requested.store(true, Ordering::SeqCst);
        let status = self.inner.status.clone();
        self.call(OPERATION, timeout, move |objects, done| {
            if current_state(objects).is_final() {
                mark_stopped_by_host(&status);
                send_once(&done, Ok(()));
                return Ok(());
            }
            // SAFETY: on the VM's queue.
            if !unsafe { objects.vm.canStop() } {
                return Err(VzError::WrongState {
                    operation: OPERATION,
                    state: current_state(objects),
                });
            }
            let block = completion(OPERATION, done, move || mark_stopped_by_host(&status));
            // SAFETY: on the VM's queue; the framework copies the block.
            unsafe { objects.vm.stopWithCompletionHandler(&block) };
            Ok(())
        })
        .await
    }

    pub async fn pause(&self, timeout: Duration) -> Result<(), VzError> {
        const OPERATION: &str = "pause the VM";
        self.call(OPERATION, timeout, |objects, done| {
            // SAFETY: on the VM's queue.
            if !unsafe { objects.vm.canPause() } {
                return Err(VzError::WrongState {
                    operation: OPERATION,
                    state: current_state(objects),
                });
            }
            let block = completion(OPERATION, done, || {});
            // SAFETY: on the VM's queue; the framework copies the block.
            unsafe { objects.vm.pauseWithCompletionHandler(&block) };
            Ok(())
        })
        .await
    }

    pub async fn resume(&self, timeout: Duration) -> Result<(), VzError> {
        const OPERATION: &str = "resume the VM";
        let status = self.inner.status.clone();
        self.call(OPERATION, timeout, move |objects, done| {
            // SAFETY: on the VM's queue.
            if !unsafe { objects.vm.canResume() } {
                return Err(VzError::WrongState {
                    operation: OPERATION,
                    state: current_state(objects),
                });
            }
            let block = completion(OPERATION, done, move || mark_running(&status));
            // SAFETY: on the VM's queue; the framework copies the block.
            unsafe { objects.vm.resumeWithCompletionHandler(&block) };
            Ok(())
        })
        .await
    }

    /// Whether this VM's configuration can be saved and restored (macOS 14+).
    pub async fn check_save_restore_support(&self) -> Result<(), VzError> {
        version::require(HostFeature::SavedState, super::host::probe().macos)?;
        self.exec_value("check save/restore support", QUICK_TIMEOUT, |objects| {
            // SAFETY: on the VM's queue; validation only reads the configuration.
            unsafe { objects.configuration.validateSaveRestoreSupportWithError() }
                .map_err(|error| framework_error("check save/restore support", plain_error(&error)))
        })
        .await
    }

    /// Saves the paused VM's state to `path` (macOS 14+). Pause it first; it stays paused.
    pub async fn save_state(&self, path: &Path, timeout: Duration) -> Result<(), VzError> {
        const OPERATION: &str = "save the VM state";
        version::require(HostFeature::SavedState, super::host::probe().macos)?;
        let path: PathBuf = path.to_path_buf();
        self.call(OPERATION, timeout, move |objects, done| {
            let state = current_state(objects);
            if state != VmState::Paused {
                return Err(VzError::WrongState {
                    operation: OPERATION,
                    state,
                });
            }
            let url = file_url(&path)?;
            let block = completion(OPERATION, done, || {});
            // SAFETY: on the VM's queue; the framework copies the block.
            unsafe {
                objects
                    .vm
                    .saveMachineStateToURL_completionHandler(&url, &block)
            };
            Ok(())
        })
        .await
    }

    /// Restores a saved state into this (never started) VM, then resumes it (macOS 14+).
    /// The plan must match the one the state was saved with
    /// ([`crate::plan::VmPlan::check_restore_compatible`]). On an error the caller boots cold.
    pub async fn restore_state(&self, path: &Path, timeout: Duration) -> Result<(), VzError> {
        const OPERATION: &str = "restore the saved state";
        version::require(HostFeature::SavedState, super::host::probe().macos)?;
        let meta = std::fs::metadata(path).map_err(|source| VzError::Io {
            action: "read",
            path: path.to_path_buf(),
            source,
        })?;
        if !meta.is_file() {
            return Err(VzError::Io {
                action: "restore from",
                path: path.to_path_buf(),
                source: std::io::Error::other("not a regular file"),
            });
        }
        let path: PathBuf = path.to_path_buf();
        self.call(OPERATION, timeout, move |objects, done| {
            let state = current_state(objects);
            if state != VmState::Stopped {
                return Err(VzError::WrongState {
                    operation: OPERATION,
                    state,
                });
            }
            let url = file_url(&path)?;
            let block = completion(OPERATION, done, || {});
            // SAFETY: on the VM's queue; the framework copies the block.
            unsafe {
                objects
                    .vm
                    .restoreMachineStateFromURL_completionHandler(&url, &block)
            };
            Ok(())
        })
        .await?;
        self.resume(timeout).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Type-checked only off Apple (nothing links there); on a Mac they run.
    fn assert_send_sync<T: Send + Sync>(_: &T) {}
    fn assert_send<T: Send>(_: &T) {}

    #[allow(dead_code)]
    fn futures_are_send_so_the_agent_can_await_them(vm: &VzVm, plan: &VmPlan) {
        assert_send_sync(vm);
        assert_send(&VzVm::create(plan, "r"));
        assert_send(&vm.start(QUICK_TIMEOUT));
        assert_send(&vm.stop(QUICK_TIMEOUT));
        assert_send(&vm.save_state(Path::new("/s"), QUICK_TIMEOUT));
        assert_send(&vm.restore_state(Path::new("/s"), QUICK_TIMEOUT));
    }

    #[test]
    fn queue_labels_are_clean() {
        assert_eq!(queue_label("abc-1.2_x"), "shoes-vz.vm.abc-1.2_x");
        assert_eq!(queue_label("a\0b/c d"), "shoes-vz.vm.abcd");
    }
}
