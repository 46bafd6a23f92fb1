//! virtio-net device path benchmark (no vCPU): the benchmark plays the guest driver on rings in
//! guest memory and runs the device's real event loop against a real tap.
//!
//! * TX: the ring is filled with frames (64 B, and 64 KiB TSO frames with a GSO header), the
//!   queue is kicked, the device writes them to the tap.
//! * RX: a feeder thread sends frames into the tap through an AF_PACKET socket (the host side);
//!   the device reads them and copies them into MRG_RXBUF guest buffers the benchmark refills.
//!
//! Reports frames/s, Gbit/s of frame data and the device thread's CPU (user+sys per second of
//! wall time). Needs root (creates tap `fbench<pid>`, removed on exit).
//!
//! Run: `cargo bench -p ferry-devices --bench net` (optionally `-- SECONDS`).

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use event_manager::{EventManager, SubscriberOps};
use ferry_devices::net::{open_net_backend, NetBackendSpec, NetSpec};
use ferry_devices::virtio::net::{Net, NetMetrics};
use ferry_devices::virtio::testing::{TestDesc, TestDriver};
use ferry_devices::virtio::{VirtioDevice, VirtioInterrupt, VirtioQueue};
use ferry_devices::GuestMemory;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

const RING: u16 = 256;
const FRAME_AREA: u64 = 0x10_0000;
const RX_AREA: u64 = 0x40_0000;
const RX_BUF: u32 = 4096;

// virtio-net feature bits used here.
const CSUM: u64 = 1 << 0;
const GUEST_CSUM: u64 = 1 << 1;
const HOST_TSO4: u64 = 1 << 11;
const MRG_RXBUF: u64 = 1 << 15;

fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: writes one timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

struct Bench {
    mem: GuestMemory,
    em: EventManager<Arc<Mutex<Net>>>,
    rx: TestDriver,
    tx: TestDriver,
    evts: Vec<Arc<EventFd>>,
    tap: String,
    metrics: Arc<NetMetrics>,
}

impl Bench {
    fn new(tap: &str) -> Self {
        let mem = GuestMemory::from_ranges(&[(GuestAddress(0), 64 << 20)]).unwrap();
        let backend = open_net_backend(&NetSpec {
            backend: NetBackendSpec::Tap(tap.to_string()),
            mac: Some("52:54:00:be:4c:01".into()),
            queues: 1,
        })
        .unwrap_or_else(|e| {
            eprintln!("net bench needs root and /dev/net/tun: {e}");
            std::process::exit(0);
        });
        let net = Net::new_shared(backend).unwrap();
        let metrics = net.lock().unwrap().metrics();
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
            n.ack_features(CSUM | GUEST_CSUM | HOST_TSO4 | MRG_RXBUF);
            n.activate(
                mem.clone(),
                Arc::new(VirtioInterrupt::new().unwrap()),
                queues,
            )
            .unwrap();
        }
        let mut em = EventManager::new().unwrap();
        em.add_subscriber(net);
        em.run_with_timeout(10).unwrap();
        let mut it = drivers.into_iter();
        let rx = it.next().unwrap();
        let tx = it.next().unwrap();
        Self {
            mem,
            em,
            rx,
            tx,
            evts,
            tap: tap.to_string(),
            metrics,
        }
    }

    fn tx(&mut self, frame: &[u8], secs: f64) -> (u64, u64, Duration, Duration) {
        self.mem
            .write_slice(frame, GuestAddress(FRAME_AREA))
            .unwrap();
        let len = frame.len() as u32;
        let (mut frames, mut bytes) = (0u64, 0u64);
        let cpu0 = thread_cpu();
        let start = Instant::now();
        while start.elapsed().as_secs_f64() < secs {
            let target = self.tx.used_idx().wrapping_add(RING / 2);
            // Two descriptors per chain: a full ring holds RING / 2 frames.
            for _ in 0..RING / 2 {
                self.tx.add_chain(&[
                    TestDesc::r(FRAME_AREA, 12),
                    TestDesc::r(FRAME_AREA + 12, len - 12),
                ]);
            }
            self.evts[1].write(1).unwrap();
            let round = Instant::now();
            while self.tx.used_idx() != target {
                self.em.run_with_timeout(100).unwrap();
                if round.elapsed() > Duration::from_secs(5) {
                    let m = self.metrics.clone();
                    panic!(
                        "TX stalled: used {} of {}; tx_frames {} tx_dropped {} bad_chains {}",
                        self.tx.used_idx(),
                        target,
                        m.tx_frames.load(Ordering::Relaxed),
                        m.tx_dropped.load(Ordering::Relaxed),
                        m.bad_chains.load(Ordering::Relaxed)
                    );
                }
            }
            while self.tx.pop_used().is_some() {
                frames += 1;
                bytes += u64::from(len - 12);
            }
        }
        (frames, bytes, start.elapsed(), thread_cpu() - cpu0)
    }

    fn rx(&mut self, frame_len: usize, secs: f64) -> (u64, u64, Duration, Duration) {
        let stop = Arc::new(AtomicBool::new(false));
        let feeder = spawn_feeder(&self.tap, frame_len, stop.clone());
        let mut next = 0u16;
        for _ in 0..RING {
            self.rx.add_chain(&[TestDesc::w(
                RX_AREA + u64::from(next) * u64::from(RX_BUF),
                RX_BUF,
            )]);
            next = (next + 1) % RING;
        }
        self.evts[0].write(1).unwrap();
        let (mut frames, mut bytes) = (0u64, 0u64);
        let cpu0 = thread_cpu();
        let start = Instant::now();
        while start.elapsed().as_secs_f64() < secs {
            self.em.run_with_timeout(100).unwrap();
            let mut refilled = 0;
            while let Some((_, len)) = self.rx.pop_used() {
                bytes += u64::from(len);
                refilled += 1;
            }
            if refilled > 0 {
                for _ in 0..refilled {
                    self.rx.add_chain(&[TestDesc::w(
                        RX_AREA + u64::from(next) * u64::from(RX_BUF),
                        RX_BUF,
                    )]);
                    next = (next + 1) % RING;
                }
                self.evts[0].write(1).unwrap();
            }
        }
        let elapsed = start.elapsed();
        let cpu = thread_cpu() - cpu0;
        println!(
            "  (rx_dropped so far: {})",
            self.metrics.rx_dropped.load(Ordering::Relaxed)
        );
        stop.store(true, Ordering::SeqCst);
        let _ = feeder.join();
        // Header bytes are not frame data; frames counted from the byte total.
        let per = (frame_len + 12) as u64;
        frames += bytes / per;
        bytes = frames * frame_len as u64;
        (frames, bytes, elapsed, cpu)
    }
}

/// Sends `len`-byte frames into the tap through AF_PACKET until `stop`.
fn spawn_feeder(tap: &str, len: usize, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
    let ifindex: i32 = std::fs::read_to_string(format!("/sys/class/net/{tap}/ifindex"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    std::thread::spawn(move || {
        // SAFETY: plain socket creation.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) };
        assert!(fd >= 0, "AF_PACKET: {}", std::io::Error::last_os_error());
        // SAFETY: fd is fresh.
        let sock = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: sockaddr_ll is plain data.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_ifindex = ifindex;
        addr.sll_protocol = 0x0800u16.to_be();
        let mut frame = vec![0u8; len];
        frame[0..6].copy_from_slice(&[0x52, 0x54, 0, 0xbe, 0x4c, 1]);
        frame[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 2]);
        frame[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
        while !stop.load(Ordering::Relaxed) {
            for _ in 0..64 {
                // SAFETY: sends from a live buffer to a valid sockaddr_ll.
                unsafe {
                    libc::sendto(
                        sock.as_raw_fd(),
                        frame.as_ptr().cast(),
                        frame.len(),
                        // Never block: with the device stopped the tap queue stays full.
                        libc::MSG_DONTWAIT,
                        (&addr as *const libc::sockaddr_ll).cast(),
                        std::mem::size_of::<libc::sockaddr_ll>() as u32,
                    )
                };
            }
        }
    })
}

/// 64 B or 64 KiB TCP/IPv4 frame with vnet header; the big one carries a TSO header.
fn tx_frame(payload_total: usize, tso: bool) -> Vec<u8> {
    let mut f = vec![0u8; 12 + payload_total];
    if tso {
        f[0] = 1; // NEEDS_CSUM
        f[1] = 1; // GSO_TCPV4
        f[2..4].copy_from_slice(&54u16.to_le_bytes()); // hdr_len
        f[4..6].copy_from_slice(&1448u16.to_le_bytes()); // gso_size
        f[6..8].copy_from_slice(&34u16.to_le_bytes()); // csum_start
        f[8..10].copy_from_slice(&16u16.to_le_bytes()); // csum_offset
    }
    let e = &mut f[12..];
    e[0..6].copy_from_slice(&[2, 0, 0, 0, 0, 9]);
    e[6..12].copy_from_slice(&[0x52, 0x54, 0, 0xbe, 0x4c, 1]);
    e[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    let ip_len = (payload_total - 14) as u16;
    e[14] = 0x45;
    e[16..18].copy_from_slice(&ip_len.to_be_bytes());
    e[22] = 64;
    e[23] = 6;
    e[26..30].copy_from_slice(&[10, 99, 0, 2]);
    e[30..34].copy_from_slice(&[10, 99, 0, 1]);
    e[46] = 0x50; // TCP data offset
    f
}

fn report(what: &str, (frames, bytes, wall, cpu): (u64, u64, Duration, Duration)) {
    let s = wall.as_secs_f64();
    let gbit = bytes as f64 * 8.0 / s / 1e9;
    let cpu_frac = cpu.as_secs_f64() / s;
    println!(
        "{what:<28} {:>10.0} frames/s {:>7.2} Gbit/s  device thread CPU {:>5.1}%  ({:.2} Gbit/s per core)",
        frames as f64 / s,
        gbit,
        cpu_frac * 100.0,
        if cpu_frac > 0.0 { gbit / cpu_frac } else { 0.0 }
    );
}

fn main() {
    let secs: f64 = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(2.0);
    // A fresh device and tap per case: each run leaves buffers in its rings.
    let tap = |i: u32| format!("fbench{}{i}", std::process::id() % 10_000);
    report(
        "TX 64 B frames",
        Bench::new(&tap(0)).tx(&tx_frame(64, false), secs),
    );
    report(
        "TX 64 KiB TSO frames",
        Bench::new(&tap(1)).tx(&tx_frame(65536 - 12, true), secs),
    );
    report("RX 64 B frames", Bench::new(&tap(2)).rx(64, secs));
    let mut b = Bench::new(&tap(3));
    // Large host→guest frames need a large tap MTU (no GSO on the AF_PACKET side).
    let _ = std::process::Command::new("ip")
        .args(["link", "set", &tap(3), "mtu", "65000"])
        .status();
    report("RX 64 KiB frames (MTU 65000)", b.rx(65014, secs));
}
