//! Save/restore of the balloon model (the transport saves registers and queues).
//!
//! Nothing is in flight between passes except the statistics buffer the device holds, which is
//! saved by its head index so the restored device can give it back at the next poll. The
//! released pages need no state: they read as zero, and migration and snapshots skip pages the
//! host does not back (`vmm/src/migration/memory.rs`). Order on restore: `restore_state`, then
//! `MmioTransport::restore_state`, which acks the features again and re-activates the device.

use serde::{Deserialize, Serialize};

use super::{Balloon, GuestStats};
use crate::persist::{Persist, RestoreError};

/// Saved state of a virtio-balloon device. Its settings (statistics, deflate on OOM,
/// reporting) come with the VM configuration and must match.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct BalloonState {
    pub avail_features: u64,
    pub acked_features: u64,
    pub target_pages: u32,
    pub actual_pages: u32,
    pub stats_interval_s: u16,
    #[serde(default)]
    pub stats: GuestStats,
    #[serde(default)]
    pub stats_head: Option<u16>,
}

impl Persist for Balloon {
    type State = BalloonState;

    fn save_state(&self) -> BalloonState {
        BalloonState {
            avail_features: self.avail_features,
            acked_features: self.acked_features,
            target_pages: self.target_pages,
            actual_pages: self.actual_pages,
            stats_interval_s: self.stats_interval_s,
            stats: self.stats,
            stats_head: self.stats_head,
        }
    }

    fn restore_state(&mut self, state: &BalloonState) -> Result<(), RestoreError> {
        let invalid = |reason: String| RestoreError::Invalid {
            device: "virtio-balloon",
            reason,
        };
        if state.avail_features != self.avail_features {
            return Err(invalid(format!(
                "saved features {:#x} differ from this device's {:#x} (statistics, deflate on \
                 OOM and free page reporting must be configured the same)",
                state.avail_features, self.avail_features
            )));
        }
        if state.acked_features & !self.avail_features != 0 {
            return Err(invalid(format!(
                "driver features {:#x} not offered by this device ({:#x})",
                state.acked_features, self.avail_features
            )));
        }
        if (state.stats_interval_s == 0) != self.stats_index.is_none() {
            return Err(invalid("statistics enabled on one side only".into()));
        }
        self.acked_features = state.acked_features;
        self.target_pages = state.target_pages;
        self.actual_pages = state.actual_pages;
        self.stats_interval_s = state.stats_interval_s;
        self.stats = state.stats;
        self.stats_head = state.stats_head;
        Ok(())
    }
}
