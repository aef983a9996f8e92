//! SIGINT and SIGTERM as a flag the synchronous loops poll (every wait in the stand-in is a
//! short poll, so a signal is seen within ~100 ms).

use signal_hook::consts::{SIGINT, SIGTERM};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Which stop signal arrived last, if any.
#[derive(Debug, Clone)]
pub struct StopSignal(Arc<AtomicUsize>);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    Interrupt,
    Terminate,
}

impl StopSignal {
    /// Installs the handlers (they replace the default "terminate" action).
    pub fn install() -> std::io::Result<StopSignal> {
        let flag = Arc::new(AtomicUsize::new(0));
        for signal in [SIGINT, SIGTERM] {
            // The flag holds the signal number.
            signal_hook::flag::register_usize(signal, Arc::clone(&flag), signal as usize)?;
        }
        Ok(StopSignal(flag))
    }

    pub fn received(&self) -> Option<Stop> {
        decode(self.0.load(Ordering::SeqCst))
    }

    /// The signal seen, forgotten (for a loop that handles each one once).
    pub fn take(&self) -> Option<Stop> {
        decode(self.0.swap(0, Ordering::SeqCst))
    }
}

fn decode(signal: usize) -> Option<Stop> {
    match signal {
        0 => None,
        n if n == SIGINT as usize => Some(Stop::Interrupt),
        _ => Some(Stop::Terminate),
    }
}
