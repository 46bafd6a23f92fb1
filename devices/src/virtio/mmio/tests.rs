//! Register-level tests of the virtio-mmio transport with a dummy device.

use std::sync::{Arc, Mutex};

use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_ACKNOWLEDGE as ACK, VIRTIO_CONFIG_S_DRIVER as DRV,
    VIRTIO_CONFIG_S_DRIVER_OK as DRV_OK, VIRTIO_CONFIG_S_FEATURES_OK as FEAT_OK,
    VIRTIO_CONFIG_S_NEEDS_RESET,
};
use virtio_queue::QueueState;
use vm_memory::GuestAddress;

use super::MmioTransport;
use crate::bus::BusDevice;
use crate::persist::Persist;
use crate::virtio::{ActivateError, VirtioDevice, VirtioInterrupt, VirtioQueue};
use crate::GuestMemory;

const F_DUMMY: u64 = 1 << 3;
const F_VERSION_1: u64 = 1 << 32;

#[derive(Default)]
struct Dummy {
    acked: u64,
    activations: usize,
    resets: usize,
    queues: Vec<QueueState>,
    config: [u8; 8],
    fail_activation: bool,
}

impl VirtioDevice for Dummy {
    fn device_type(&self) -> u32 {
        42
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &[16, 8]
    }
    fn avail_features(&self) -> u64 {
        F_DUMMY
    }
    fn ack_features(&mut self, features: u64) {
        self.acked = features;
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            *b = self.config.get(offset as usize + i).copied().unwrap_or(0);
        }
    }
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        for (i, b) in data.iter().enumerate() {
            if let Some(slot) = self.config.get_mut(offset as usize + i) {
                *slot = *b;
            }
        }
    }
    fn activate(
        &mut self,
        _mem: GuestMemory,
        _interrupt: Arc<VirtioInterrupt>,
        queues: Vec<VirtioQueue>,
    ) -> Result<(), ActivateError> {
        if self.fail_activation {
            return Err(ActivateError::BadQueue(0));
        }
        self.activations += 1;
        self.queues = queues.iter().map(|q| q.queue.state()).collect();
        Ok(())
    }
    fn reset(&mut self) {
        self.resets += 1;
        self.queues.clear();
    }
    fn queue_states(&self) -> Vec<QueueState> {
        self.queues.clone()
    }
}

fn setup() -> (MmioTransport, Arc<Mutex<Dummy>>) {
    let mem = GuestMemory::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
    let dev = Arc::new(Mutex::new(Dummy {
        config: [1, 2, 3, 4, 5, 6, 7, 8],
        ..Dummy::default()
    }));
    let t = MmioTransport::new(mem, dev.clone()).unwrap();
    (t, dev)
}

fn r(t: &mut MmioTransport, off: u64) -> u32 {
    let mut b = [0u8; 4];
    t.read(off, &mut b);
    u32::from_le_bytes(b)
}

fn w(t: &mut MmioTransport, off: u64, v: u32) {
    t.write(off, &v.to_le_bytes());
}

fn set_features(t: &mut MmioTransport, features: u64) {
    w(t, 0x24, 0);
    w(t, 0x20, features as u32);
    w(t, 0x24, 1);
    w(t, 0x20, (features >> 32) as u32);
}

/// Drives the transport to FEATURES_OK with VERSION_1 and the dummy feature.
fn negotiate(t: &mut MmioTransport) {
    w(t, 0x70, ACK);
    w(t, 0x70, ACK | DRV);
    set_features(t, F_VERSION_1 | F_DUMMY);
    w(t, 0x70, ACK | DRV | FEAT_OK);
    assert_eq!(r(t, 0x70), ACK | DRV | FEAT_OK);
}

/// Configures queue `q` with rings at `base`.
fn setup_queue(t: &mut MmioTransport, q: u32, size: u32, base: u64) {
    w(t, 0x30, q);
    w(t, 0x38, size);
    w(t, 0x80, base as u32);
    w(t, 0x84, 0);
    w(t, 0x90, (base + 0x1000) as u32);
    w(t, 0x94, 0);
    w(t, 0xa0, (base + 0x2000) as u32);
    w(t, 0xa4, 0);
    w(t, 0x44, 1);
}

#[test]
fn identity_registers() {
    let (mut t, _) = setup();
    assert_eq!(r(&mut t, 0x00), 0x7472_6976);
    assert_eq!(r(&mut t, 0x04), 2);
    assert_eq!(r(&mut t, 0x08), 42);
    assert_ne!(r(&mut t, 0x0c), 0);
    // Registers only answer naturally aligned 32-bit accesses.
    let mut b = [0xffu8; 2];
    t.read(0x00, &mut b);
    assert_eq!(b, [0, 0]);
    let mut b = [0xffu8; 4];
    t.read(0x02, &mut b);
    assert_eq!(b, [0; 4]);
}

#[test]
fn feature_negotiation() {
    let (mut t, dev) = setup();
    w(&mut t, 0x14, 0);
    assert_eq!(r(&mut t, 0x10), F_DUMMY as u32);
    w(&mut t, 0x14, 1);
    assert_eq!(r(&mut t, 0x10), 1, "VERSION_1 is offered");
    w(&mut t, 0x14, 2);
    assert_eq!(r(&mut t, 0x10), 0);
    negotiate(&mut t);
    assert_eq!(dev.lock().unwrap().acked, F_VERSION_1 | F_DUMMY);
    // Feature words are frozen after FEATURES_OK.
    set_features(&mut t, F_VERSION_1);
    w(&mut t, 0x70, ACK | DRV | FEAT_OK | DRV_OK);
    assert_eq!(dev.lock().unwrap().acked, F_VERSION_1 | F_DUMMY);
}

#[test]
fn features_ok_refused_for_unknown_or_legacy_features() {
    for features in [F_VERSION_1 | 1 << 5, F_DUMMY, F_VERSION_1 | 1 << 40] {
        let (mut t, dev) = setup();
        w(&mut t, 0x70, ACK);
        w(&mut t, 0x70, ACK | DRV);
        set_features(&mut t, features);
        w(&mut t, 0x70, ACK | DRV | FEAT_OK);
        assert_eq!(r(&mut t, 0x70), ACK | DRV, "features {features:#x}");
        assert_eq!(dev.lock().unwrap().acked, 0);
    }
    // A bit in a word past 64 is unknown too.
    let (mut t, _) = setup();
    w(&mut t, 0x70, ACK | DRV);
    set_features(&mut t, F_VERSION_1);
    w(&mut t, 0x24, 2);
    w(&mut t, 0x20, 1);
    w(&mut t, 0x70, ACK | DRV | FEAT_OK);
    assert_eq!(r(&mut t, 0x70) & FEAT_OK, 0);
}

#[test]
fn feature_writes_need_driver_status() {
    let (mut t, dev) = setup();
    set_features(&mut t, F_VERSION_1 | F_DUMMY); // before DRIVER: ignored
    w(&mut t, 0x70, ACK);
    w(&mut t, 0x70, ACK | DRV);
    w(&mut t, 0x70, ACK | DRV | FEAT_OK);
    assert_eq!(r(&mut t, 0x70) & FEAT_OK, 0, "no VERSION_1 was recorded");
    assert_eq!(dev.lock().unwrap().acked, 0);
}

#[test]
fn status_bits_must_come_in_order() {
    let (mut t, dev) = setup();
    w(&mut t, 0x70, DRV);
    assert_eq!(r(&mut t, 0x70), 0, "DRIVER needs ACKNOWLEDGE");
    w(&mut t, 0x70, ACK | DRV);
    w(&mut t, 0x70, ACK | DRV | DRV_OK);
    assert_eq!(r(&mut t, 0x70), ACK | DRV, "DRIVER_OK needs FEATURES_OK");
    // All bits at once, but the features (none acked, so no VERSION_1) are refused.
    w(&mut t, 0x70, ACK | DRV | FEAT_OK | DRV_OK);
    assert_eq!(r(&mut t, 0x70), ACK | DRV);
    w(&mut t, 0x70, 0);
    negotiate(&mut t);
    // Clearing a bit (other than a full reset) is ignored.
    w(&mut t, 0x70, ACK | FEAT_OK);
    assert_eq!(r(&mut t, 0x70), ACK | DRV | FEAT_OK);
    assert_eq!(dev.lock().unwrap().activations, 0);
}

#[test]
fn queue_configuration_is_validated() {
    let (mut t, _) = setup();
    // Before FEATURES_OK queue writes are ignored.
    w(&mut t, 0x30, 0);
    w(&mut t, 0x38, 8);
    negotiate(&mut t);
    assert_eq!(r(&mut t, 0x34), 16);
    w(&mut t, 0x30, 1);
    assert_eq!(r(&mut t, 0x34), 8);
    w(&mut t, 0x30, 2);
    assert_eq!(r(&mut t, 0x34), 0, "no queue 2");
    w(&mut t, 0x44, 1);
    assert_eq!(r(&mut t, 0x44), 0);

    w(&mut t, 0x30, 0);
    for bad_size in [0, 3, 12, 32] {
        w(&mut t, 0x38, bad_size);
    }
    // Unaligned descriptor table: ignored, the valid address stays.
    w(&mut t, 0x80, 0x1000);
    w(&mut t, 0x80, 0x1008);
    // Rings outside guest memory: ready refused.
    w(&mut t, 0x90, 0x2000);
    w(&mut t, 0xa0, 0x3000);
    w(&mut t, 0xa4, 1);
    w(&mut t, 0x44, 1);
    assert_eq!(r(&mut t, 0x44), 0);
    w(&mut t, 0xa4, 0);
    w(&mut t, 0x44, 1);
    assert_eq!(r(&mut t, 0x44), 1);
    // Writes to a ready queue are ignored.
    w(&mut t, 0x38, 4);
    w(&mut t, 0x80, 0x4000);
    w(&mut t, 0x44, 0);
    assert_eq!(r(&mut t, 0x44), 1);

    let saved = t.save_state();
    let q = saved.queues[0];
    assert_eq!(q.size, 16, "invalid sizes were refused, max kept");
    assert_eq!(q.desc_table, 0x1000);
    assert!(q.ready);
}

#[test]
fn driver_ok_activates_and_reset_clears() {
    let (mut t, dev) = setup();
    negotiate(&mut t);
    setup_queue(&mut t, 0, 8, 0x1000);
    setup_queue(&mut t, 1, 4, 0x5000);
    w(&mut t, 0x70, ACK | DRV | FEAT_OK | DRV_OK);
    {
        let d = dev.lock().unwrap();
        assert_eq!(d.activations, 1);
        assert_eq!(d.queues.len(), 2);
        assert_eq!(d.queues[0].size, 8);
        assert_eq!(d.queues[1].desc_table, 0x5000);
    }
    // Queue config is frozen after DRIVER_OK.
    w(&mut t, 0x30, 0);
    assert_eq!(r(&mut t, 0x44), 1);

    t.interrupt().signal_used_queue();
    w(&mut t, 0x70, 0);
    assert_eq!(dev.lock().unwrap().resets, 1);
    assert_eq!(r(&mut t, 0x70), 0);
    assert_eq!(r(&mut t, 0x60), 0, "interrupt status cleared");
    assert_eq!(r(&mut t, 0x44), 0, "queue not ready");
    let s = t.save_state();
    assert_eq!(s.driver_features, 0);
    assert_eq!(s.queues[0].size, 16);
}

#[test]
fn failed_activation_sets_needs_reset() {
    let (mut t, dev) = setup();
    dev.lock().unwrap().fail_activation = true;
    negotiate(&mut t);
    setup_queue(&mut t, 0, 8, 0x1000);
    w(&mut t, 0x70, ACK | DRV | FEAT_OK | DRV_OK);
    assert_ne!(r(&mut t, 0x70) & VIRTIO_CONFIG_S_NEEDS_RESET, 0);
    assert_eq!(r(&mut t, 0x60) & 2, 2, "config interrupt raised");
    w(&mut t, 0x70, 0);
    assert_eq!(r(&mut t, 0x70), 0);
}

#[test]
fn interrupt_status_and_ack() {
    let (mut t, _) = setup();
    let irq = t.interrupt_evt().try_clone().unwrap();
    t.interrupt().signal_used_queue();
    assert_eq!(r(&mut t, 0x60), 1);
    assert_eq!(irq.read().unwrap(), 1);
    let gen = r(&mut t, 0xfc);
    t.interrupt().signal_config_change();
    assert_eq!(r(&mut t, 0x60), 3);
    assert_eq!(r(&mut t, 0xfc), gen + 1);
    w(&mut t, 0x64, 1);
    assert_eq!(r(&mut t, 0x60), 2);
    w(&mut t, 0x64, 2);
    assert_eq!(r(&mut t, 0x60), 0);
}

#[test]
fn config_space_bounds() {
    let (mut t, dev) = setup();
    let mut b = [0u8; 4];
    t.read(0x104, &mut b);
    assert_eq!(b, [5, 6, 7, 8]);
    let mut b = [0xffu8; 4];
    t.read(0x106, &mut b);
    assert_eq!(b, [7, 8, 0, 0]);
    let mut b = [0xffu8; 8];
    t.read(0xfff, &mut b[..1]);
    assert_eq!(b[0], 0);
    t.write(0x100, &[9]);
    t.write(0x1000, &[9]);
    assert_eq!(dev.lock().unwrap().config[0], 9);
}

#[test]
fn queue_notify_fallback_signals_eventfd() {
    let (mut t, _) = setup();
    let evts: Vec<_> = t
        .queue_notify_evts()
        .into_iter()
        .map(|(i, e)| (i, e.try_clone().unwrap()))
        .collect();
    assert_eq!(evts.len(), 2);
    w(&mut t, 0x50, 1);
    w(&mut t, 0x50, 7); // no such queue: ignored
    assert!(evts[0].1.read().is_err(), "queue 0 not notified");
    assert_eq!(evts[1].1.read().unwrap(), 1);
}

#[test]
fn save_restore_reactivates() {
    let (mut t, dev) = setup();
    negotiate(&mut t);
    setup_queue(&mut t, 0, 8, 0x1000);
    setup_queue(&mut t, 1, 4, 0x5000);
    w(&mut t, 0x70, ACK | DRV | FEAT_OK | DRV_OK);
    dev.lock().unwrap().queues[0].next_avail = 5;
    t.interrupt().signal_used_queue();
    let state = t.save_state();
    assert_eq!(
        state.queues[0].next_avail, 5,
        "live position from the device"
    );

    let (mut t2, dev2) = setup();
    t2.restore_state(&state).unwrap();
    let irq = t2.interrupt_evt().try_clone().unwrap();
    assert_eq!(irq.read().unwrap(), 1, "pending interrupt re-raised");
    let d = dev2.lock().unwrap();
    assert_eq!(d.activations, 1);
    assert_eq!(d.acked, F_VERSION_1 | F_DUMMY);
    assert_eq!(d.queues[0].next_avail, 5);
    assert_eq!(d.queues[1].size, 4);
    drop(d);
    assert_eq!(r(&mut t2, 0x70), ACK | DRV | FEAT_OK | DRV_OK);
    assert_eq!(r(&mut t2, 0x60), 1);

    // A state from another kind of device is refused.
    let mut bad = state.clone();
    bad.device_type = 2;
    assert!(setup().0.restore_state(&bad).is_err());
    let mut bad = state;
    bad.queues[0].size = 3;
    assert!(setup().0.restore_state(&bad).is_err());
}
