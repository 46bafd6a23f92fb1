//! Save/restore of the vsock device model (the transport saves registers and queues).
//!
//! Connections are not saved: their other ends are host sockets held by this process, which a
//! snapshot cannot carry and a migration destination does not have. Instead, as Firecracker
//! does, a restored device sends VIRTIO_VSOCK_EVENT_TRANSPORT_RESET on its event queue once
//! the guest's driver runs again: the guest drops every connection (its sockets see
//! ECONNRESET) and re-reads its CID, and listening sockets keep listening. Packets the guest
//! left in the TX ring are processed by the new device and answered with RST, since they name
//! no connection. Order on restore: `Vsock::restore_state`, then
//! `MmioTransport::restore_state`, which re-activates the device.

use serde::{Deserialize, Serialize};

use super::Vsock;
use crate::persist::{Persist, RestoreError};

/// Saved state of a virtio-vsock device.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct VsockState {
    pub guest_cid: u64,
    pub avail_features: u64,
    pub acked_features: u64,
}

impl Persist for Vsock {
    type State = VsockState;

    fn save_state(&self) -> VsockState {
        VsockState {
            guest_cid: self.muxer.guest_cid(),
            avail_features: self.avail_features,
            acked_features: self.acked_features,
        }
    }

    fn restore_state(&mut self, state: &VsockState) -> Result<(), RestoreError> {
        let invalid = |reason: String| RestoreError::Invalid {
            device: "virtio-vsock",
            reason,
        };
        if state.acked_features & !self.avail_features != 0 {
            return Err(invalid(format!(
                "driver features {:#x} not offered by this device ({:#x})",
                state.acked_features, self.avail_features
            )));
        }
        if state.guest_cid != self.muxer.guest_cid() {
            return Err(invalid(format!(
                "saved guest CID {} differs from the configured {}",
                state.guest_cid,
                self.muxer.guest_cid()
            )));
        }
        self.acked_features = state.acked_features;
        self.muxer.reset_connections();
        self.reset_event_pending = true;
        Ok(())
    }
}
