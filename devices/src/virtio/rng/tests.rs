//! virtio-rng tests: requests built in guest memory by a test driver, processed through the real
//! transport and device, including chains a hostile driver could build and the rate limiter.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
use virtio_bindings::virtio_config::VIRTIO_CONFIG_S_NEEDS_RESET;
use vm_memory::bitmap::Bitmap;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

use super::{config, Rng};
use crate::bus::BusDevice;
use crate::persist::Persist;
use crate::rate_limiter::{RateLimiterConfig, TokenBucketConfig};
use crate::virtio::mmio::MmioTransport;
use crate::virtio::testing::{drive_to_driver_ok, TestDesc, TestDriver};
use crate::GuestMemory;

const MIB: u64 = 1 << 20;
/// Two adjacent regions, so a buffer can straddle them.
const REGION: u64 = 8 * MIB;
const DATA: u64 = 0x100000;
/// What untouched memory holds, to see exactly which bytes the device wrote.
const SENTINEL: u8 = 0xa5;

struct Rig {
    rng: Arc<Mutex<Rng>>,
    t: MmioTransport,
    drv: TestDriver,
    mem: GuestMemory,
}

fn memory() -> GuestMemory {
    GuestMemory::from_ranges(&[
        (GuestAddress(0), REGION as usize),
        (GuestAddress(REGION), REGION as usize),
    ])
    .unwrap()
}

fn reg_r(t: &mut MmioTransport, off: u64) -> u32 {
    let mut b = [0u8; 4];
    t.read(off, &mut b);
    u32::from_le_bytes(b)
}

fn rig_with(limit: Option<RateLimiterConfig>) -> Rig {
    let mem = memory();
    let rng = Rng::new_shared().unwrap();
    if let Some(limit) = limit {
        rng.lock().unwrap().set_rate_limiter(&limit);
    }
    let mut t = MmioTransport::new(mem.clone(), rng.clone()).unwrap();
    let drv = TestDriver::new(mem.clone(), config::QUEUE_SIZE, 0x1000);
    drive_to_driver_ok(&mut t, &drv, true);
    // Everything but the rings starts as the sentinel.
    let from = drv.ring_end();
    mem.write_slice(
        &vec![SENTINEL; (2 * REGION - from) as usize],
        GuestAddress(from),
    )
    .unwrap();
    Rig { rng, t, drv, mem }
}

fn rig() -> Rig {
    rig_with(None)
}

impl Rig {
    fn process(&self) {
        self.rng.lock().unwrap().process_queue();
    }

    /// Queues `descs` as one request, processes the queue, returns the used entry.
    fn run(&mut self, descs: &[TestDesc]) -> (u32, u32) {
        let head = self.drv.add_chain(descs);
        self.process();
        let used = self.drv.pop_used().expect("request completed");
        assert_eq!(used.0, u32::from(head));
        used
    }

    fn bytes(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        self.mem.read_slice(&mut v, GuestAddress(addr)).unwrap();
        v
    }

    fn untouched(&self, addr: u64, len: usize) -> bool {
        self.bytes(addr, len).iter().all(|&b| b == SENTINEL)
    }

    fn metric(&self, f: impl Fn(&super::RngMetrics) -> &std::sync::atomic::AtomicU64) -> u64 {
        f(&self.rng.lock().unwrap().metrics()).load(Ordering::Relaxed)
    }
}

/// Looks random: at least `min_distinct` byte values, and not one byte repeated throughout.
fn looks_random(data: &[u8], min_distinct: usize) -> bool {
    let mut seen = [false; 256];
    for &b in data {
        seen[usize::from(b)] = true;
    }
    seen.iter().filter(|&&s| s).count() >= min_distinct
}

fn ops_limit(size: u64, burst: u64, refill_time_ms: u64) -> RateLimiterConfig {
    RateLimiterConfig {
        bandwidth: None,
        ops: Some(TokenBucketConfig {
            size,
            one_time_burst: burst,
            refill_time_ms,
        }),
    }
}

#[test]
fn identifies_as_an_entropy_device_without_config_space() {
    let mut r = rig();
    assert_eq!(reg_r(&mut r.t, 0x08), 4, "device id");
    let mut cfg = [0xffu8; 8];
    r.t.read(0x100, &mut cfg);
    assert_eq!(cfg, [0; 8]);
    r.t.write(0x100, &[1, 2, 3, 4]);
    r.t.read(0x100, &mut cfg);
    assert_eq!(cfg, [0; 8]);
}

#[test]
fn fills_a_buffer_with_random_bytes_and_counts_them() {
    let mut r = rig();
    let (_, len) = r.run(&[TestDesc::w(DATA, 4096)]);
    assert_eq!(len, 4096);
    let a = r.bytes(DATA, 4096);
    assert!(looks_random(&a, 200), "{:?}", &a[..32]);
    assert!(r.untouched(DATA + 4096, 4096), "wrote past the buffer");
    let (_, len) = r.run(&[TestDesc::w(DATA + 8192, 4096)]);
    assert_eq!(len, 4096);
    assert_ne!(
        a,
        r.bytes(DATA + 8192, 4096),
        "two requests got the same bytes"
    );
    assert_eq!(r.metric(|m| &m.requests), 2);
    assert_eq!(r.metric(|m| &m.bytes), 8192);
    assert_eq!(r.metric(|m| &m.throttled), 0);
}

#[test]
fn hostile_chains_never_write_outside_writable_guest_buffers() {
    let mut r = rig();
    // Read-only, zero-length, outside memory, wrapping past the end of the address space and
    // 2 GiB / 4 GiB - 1 buffers that run off the end of RAM: all skipped; the good one between
    // them is filled exactly. (The last one ends the chain: its total passes 4 GiB.)
    let (_, len) = r.run(&[
        TestDesc::r(DATA, 512),
        TestDesc::w(DATA + 0x1000, 0),
        TestDesc::w(0x4000_0000, 4096),
        TestDesc::w(u64::MAX - 16, 64),
        TestDesc::w(2 * REGION - 4096, 0x8000_0000),
        TestDesc::w(DATA + 0x2000, 100),
        TestDesc::w(2 * REGION - 4096, u32::MAX),
    ]);
    assert_eq!(len, 100);
    assert!(r.untouched(DATA, 512), "read-only buffer written");
    assert!(r.untouched(DATA + 0x1000, 16));
    assert!(r.untouched(2 * REGION - 4096, 4096));
    assert!(!r.untouched(DATA + 0x2000, 100));
    assert!(r.untouched(DATA + 0x2000 + 100, 4096));
    assert_eq!(r.metric(|m| &m.bad_buffers), 4);

    // Only device-readable buffers: completed with 0 bytes, nothing written.
    let (_, len) = r.run(&[TestDesc::r(DATA + 0x3000, 64)]);
    assert_eq!(len, 0);
    assert!(r.untouched(DATA + 0x3000, 64));

    // A descriptor loop (one buffer chained to itself) ends at the segment limit: no hang, the
    // request completes, and only that 8-byte buffer is ever written.
    let head = 200;
    r.drv
        .write_raw_desc(r.drv.desc, head, DATA + 0x4000, 8, 3, head);
    r.drv.push_avail(head);
    r.process();
    let used = 8 * config::MAX_SEGMENTS as u32;
    assert_eq!(r.drv.pop_used(), Some((u32::from(head), used)));
    assert!(r.untouched(DATA + 0x4008, 64));
    assert!(!r.device_needs_reset());
}

#[test]
fn a_huge_buffer_gets_at_most_the_request_limit() {
    let mut r = rig();
    let max = config::MAX_REQUEST_BYTES as u64;
    let (_, len) = r.run(&[TestDesc::w(DATA, 4 * MIB as u32)]);
    assert_eq!(u64::from(len), max);
    assert!(r.untouched(DATA + max, 64 << 10));
    // Split over many buffers, the limit holds too.
    let descs: Vec<TestDesc> = (0..8)
        .map(|i| TestDesc::w(2 * MIB + i * 0x10000, 0x10000))
        .collect();
    let (_, len) = r.run(&descs);
    assert_eq!(u64::from(len), max);
    assert!(r.untouched(2 * MIB + max, 0x10000));
}

#[test]
fn buffers_straddling_regions_and_indirect_tables_are_filled() {
    let mut r = rig();
    let (_, len) = r.run(&[TestDesc::w(REGION - 100, 200)]);
    assert_eq!(len, 200);
    assert!(r.untouched(REGION - 164, 64) && r.untouched(REGION + 100, 64));
    let head = r
        .drv
        .write_indirect_chain(0x8000, &[TestDesc::w(DATA, 32), TestDesc::w(DATA + 64, 32)]);
    r.drv.push_avail(head);
    r.process();
    assert_eq!(r.drv.pop_used(), Some((u32::from(head), 64)));
    assert!(r.untouched(DATA + 32, 32));
}

impl Rig {
    fn clear_dirty(&self) {
        for r in self.mem.iter() {
            // The mapping's own bitmap (the region trait only hands out slices).
            std::ops::Deref::deref(r).bitmap().reset();
        }
    }

    fn dirty(&self, addr: u64) -> bool {
        let (r, off) = self.mem.to_region_addr(GuestAddress(addr)).unwrap();
        r.bitmap().dirty_at(off.0 as usize)
    }

    fn device_needs_reset(&mut self) -> bool {
        reg_r(&mut self.t, 0x70) & VIRTIO_CONFIG_S_NEEDS_RESET != 0
    }
}

#[test]
fn filled_buffers_are_marked_dirty_for_live_migration() {
    let mut r = rig();
    r.clear_dirty();
    // Two pages, then a buffer straddling the two regions (the slow path).
    let (_, len) = r.run(&[TestDesc::w(DATA, 8192), TestDesc::w(REGION - 16, 32)]);
    assert_eq!(len, 8192 + 32);
    assert!(r.dirty(DATA) && r.dirty(DATA + 4096), "filled pages dirty");
    assert!(
        r.dirty(REGION - 16) && r.dirty(REGION),
        "both sides of the straddling buffer"
    );
    assert!(r.dirty(r.drv.used.0), "used ring dirty");
    assert!(!r.dirty(DATA + 8192), "untouched page stays clean");
}

#[test]
fn a_broken_ring_needs_a_reset_and_nothing_panics() {
    let mut r = rig();
    // A head outside the descriptor table.
    r.drv.push_avail(999);
    r.process();
    assert!(r.device_needs_reset());
    assert_eq!(r.drv.used_idx(), 0);
    // Further kicks do nothing; a reset and a fresh start work again.
    r.process();
    r.t.write(0x70, &0u32.to_le_bytes());
    assert!(!r.device_needs_reset());
    let drv = TestDriver::new(r.mem.clone(), 16, 0x1000);
    drive_to_driver_ok(&mut r.t, &drv, false);
    r.drv = drv;
    let (_, len) = r.run(&[TestDesc::w(DATA, 16)]);
    assert_eq!(len, 16);

    // The avail index a whole ring ahead of the device.
    r.mem
        .write_obj(100u16.to_le(), GuestAddress(r.drv.avail.0 + 2))
        .unwrap();
    r.process();
    assert!(r.device_needs_reset());
}

#[test]
fn the_rate_limiter_holds_requests_in_the_ring_until_tokens_come() {
    // Burst 1 + bucket 1, refilled once a day: two requests pass, the rest wait in the ring.
    let mut r = rig_with(Some(ops_limit(1, 1, 86_400_000)));
    let heads: Vec<u16> = (0..4)
        .map(|i| r.drv.add_chain(&[TestDesc::w(DATA + i * 4096, 512)]))
        .collect();
    for _ in 0..3 {
        r.process(); // guest kicks while throttled: counted once, nothing lost
    }
    assert_eq!(r.drv.used_idx(), 2);
    assert_eq!(r.metric(|m| &m.throttled), 1);
    assert!(r.untouched(DATA + 2 * 4096, 512));
    // The held request is still available in the saved queue state.
    assert_eq!(r.t.save_state().queues[0].next_avail, 2);
    // Lifting the limit lets the rest through, once each and in order.
    r.rng
        .lock()
        .unwrap()
        .set_rate_limiter(&RateLimiterConfig::default());
    r.process();
    let used: Vec<u16> = std::iter::from_fn(|| r.drv.pop_used())
        .map(|(h, len)| {
            assert_eq!(len, 512);
            h as u16
        })
        .collect();
    assert_eq!(used, heads);
    assert_eq!(r.metric(|m| &m.bytes), 4 * 512);
}

#[test]
fn bandwidth_limit_wakes_the_queue_from_its_timer() {
    // 1 KiB per 10 ms, requests of 512 bytes, through the event loop: the limiter's timerfd
    // resumes the queue (no spinning), every request completes once.
    let mut em: EventManager<Arc<Mutex<dyn MutEventSubscriber + Send>>> =
        EventManager::new().unwrap();
    let mut r = rig_with(Some(RateLimiterConfig {
        bandwidth: Some(TokenBucketConfig {
            size: 1024,
            one_time_burst: 0,
            refill_time_ms: 10,
        }),
        ops: None,
    }));
    let _id = em.add_subscriber(r.rng.clone());
    em.run_with_timeout(100).unwrap(); // activation
    let n = 8;
    for i in 0..n {
        r.drv.add_chain(&[TestDesc::w(DATA + i * 1024, 512)]);
    }
    r.t.write(0x50, &0u32.to_le_bytes()); // QueueNotify
    let mut done = 0;
    // Bounded by iterations, not by time: at least three refills are needed.
    for _ in 0..500 {
        em.run_with_timeout(100).unwrap();
        while r.drv.pop_used().is_some() {
            done += 1;
        }
        if done == n {
            break;
        }
    }
    assert_eq!(done, n);
    assert!(r.metric(|m| &m.throttled) >= 1);
    assert_eq!(r.metric(|m| &m.bytes), 512 * n);
}

#[test]
fn save_restore_continues_the_queue_and_keeps_the_tokens() {
    let limit = ops_limit(1, 0, 86_400_000);
    let mut r = rig_with(Some(limit));
    r.drv.add_chain(&[TestDesc::w(DATA, 64)]);
    let held = r.drv.add_chain(&[TestDesc::w(DATA + 4096, 64)]);
    r.process();
    assert_eq!(r.drv.pop_used().map(|u| u.1), Some(64));
    let rng_state = r.rng.lock().unwrap().save_state();
    let t_state = r.t.save_state();
    assert_eq!(
        t_state.queues[0].next_avail, 1,
        "the held request stays in the ring"
    );

    // Destination: same memory (as migrated), fresh device with the same limit.
    let rng2 = Rng::new_shared().unwrap();
    rng2.lock().unwrap().set_rate_limiter(&limit);
    rng2.lock().unwrap().restore_state(&rng_state).unwrap();
    let mut t2 = MmioTransport::new(r.mem.clone(), rng2.clone()).unwrap();
    t2.restore_state(&t_state).unwrap();
    assert_eq!(reg_r(&mut t2, 0x70), 0xf);
    r.rng = rng2;
    r.t = t2;
    // The bucket came back empty: no fresh token for the restored guest.
    r.process();
    assert_eq!(r.drv.used_idx(), 1);
    r.rng
        .lock()
        .unwrap()
        .set_rate_limiter(&RateLimiterConfig::default());
    r.process();
    assert_eq!(r.drv.pop_used(), Some((u32::from(held), 64)));

    // A state that acked features this device does not offer is refused.
    let mut bad = rng_state;
    bad.acked_features |= 1 << 50;
    assert!(Rng::new().unwrap().restore_state(&bad).is_err());
}
