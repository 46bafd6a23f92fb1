//! The save/restore seam.
//!
//! Every device and vCPU exposes its state as a plain serde struct. Live migration, snapshots and
//! the API all save and restore through this one trait, so a device written once moves everywhere.

use serde::{de::DeserializeOwned, Serialize};

/// Why a saved state could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    /// The state is well-formed but contradicts the device it is applied to (a queue size the device
    /// does not support, a feature it never offered, ...).
    #[error("invalid saved state for {device}: {reason}")]
    Invalid {
        device: &'static str,
        reason: String,
    },
    /// Re-opening or re-registering a host resource failed while restoring.
    #[error("restoring {device}: {source}")]
    Io {
        device: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// A component whose state can be captured and re-applied.
pub trait Persist {
    /// The serialisable form of the component's state.
    type State: Serialize + DeserializeOwned;

    /// Captures the current state. Called with the VM paused.
    fn save_state(&self) -> Self::State;

    /// Applies a previously saved state. Called with the VM paused, before it first runs.
    fn restore_state(&mut self, state: &Self::State) -> Result<(), RestoreError>;
}
