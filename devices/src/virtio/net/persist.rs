//! Save/restore of the net device model (the transport saves registers and queues).
//!
//! Order on restore: `Net::restore_state`, then `MmioTransport::restore_state`, which acks the
//! features again (re-applying tap offloads) and re-activates the device with the saved pairs
//! in use. Nothing is in flight across a save: TX chains the backend refused were put back in
//! the avail ring, and a received frame still waiting for guest buffers is not part of the
//! state (it is dropped, as a network may drop any frame). After restoring on the destination,
//! call [`super::Net::announce`].

use std::sync::atomic::Ordering;

use serde::{Deserialize, Serialize};
use virtio_bindings::virtio_net::{VIRTIO_NET_S_ANNOUNCE, VIRTIO_NET_S_LINK_UP};

use super::Net;
use crate::persist::{Persist, RestoreError};
use crate::rate_limiter::RateLimiterState;

/// Saved state of a virtio-net device.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct NetState {
    pub mac: [u8; 6],
    pub max_pairs: u16,
    pub avail_features: u64,
    pub acked_features: u64,
    /// Queue pairs in use when saved.
    pub curr_pairs: u16,
    /// Config status (LINK_UP, ANNOUNCE pending).
    pub status: u16,
    /// The rate limiters' tokens (their configuration comes with the VM configuration; tokens
    /// are applied to buckets configured the same way). Absent in older snapshots.
    #[serde(default)]
    pub rx_rate_limiter: RateLimiterState,
    #[serde(default)]
    pub tx_rate_limiter: RateLimiterState,
}

impl Persist for Net {
    type State = NetState;

    fn save_state(&self) -> NetState {
        NetState {
            mac: self.mac.0,
            max_pairs: self.max_pairs,
            avail_features: self.avail_features,
            acked_features: self.acked_features,
            curr_pairs: self.active.as_ref().map_or(1, |a| a.curr_pairs),
            status: self.status.load(Ordering::SeqCst),
            rx_rate_limiter: self.rx_limiter.save_state(),
            tx_rate_limiter: self.tx_limiter.save_state(),
        }
    }

    fn restore_state(&mut self, state: &NetState) -> Result<(), RestoreError> {
        let invalid = |reason: String| RestoreError::Invalid {
            device: "virtio-net",
            reason,
        };
        if state.mac != self.mac.0 {
            return Err(invalid(format!(
                "the guest uses MAC {} but this backend gives {}: give the destination the \
                 guest's MAC (for a macvtap: `ip link set NAME address {}`)",
                crate::net::MacAddr(state.mac),
                self.mac,
                crate::net::MacAddr(state.mac)
            )));
        }
        if state.max_pairs != self.max_pairs {
            return Err(invalid(format!(
                "{} queue pairs saved, this backend has {}",
                state.max_pairs, self.max_pairs
            )));
        }
        if state.acked_features & !self.avail_features != 0 {
            return Err(invalid(format!(
                "driver features {:#x} not offered here ({:#x})",
                state.acked_features, self.avail_features
            )));
        }
        if state.curr_pairs == 0 || state.curr_pairs > self.max_pairs {
            return Err(invalid(format!("{} queue pairs in use", state.curr_pairs)));
        }
        self.acked_features = state.acked_features;
        self.rx_limiter.restore_state(&state.rx_rate_limiter);
        self.tx_limiter.restore_state(&state.tx_rate_limiter);
        self.restored_pairs = Some(state.curr_pairs);
        let status = state.status & (VIRTIO_NET_S_ANNOUNCE | VIRTIO_NET_S_LINK_UP) as u16;
        self.status
            .store(status | VIRTIO_NET_S_LINK_UP as u16, Ordering::SeqCst);
        Ok(())
    }
}
