//! Rate limiter benchmark (no vCPU): delivered rate against the configured rate, for a limited
//! virtio-blk device and a limited virtio-net device (TX and RX), each over `SECONDS` (default
//! 10) of wall time through the device's real event loop (its timerfd wakes it).
//!
//! * blk over the null backend: bandwidth (64 KiB reads, 8 in flight) and ops (4 KiB reads).
//! * net over a datagram socket pair: TX (the driver keeps the ring full of 1514-byte frames)
//!   and RX (a feeder thread floods the peer socket; the driver keeps buffers posted).
//!
//! Buckets are `rate / 10` refilled every 100 ms, so the initial full bucket adds 1% over 10 s;
//! the report shows the raw rate over the whole run. It also shows the CPU the loop thread used
//! (device and driver together): a limiter that spins would show ~100%.
//!
//! Run: `cargo bench -p ferry-devices --bench rate_limit` (optionally `-- SECONDS`).

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
use ferry_devices::net::{MacAddr, NetBackend};
use ferry_devices::rate_limiter::{RateLimiterConfig, TokenBucketConfig};
use ferry_devices::storage::null::NullDisk;
use ferry_devices::virtio::block::Block;
use ferry_devices::virtio::mmio::MmioTransport;
use ferry_devices::virtio::net::Net;
use ferry_devices::virtio::testing::{drive_to_driver_ok, TestDesc, TestDriver};
use ferry_devices::virtio::{VirtioDevice, VirtioInterrupt, VirtioQueue};
use ferry_devices::GuestMemory;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

type Em = EventManager<Arc<Mutex<dyn MutEventSubscriber + Send>>>;

fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: writes one timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// `rate` tokens per second as a bucket of `rate / 10` refilled every 100 ms.
fn per_second(rate: u64) -> TokenBucketConfig {
    TokenBucketConfig {
        size: rate / 10,
        one_time_burst: 0,
        refill_time_ms: 100,
    }
}

fn report(what: &str, unit: &str, set: u64, got: u64, wall: Duration, cpu: Duration) {
    let rate = got as f64 / wall.as_secs_f64();
    println!(
        "{what:<34} set {set:>10} {unit}/s  delivered {rate:>12.0} {unit}/s  ({:+.2}%)  over {:.1} s, loop thread CPU {:.1}%",
        (rate / set as f64 - 1.0) * 100.0,
        wall.as_secs_f64(),
        cpu.as_secs_f64() / wall.as_secs_f64() * 100.0
    );
}

/// Reads of `req` bytes, `depth` in flight, through a limited block device for `secs`.
/// Returns (requests, bytes, wall, cpu).
fn blk(
    limit: RateLimiterConfig,
    req: u64,
    depth: u64,
    secs: f64,
) -> (u64, u64, Duration, Duration) {
    const HDR: u64 = 0x10_0000;
    const STATUS: u64 = 0x20_0000;
    const DATA: u64 = 0x100_0000;
    let mem = GuestMemory::from_ranges(&[(GuestAddress(0), 64 << 20)]).unwrap();
    let block = Block::new_shared("bench", Box::new(NullDisk::new(1 << 30, 128))).unwrap();
    block.lock().unwrap().set_rate_limiter(&limit);
    let mut t = MmioTransport::new(mem.clone(), block.clone()).unwrap();
    let mut drv = TestDriver::new(mem.clone(), 256, 0x1000);
    drive_to_driver_ok(&mut t, &drv, false);
    let kick = t.queue_notify_evts()[0].1.try_clone().unwrap();
    let mut em: Em = EventManager::new().unwrap();
    em.add_subscriber(block.clone());
    em.run_with_timeout(10).unwrap();
    let mut heads = Vec::new();
    for k in 0..depth {
        let mut h = [0u8; 16]; // T_IN, sector 0
        h[8..16].copy_from_slice(&(k * req / 512).to_le_bytes());
        mem.write_slice(&h, GuestAddress(HDR + 16 * k)).unwrap();
        heads.push(drv.write_chain(&[
            TestDesc::r(HDR + 16 * k, 16),
            TestDesc::w(DATA + k * req, req as u32),
            TestDesc::w(STATUS + k, 1),
        ]));
    }
    let cpu0 = thread_cpu();
    let start = Instant::now();
    for &h in &heads {
        drv.push_avail(h);
    }
    kick.write(1).unwrap();
    let mut done = 0u64;
    while start.elapsed().as_secs_f64() < secs {
        em.run_with_timeout(100).unwrap();
        let mut any = false;
        while let Some((head, _)) = drv.pop_used() {
            done += 1;
            drv.push_avail(head as u16);
            any = true;
        }
        if any {
            kick.write(1).unwrap();
        }
    }
    let wall = start.elapsed();
    (done, done * req, wall, thread_cpu() - cpu0)
}

fn socketpair() -> (OwnedFd, OwnedFd) {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: socketpair writes two fds into `fds`.
    let r = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    };
    assert_eq!(r, 0);
    // SAFETY: both fds are fresh and owned here.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

struct NetRig {
    mem: GuestMemory,
    em: EventManager<Arc<Mutex<Net>>>,
    net: Arc<Mutex<Net>>,
    rx: TestDriver,
    tx: TestDriver,
    evts: Vec<Arc<EventFd>>,
    peer: Arc<OwnedFd>,
}

const RING: u16 = 256;
const FRAME: usize = 1514;
const VNET_HDR: usize = 12;
const TX_AREA: u64 = 0x10_0000;
const RX_AREA: u64 = 0x40_0000;
const RX_BUF: u32 = 2048;

impl NetRig {
    fn new(rx: Option<RateLimiterConfig>, tx: Option<RateLimiterConfig>) -> Self {
        let mem = GuestMemory::from_ranges(&[(GuestAddress(0), 16 << 20)]).unwrap();
        let (ours, peer) = socketpair();
        let backend =
            NetBackend::from_sockets(vec![ours], MacAddr([0x52, 0x54, 0, 0xbe, 0x4c, 1])).unwrap();
        let net = Net::new_shared(backend).unwrap();
        net.lock()
            .unwrap()
            .set_rate_limiters(rx.as_ref(), tx.as_ref());
        let drivers: Vec<TestDriver> = (0..3)
            .map(|i| TestDriver::new(mem.clone(), RING, 0x1000 + 0x4000 * i))
            .collect();
        let evts: Vec<Arc<EventFd>> = (0..3)
            .map(|_| Arc::new(EventFd::new(EFD_NONBLOCK).unwrap()))
            .collect();
        let queues = drivers
            .iter()
            .zip(&evts)
            .map(|(d, e)| {
                let mut q = Queue::new(RING).unwrap();
                q.set_size(d.size);
                q.set_desc_table_address(Some(d.desc.0 as u32), Some(0));
                q.set_avail_ring_address(Some(d.avail.0 as u32), Some(0));
                q.set_used_ring_address(Some(d.used.0 as u32), Some(0));
                q.set_ready(true);
                VirtioQueue {
                    queue: q,
                    notify: e.clone(),
                }
            })
            .collect();
        {
            let mut n = net.lock().unwrap();
            n.ack_features(1 << 5); // MAC only: one buffer per frame
            n.activate(
                mem.clone(),
                Arc::new(VirtioInterrupt::new().unwrap()),
                queues,
            )
            .unwrap();
        }
        let mut em = EventManager::new().unwrap();
        em.add_subscriber(net.clone());
        em.run_with_timeout(10).unwrap();
        let mut it = drivers.into_iter();
        Self {
            mem,
            em,
            net,
            rx: it.next().unwrap(),
            tx: it.next().unwrap(),
            evts,
            peer: Arc::new(peer),
        }
    }

    fn frame() -> Vec<u8> {
        let mut f = vec![0u8; VNET_HDR + FRAME];
        let e = &mut f[VNET_HDR..];
        e[0..6].copy_from_slice(&[0x52, 0x54, 0, 0xbe, 0x4c, 1]);
        e[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 2]);
        e[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
        f
    }

    /// Guest → peer for `secs`; returns frame bytes sent (metrics), wall, cpu.
    fn tx(&mut self, secs: f64) -> (u64, Duration, Duration) {
        self.mem
            .write_slice(&Self::frame(), GuestAddress(TX_AREA))
            .unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let drain = {
            let (peer, stop) = (self.peer.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 70_000];
                while !stop.load(Ordering::Relaxed) {
                    let mut p = libc::pollfd {
                        fd: peer.as_raw_fd(),
                        events: libc::POLLIN,
                        revents: 0,
                    };
                    // SAFETY: one pollfd, then a read into a live buffer.
                    unsafe {
                        libc::poll(&mut p, 1, 50);
                        libc::recv(
                            peer.as_raw_fd(),
                            buf.as_mut_ptr().cast(),
                            buf.len(),
                            libc::MSG_DONTWAIT,
                        );
                    }
                }
            })
        };
        let chain = |d: &mut TestDriver| {
            d.add_chain(&[TestDesc::r(TX_AREA, (VNET_HDR + FRAME) as u32)]);
        };
        let metrics = self.net.lock().unwrap().metrics();
        let bytes0 = metrics.tx_bytes.load(Ordering::Relaxed);
        let cpu0 = thread_cpu();
        let start = Instant::now();
        for _ in 0..RING {
            chain(&mut self.tx);
        }
        self.evts[1].write(1).unwrap();
        while start.elapsed().as_secs_f64() < secs {
            self.em.run_with_timeout(100).unwrap();
            let mut n = 0;
            while self.tx.pop_used().is_some() {
                n += 1;
            }
            for _ in 0..n {
                chain(&mut self.tx);
            }
            if n > 0 {
                self.evts[1].write(1).unwrap();
            }
        }
        let wall = start.elapsed();
        let cpu = thread_cpu() - cpu0;
        stop.store(true, Ordering::SeqCst);
        let _ = drain.join();
        (metrics.tx_bytes.load(Ordering::Relaxed) - bytes0, wall, cpu)
    }

    /// Peer → guest for `secs` (a feeder thread floods the socket); returns frame bytes
    /// delivered (metrics), wall, cpu.
    fn rx(&mut self, secs: f64) -> (u64, Duration, Duration) {
        let stop = Arc::new(AtomicBool::new(false));
        let feeder = {
            let (peer, stop) = (self.peer.clone(), stop.clone());
            std::thread::spawn(move || {
                let f = Self::frame();
                while !stop.load(Ordering::Relaxed) {
                    let mut p = libc::pollfd {
                        fd: peer.as_raw_fd(),
                        events: libc::POLLOUT,
                        revents: 0,
                    };
                    // SAFETY: one pollfd, then a send from a live buffer.
                    unsafe {
                        libc::poll(&mut p, 1, 50);
                        libc::send(
                            peer.as_raw_fd(),
                            f.as_ptr().cast(),
                            f.len(),
                            libc::MSG_DONTWAIT,
                        );
                    }
                }
            })
        };
        let mut next = 0u64;
        let mut post = |d: &mut TestDriver| {
            d.add_chain(&[TestDesc::w(
                RX_AREA + (next % u64::from(RING)) * u64::from(RX_BUF),
                RX_BUF,
            )]);
            next += 1;
        };
        let metrics = self.net.lock().unwrap().metrics();
        let bytes0 = metrics.rx_bytes.load(Ordering::Relaxed);
        let cpu0 = thread_cpu();
        let start = Instant::now();
        for _ in 0..RING {
            post(&mut self.rx);
        }
        self.evts[0].write(1).unwrap();
        while start.elapsed().as_secs_f64() < secs {
            self.em.run_with_timeout(100).unwrap();
            let mut n = 0;
            while self.rx.pop_used().is_some() {
                n += 1;
            }
            for _ in 0..n {
                post(&mut self.rx);
            }
            if n > 0 {
                self.evts[0].write(1).unwrap();
            }
        }
        let wall = start.elapsed();
        let cpu = thread_cpu() - cpu0;
        stop.store(true, Ordering::SeqCst);
        let _ = feeder.join();
        (metrics.rx_bytes.load(Ordering::Relaxed) - bytes0, wall, cpu)
    }
}

fn main() {
    let secs: f64 = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(10.0);
    let bw = |rate| RateLimiterConfig {
        bandwidth: Some(per_second(rate)),
        ops: None,
    };
    let ops = |rate| RateLimiterConfig {
        bandwidth: None,
        ops: Some(per_second(rate)),
    };

    const BLK_BPS: u64 = 4_000_000;
    let (_, bytes, wall, cpu) = blk(bw(BLK_BPS), 64 << 10, 8, secs);
    report(
        "blk bandwidth, 64 KiB reads",
        "B",
        BLK_BPS,
        bytes,
        wall,
        cpu,
    );
    const BLK_IOPS: u64 = 2_000;
    let (reqs, _, wall, cpu) = blk(ops(BLK_IOPS), 4096, 8, secs);
    report("blk ops, 4 KiB reads", "req", BLK_IOPS, reqs, wall, cpu);
    let (reqs, _, wall, cpu) = blk(RateLimiterConfig::default(), 4096, 8, secs.min(2.0));
    println!(
        "{:<34} (reference) {:>10.0} req/s over {:.1} s, loop thread CPU {:.1}%",
        "blk unlimited, 4 KiB reads",
        reqs as f64 / wall.as_secs_f64(),
        wall.as_secs_f64(),
        cpu.as_secs_f64() / wall.as_secs_f64() * 100.0
    );

    const NET_BPS: u64 = 10_000_000;
    let (bytes, wall, cpu) = NetRig::new(None, Some(bw(NET_BPS))).tx(secs);
    report(
        "net TX bandwidth, 1514 B frames",
        "B",
        NET_BPS,
        bytes,
        wall,
        cpu,
    );
    let (bytes, wall, cpu) = NetRig::new(Some(bw(NET_BPS)), None).rx(secs);
    report(
        "net RX bandwidth, 1514 B frames",
        "B",
        NET_BPS,
        bytes,
        wall,
        cpu,
    );
    const NET_PPS: u64 = 5_000;
    let (bytes, wall, cpu) = NetRig::new(None, Some(ops(NET_PPS))).tx(secs);
    report(
        "net TX ops, 1514 B frames",
        "frames",
        NET_PPS,
        bytes / FRAME as u64,
        wall,
        cpu,
    );
}
