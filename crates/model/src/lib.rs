//! Domain types shared by every shoes-vz component.
//!
//! # Layout
//! - [`state`]: runner states and the transitions allowed between them.
//! - [`clock`]: wall-clock readings (Unix milliseconds and microseconds).
//! - [`ids`]: runner, agent and cloud ids, and the validation of names that may reach a path.
//! - [`resource`]: myshoes' resource types and what they mean in vCPUs and memory.
//! - [`link`]: what the server and an agent tell each other (commands, reports), wire-free.

pub mod clock;
pub mod ids;
pub mod link;
pub mod resource;
pub mod state;

pub use ids::{AgentId, CloudId, IdError, RunnerId, RunnerName};
pub use resource::{ResourceError, ResourceSpec, ResourceTable, ResourceType};
pub use state::{RunnerState, TransitionError};
