//! Save/restore of the entropy device model (the transport saves registers and queues).
//!
//! Nothing is ever in flight between passes: a request the rate limiter holds back is given
//! back to the avail ring (see `queue`), so the ring positions the transport saves are exact
//! without a quiesce step. Order on restore: `Rng::restore_state`, then
//! `MmioTransport::restore_state`, which acks the features again and re-activates the device.

use serde::{Deserialize, Serialize};

use super::Rng;
use crate::persist::{Persist, RestoreError};
use crate::rate_limiter::RateLimiterState;

/// Saved state of a virtio-rng device.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct RngState {
    pub avail_features: u64,
    pub acked_features: u64,
    /// The rate limiter's tokens (its configuration comes with the VM configuration; tokens are
    /// applied to buckets configured the same way), so a restored guest gets no fresh burst.
    #[serde(default)]
    pub rate_limiter: RateLimiterState,
}

impl Persist for Rng {
    type State = RngState;

    fn save_state(&self) -> RngState {
        RngState {
            avail_features: self.avail_features,
            acked_features: self.acked_features,
            rate_limiter: self.limiter.save_state(),
        }
    }

    fn restore_state(&mut self, state: &RngState) -> Result<(), RestoreError> {
        if state.acked_features & !self.avail_features != 0 {
            return Err(RestoreError::Invalid {
                device: "virtio-rng",
                reason: format!(
                    "driver features {:#x} not offered by this device ({:#x})",
                    state.acked_features, self.avail_features
                ),
            });
        }
        self.acked_features = state.acked_features;
        self.limiter.restore_state(&state.rate_limiter);
        Ok(())
    }
}
