//! Save/restore of the transport: registers, queue configuration and ring positions, interrupt
//! status and config generation. The device model saves its own state separately.

use serde::{Deserialize, Serialize};
use virtio_bindings::virtio_config::{VIRTIO_CONFIG_S_DRIVER_OK, VIRTIO_CONFIG_S_FEATURES_OK};
use virtio_queue::{Queue, QueueState, QueueT};

use super::{lock, MmioTransport};
use crate::persist::{Persist, RestoreError};

/// Saved state of one queue.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct QueueSnapshot {
    pub max_size: u16,
    pub size: u16,
    pub ready: bool,
    pub desc_table: u64,
    pub avail_ring: u64,
    pub used_ring: u64,
    pub next_avail: u16,
    pub next_used: u16,
    pub event_idx: bool,
}

impl From<QueueState> for QueueSnapshot {
    fn from(s: QueueState) -> Self {
        Self {
            max_size: s.max_size,
            size: s.size,
            ready: s.ready,
            desc_table: s.desc_table,
            avail_ring: s.avail_ring,
            used_ring: s.used_ring,
            next_avail: s.next_avail,
            next_used: s.next_used,
            event_idx: s.event_idx_enabled,
        }
    }
}

impl From<QueueSnapshot> for QueueState {
    fn from(s: QueueSnapshot) -> Self {
        Self {
            max_size: s.max_size,
            size: s.size,
            ready: s.ready,
            desc_table: s.desc_table,
            avail_ring: s.avail_ring,
            used_ring: s.used_ring,
            next_avail: s.next_avail,
            next_used: s.next_used,
            event_idx_enabled: s.event_idx,
        }
    }
}

/// Saved state of a transport (the device model saves its own state separately).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct MmioTransportState {
    pub device_type: u32,
    pub device_features_sel: u32,
    pub driver_features_sel: u32,
    pub driver_features: u64,
    pub queue_sel: u32,
    pub status: u32,
    pub interrupt_status: u32,
    pub config_generation: u32,
    pub needs_reset: bool,
    pub queues: Vec<QueueSnapshot>,
}

impl Persist for MmioTransport {
    type State = MmioTransportState;

    /// Call with vCPUs paused and the device quiesced (no request in flight; see
    /// `block::Block::quiesce`), so the saved ring positions are final.
    fn save_state(&self) -> MmioTransportState {
        let live = if self.activated {
            lock(&self.device).queue_states()
        } else {
            Vec::new()
        };
        let queues = self
            .queues
            .iter()
            .enumerate()
            .map(|(i, q)| live.get(i).copied().unwrap_or_else(|| q.state()).into())
            .collect();
        MmioTransportState {
            device_type: self.device_type,
            device_features_sel: self.device_features_sel,
            driver_features_sel: self.driver_features_sel,
            driver_features: self.driver_features,
            queue_sel: self.queue_sel,
            status: self.status,
            interrupt_status: self.interrupt.status(),
            config_generation: self.interrupt.config_generation(),
            needs_reset: self.interrupt.needs_reset(),
            queues,
        }
    }

    /// Applies the registers and queues, acks the saved features to the device and, when the
    /// saved status has DRIVER_OK, re-activates it: the guest resumes without re-probing.
    fn restore_state(&mut self, state: &MmioTransportState) -> Result<(), RestoreError> {
        let invalid = |reason: String| RestoreError::Invalid {
            device: "virtio-mmio",
            reason,
        };
        if state.device_type != self.device_type {
            return Err(invalid(format!(
                "device type {} saved, {} here",
                state.device_type, self.device_type
            )));
        }
        if state.queues.len() != self.queues.len() {
            return Err(invalid(format!(
                "{} queues saved, device has {}",
                state.queues.len(),
                self.queues.len()
            )));
        }
        if state.driver_features & !self.device_features != 0 {
            return Err(invalid(format!(
                "driver features {:#x} not offered here ({:#x})",
                state.driver_features, self.device_features
            )));
        }
        let mut queues = Vec::with_capacity(state.queues.len());
        for (saved, current) in state.queues.iter().zip(&self.queues) {
            if saved.max_size != current.max_size() {
                return Err(invalid(format!(
                    "queue max size {} saved, {} here",
                    saved.max_size,
                    current.max_size()
                )));
            }
            let queue = Queue::try_from(QueueState::from(*saved))
                .map_err(|e| invalid(format!("queue: {e}")))?;
            if queue.ready() && !queue.is_valid(&self.mem) {
                return Err(invalid("a ready queue lies outside guest memory".into()));
            }
            queues.push(queue);
        }
        if self.activated {
            lock(&self.device).reset();
            self.activated = false;
        }
        self.queues = queues;
        self.device_features_sel = state.device_features_sel;
        self.driver_features_sel = state.driver_features_sel;
        self.driver_features = state.driver_features;
        self.queue_sel = state.queue_sel;
        self.status = state.status;
        self.interrupt.restore(
            state.interrupt_status,
            state.config_generation,
            state.needs_reset,
        );
        if self.status & VIRTIO_CONFIG_S_FEATURES_OK != 0 {
            lock(&self.device).ack_features(self.driver_features);
        }
        if self.status & VIRTIO_CONFIG_S_DRIVER_OK != 0 && !state.needs_reset {
            self.activate();
            if !self.activated {
                return Err(invalid("device refused re-activation".into()));
            }
        }
        if state.interrupt_status != 0 {
            // An interrupt pending at save time was injected into the source VM only: raise
            // it again here (the irqfd is edge-like; the guest acks what it finds).
            if let Err(e) = self.interrupt.irq_evt().write(1) {
                log::warn!("virtio-mmio: cannot re-raise the restored interrupt: {e}");
            }
        }
        Ok(())
    }
}
