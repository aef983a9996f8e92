//! The VM's delegate: the framework calls it on the VM's queue when the guest stops itself or
//! the VM stops on an error; it publishes a [`VmStatus`].

use super::foundation::plain_error;
use crate::state::VmStatus;
use objc2::rc::Retained;
use objc2::runtime::NSObject;
use objc2::{define_class, msg_send, AnyThread, DefinedClass};
use objc2_foundation::{NSError, NSObjectProtocol};
use objc2_virtualization::{VZVirtualMachine, VZVirtualMachineDelegate};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio::sync::watch;

pub(crate) struct ObserverState {
    status: watch::Sender<VmStatus>,
    /// Set before the agent stops the VM: the guest stopping is then expected.
    stop_requested: Arc<AtomicBool>,
}

define_class!(
    // SAFETY: NSObject has no subclassing requirements, and VmObserver does not implement Drop.
    #[unsafe(super(NSObject))]
    #[name = "ShoesVzVmObserver"]
    #[ivars = ObserverState]
    pub(crate) struct VmObserver;

    unsafe impl NSObjectProtocol for VmObserver {}

    unsafe impl VZVirtualMachineDelegate for VmObserver {
        #[unsafe(method(guestDidStopVirtualMachine:))]
        fn guest_did_stop(&self, _virtual_machine: &VZVirtualMachine) {
            let state = self.ivars();
            let status = if state.stop_requested.load(Ordering::SeqCst) {
                VmStatus::StoppedByHost
            } else {
                VmStatus::GuestStopped
            };
            state.status.send_replace(status);
        }

        #[unsafe(method(virtualMachine:didStopWithError:))]
        fn did_stop_with_error(&self, _virtual_machine: &VZVirtualMachine, error: &NSError) {
            let detail = plain_error(error).to_string();
            self.ivars()
                .status
                .send_replace(VmStatus::StoppedWithError(detail));
        }
    }
);

impl VmObserver {
    pub(crate) fn new(
        status: watch::Sender<VmStatus>,
        stop_requested: Arc<AtomicBool>,
    ) -> Retained<VmObserver> {
        let this = VmObserver::alloc().set_ivars(ObserverState {
            status,
            stop_requested,
        });
        // SAFETY: NSObject's `init` is the designated initialiser and has no preconditions.
        unsafe { msg_send![super(this), init] }
    }
}
