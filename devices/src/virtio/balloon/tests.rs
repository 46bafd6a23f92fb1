//! virtio-balloon tests: a test driver builds requests in guest memory and the real transport
//! and device serve them, including chains a hostile driver could build.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use virtio_bindings::virtio_config::VIRTIO_CONFIG_S_NEEDS_RESET;
use vm_memory::{Bytes, GuestAddress};

use super::{config, Balloon, BalloonError, BalloonMetrics, BalloonSettings};
use crate::bus::BusDevice;
use crate::persist::Persist;
use crate::virtio::mmio::MmioTransport;
use crate::virtio::testing::{drive_queues_to_driver_ok, TestDesc, TestDriver};
use crate::GuestMemory;

const MIB: u64 = 1 << 20;
/// Guest RAM: two regions with a hole between them, like ferry's layout around 3 GiB.
const LOW: u64 = 8 * MIB;
const HIGH: u64 = 16 * MIB;
/// Where pfn arrays and statistics buffers are placed.
const BUF: u64 = 0x80000;
/// Pages the tests inflate: well above the rings and buffers.
const FIRST_PFN: u32 = (4 * MIB / 4096) as u32;
const PATTERN: u8 = 0x5a;

struct Rig {
    balloon: Arc<Mutex<Balloon>>,
    t: MmioTransport,
    drvs: Vec<TestDriver>,
    mem: GuestMemory,
}

fn memory() -> GuestMemory {
    GuestMemory::from_ranges(&[
        (GuestAddress(0), LOW as usize),
        (GuestAddress(HIGH), LOW as usize),
    ])
    .unwrap()
}

fn rig(settings: BalloonSettings) -> Rig {
    let mem = memory();
    let balloon = Balloon::new_shared(settings).unwrap();
    let mut t = MmioTransport::new(mem.clone(), balloon.clone()).unwrap();
    let n = balloon.lock().unwrap().queue_sizes.len();
    let drvs: Vec<TestDriver> = (0..n)
        .map(|i| TestDriver::new(mem.clone(), config::QUEUE_SIZE, 0x1000 + 0x4000 * i as u64))
        .collect();
    let refs: Vec<Option<&TestDriver>> = drvs.iter().map(Some).collect();
    drive_queues_to_driver_ok(&mut t, &refs, true);
    Rig {
        balloon,
        t,
        drvs,
        mem,
    }
}

fn plain() -> BalloonSettings {
    BalloonSettings {
        target_pages: 0,
        deflate_on_oom: false,
        stats_interval_s: 0,
        free_page_reporting: false,
    }
}

impl Rig {
    fn metric(&self, f: impl Fn(&BalloonMetrics) -> &std::sync::atomic::AtomicU64) -> u64 {
        f(&self.balloon.lock().unwrap().metrics()).load(Ordering::Relaxed)
    }

    /// Writes `pfns` at `at` and queues them as one request on queue `q`; serves it.
    fn send_pfns(&mut self, q: usize, at: u64, pfns: &[u32]) {
        let bytes: Vec<u8> = pfns.iter().flat_map(|p| p.to_le_bytes()).collect();
        self.mem.write_slice(&bytes, GuestAddress(at)).unwrap();
        let head = self.drvs[q].add_chain(&[TestDesc::r(at, bytes.len() as u32)]);
        self.balloon.lock().unwrap().process_queue(q);
        assert_eq!(self.drvs[q].pop_used(), Some((u32::from(head), 0)));
    }

    fn fill(&self, pfn: u32, pages: u32) {
        self.mem
            .write_slice(
                &vec![PATTERN; pages as usize * 4096],
                GuestAddress(u64::from(pfn) << 12),
            )
            .unwrap();
    }

    fn page_is_zero(&self, pfn: u32) -> bool {
        let mut b = vec![1u8; 4096];
        self.mem
            .read_slice(&mut b, GuestAddress(u64::from(pfn) << 12))
            .unwrap();
        b.iter().all(|&x| x == 0)
    }

    fn config_u32(&mut self, off: u64) -> u32 {
        let mut b = [0u8; 4];
        self.t.read(0x100 + off, &mut b);
        u32::from_le_bytes(b)
    }
}

#[test]
fn features_and_queues_follow_the_settings() {
    let b = Balloon::new(plain()).unwrap();
    assert_eq!(b.queue_sizes.len(), 2);
    assert_eq!(b.avail_features & (1 << config::F_STATS_VQ), 0);
    assert!(!b.deflate_on_oom());
    let b = Balloon::new(BalloonSettings {
        deflate_on_oom: true,
        stats_interval_s: 1,
        free_page_reporting: true,
        ..plain()
    })
    .unwrap();
    assert_eq!(b.queue_sizes.len(), 4);
    assert_eq!((b.stats_index, b.reporting_index), (Some(2), Some(3)));
    for f in [
        config::F_STATS_VQ,
        config::F_DEFLATE_ON_OOM,
        config::F_REPORTING,
    ] {
        assert_ne!(b.avail_features & (1 << f), 0, "feature {f}");
    }
}

#[test]
fn config_space_target_and_actual() {
    let mut r = rig(BalloonSettings {
        target_pages: 512,
        ..plain()
    });
    assert_eq!(r.config_u32(0), 512);
    // The driver writes `actual`; `num_pages` is the host's and ignores writes.
    r.t.write(0x104, &300u32.to_le_bytes());
    r.t.write(0x100, &7u32.to_le_bytes());
    assert_eq!((r.config_u32(0), r.config_u32(4)), (512, 300));
    assert_eq!(r.balloon.lock().unwrap().actual_pages(), 300);
    // A new target raises the config-change interrupt.
    let before = r.config_u32_at(0xfc);
    r.balloon.lock().unwrap().set_target_pages(1024);
    assert_eq!(r.config_u32(0), 1024);
    assert_ne!(r.config_u32_at(0xfc), before, "config generation changes");
    assert_ne!(r.config_u32_at(0x60) & 2, 0, "config interrupt raised");
}

impl Rig {
    fn config_u32_at(&mut self, reg: u64) -> u32 {
        let mut b = [0u8; 4];
        self.t.read(reg, &mut b);
        u32::from_le_bytes(b)
    }
}

#[test]
fn inflate_releases_pages_and_skips_bad_pfns() {
    let mut r = rig(plain());
    r.fill(FIRST_PFN, 8);
    // Unsorted, with a duplicate, a pfn in the hole, one past the end and the largest pfn.
    let hole = (LOW / 4096) as u32 + 1;
    let past = ((HIGH + LOW) / 4096) as u32;
    let pfns = [
        FIRST_PFN + 2,
        FIRST_PFN,
        FIRST_PFN + 1,
        FIRST_PFN + 1,
        hole,
        past,
        u32::MAX,
        FIRST_PFN + 5,
    ];
    r.send_pfns(config::INFLATE, BUF, &pfns);
    for p in [0, 1, 2, 5] {
        assert!(r.page_is_zero(FIRST_PFN + p), "page {p} released");
    }
    for p in [3, 4, 6, 7] {
        assert!(!r.page_is_zero(FIRST_PFN + p), "page {p} untouched");
    }
    assert_eq!(r.metric(|m| &m.bad_pfns), 3);
    assert_eq!(r.metric(|m| &m.released_bytes), 4 * 4096);
    assert_eq!(r.metric(|m| &m.inflate_count), 1);
}

#[test]
fn deflate_is_counted_and_completed() {
    let mut r = rig(plain());
    r.send_pfns(config::DEFLATE, BUF, &[FIRST_PFN, u32::MAX]);
    assert_eq!(r.metric(|m| &m.deflate_count), 1);
}

#[test]
fn hostile_pfn_buffers_complete_without_harm() {
    let mut r = rig(plain());
    r.fill(FIRST_PFN, 4);
    r.mem
        .write_slice(&FIRST_PFN.to_le_bytes(), GuestAddress(BUF))
        .unwrap();
    let q = config::INFLATE;
    // An odd length: the whole pfn is used, the trailing bytes counted as bad.
    let head = r.drvs[q].add_chain(&[TestDesc::r(BUF, 6)]);
    // A buffer outside guest memory, and one crossing its end.
    let h2 = r.drvs[q].add_chain(&[TestDesc::r(HIGH - 4096, 64)]);
    let h3 = r.drvs[q].add_chain(&[TestDesc::r(HIGH + LOW - 4, 64)]);
    // A huge length: bounded by MAX_PFNS_PER_REQUEST, no walk over gigabytes.
    let h4 = r.drvs[q].add_chain(&[TestDesc::r(BUF, !3)]);
    r.balloon.lock().unwrap().process_queue(q);
    for h in [head, h2, h3, h4] {
        assert_eq!(r.drvs[q].pop_used(), Some((u32::from(h), 0)));
    }
    assert!(r.page_is_zero(FIRST_PFN));
    assert!(!r.page_is_zero(FIRST_PFN + 1));
    // An indirect chain is read like a direct one.
    r.mem
        .write_slice(&(FIRST_PFN + 1).to_le_bytes(), GuestAddress(BUF + 64))
        .unwrap();
    let h5 = r.drvs[q].write_indirect_chain(BUF + 0x1000, &[TestDesc::r(BUF + 64, 4)]);
    r.drvs[q].push_avail(h5);
    r.balloon.lock().unwrap().process_queue(q);
    assert_eq!(r.drvs[q].pop_used(), Some((u32::from(h5), 0)));
    assert!(r.page_is_zero(FIRST_PFN + 1));
    // A descriptor loop (next points back to itself) ends at the table size.
    r.drvs[q].write_raw_desc(r.drvs[q].desc, 100, BUF, 4, 1, 100);
    r.drvs[q].push_avail(100);
    r.balloon.lock().unwrap().process_queue(q);
    assert_eq!(r.drvs[q].pop_used(), Some((100, 0)));
    assert_eq!(r.t_status() & VIRTIO_CONFIG_S_NEEDS_RESET, 0);
}

impl Rig {
    fn t_status(&mut self) -> u32 {
        self.config_u32_at(0x70)
    }
}

#[test]
fn a_broken_avail_index_needs_reset() {
    let mut r = rig(plain());
    let avail = r.drvs[0].avail.0;
    r.mem.write_obj(1000u16, GuestAddress(avail + 2)).unwrap();
    r.balloon.lock().unwrap().process_queue(0);
    assert_ne!(r.t_status() & VIRTIO_CONFIG_S_NEEDS_RESET, 0);
}

fn stat(tag: u16, v: u64) -> Vec<u8> {
    let mut b = tag.to_le_bytes().to_vec();
    b.extend_from_slice(&v.to_le_bytes());
    b
}

#[test]
fn statistics_buffer_is_held_and_given_back_on_request() {
    let mut r = rig(BalloonSettings {
        stats_interval_s: 5,
        ..plain()
    });
    let q = 2;
    let mut buf = stat(4, 100 << 20);
    buf.extend(stat(5, 512 << 20));
    r.mem.write_slice(&buf, GuestAddress(BUF)).unwrap();
    let head = r.drvs[q].add_chain(&[TestDesc::r(BUF, buf.len() as u32)]);
    r.balloon.lock().unwrap().process_queue(q);
    // Held, not completed.
    assert_eq!(r.drvs[q].pop_used(), None);
    let s = r.balloon.lock().unwrap().latest_stats().unwrap();
    assert_eq!(
        (s.free_memory, s.total_memory),
        (Some(100 << 20), Some(512 << 20))
    );
    assert_eq!(s.swap_in, None);
    // A new interval gives the buffer back at once; 0 would turn statistics off: refused.
    {
        let mut b = r.balloon.lock().unwrap();
        assert_eq!(
            b.set_stats_interval(0),
            Err(BalloonError::StatisticsStateChange)
        );
        b.set_stats_interval(2).unwrap();
    }
    assert_eq!(r.drvs[q].pop_used(), Some((u32::from(head), 0)));
    assert_eq!(r.metric(|m| &m.stats_updates_count), 1);
    // Asking again with no buffer held counts as a failed update, nothing else.
    r.balloon.lock().unwrap().request_stats();
    assert_eq!(r.metric(|m| &m.stats_update_fails), 1);
}

#[test]
fn statistics_disabled_and_cannot_be_enabled() {
    let mut b = Balloon::new(plain()).unwrap();
    assert_eq!(b.latest_stats(), Err(BalloonError::StatisticsDisabled));
    assert_eq!(
        b.set_stats_interval(1),
        Err(BalloonError::StatisticsStateChange)
    );
    b.set_stats_interval(0).unwrap();
}

#[test]
fn free_page_reports_are_released_inside_memory_only() {
    let mut r = rig(BalloonSettings {
        free_page_reporting: true,
        ..plain()
    });
    let q = 2;
    r.fill(FIRST_PFN, 16);
    let at = u64::from(FIRST_PFN) << 12;
    // A block of 8 pages, a misaligned block (rounded inwards to 1 page) and one past memory.
    let head = r.drvs[q].add_chain(&[
        TestDesc::w(at, 8 * 4096),
        TestDesc::w(at + 8 * 4096 + 100, 2 * 4096),
        TestDesc::w(HIGH + LOW - 4096, 8 * 4096),
        // Found by fuzzing: no page boundary above this address (an overflow before).
        TestDesc::w(u64::MAX - 10, 4096),
    ]);
    r.balloon.lock().unwrap().process_queue(q);
    assert_eq!(r.drvs[q].pop_used(), Some((u32::from(head), 0)));
    for p in 0..8 {
        assert!(r.page_is_zero(FIRST_PFN + p));
    }
    assert!(!r.page_is_zero(FIRST_PFN + 8), "partial page kept");
    assert!(r.page_is_zero(FIRST_PFN + 9));
    assert!(!r.page_is_zero(FIRST_PFN + 10));
    assert_eq!(r.metric(|m| &m.free_page_report_freed), 9 * 4096);
    assert_eq!(r.metric(|m| &m.free_page_report_fails), 2);
}

#[test]
fn save_and_restore_carry_target_actual_stats_and_held_buffer() {
    let mut r = rig(BalloonSettings {
        target_pages: 256,
        stats_interval_s: 3,
        ..plain()
    });
    let q = 2;
    let buf = stat(6, 42);
    r.mem.write_slice(&buf, GuestAddress(BUF)).unwrap();
    let head = r.drvs[q].add_chain(&[TestDesc::r(BUF, 10)]);
    r.balloon.lock().unwrap().process_queue(q);
    r.t.write(0x104, &200u32.to_le_bytes());
    let state = r.balloon.lock().unwrap().save_state();
    let transport = r.t.save_state();
    assert_eq!(
        (state.target_pages, state.actual_pages, state.stats_head),
        (256, 200, Some(head))
    );

    // A device configured the same takes it, re-activates and gives the buffer back.
    let fresh = Balloon::new_shared(BalloonSettings {
        target_pages: 0,
        stats_interval_s: 3,
        ..plain()
    })
    .unwrap();
    fresh.lock().unwrap().restore_state(&state).unwrap();
    let mut t2 = MmioTransport::new(r.mem.clone(), fresh.clone()).unwrap();
    t2.restore_state(&transport).unwrap();
    {
        let b = fresh.lock().unwrap();
        assert_eq!((b.target_pages(), b.actual_pages()), (256, 200));
        assert_eq!(b.latest_stats().unwrap().available_memory, Some(42));
    }
    fresh.lock().unwrap().request_stats();
    assert_eq!(r.drvs[q].pop_used(), Some((u32::from(head), 0)));

    // A device without statistics refuses the state.
    let other = Balloon::new_shared(plain()).unwrap();
    assert!(other.lock().unwrap().restore_state(&state).is_err());
}
