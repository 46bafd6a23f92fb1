//! Entropy device benchmark (no vCPU): what the virtio-rng path delivers through its real event
//! loop, unlimited and rate limited.
//!
//! * Unlimited: requests of 512 B (Linux's virtio-rng driver asks for 512-byte buffers; its
//!   hw_random core reads through them), 4 KiB and 64 KiB, 64 in flight; the driver side
//!   re-posts each buffer as soon as it is used. Bytes/s, requests/s, loop-thread CPU.
//! * Limited: a bandwidth limit (4 KiB requests) and an ops limit (512 B requests) over
//!   `SECONDS` (default 10) of wall time; the delivered rate against the set one (the initial
//!   full bucket, a tenth of a second's worth, adds 1% over 10 s).
//!
//! Run: `cargo bench -p ferry-devices --bench entropy` (optionally `-- SECONDS`).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
use ferry_devices::rate_limiter::{RateLimiterConfig, TokenBucketConfig};
use ferry_devices::virtio::mmio::MmioTransport;
use ferry_devices::virtio::rng::Rng;
use ferry_devices::virtio::testing::{drive_to_driver_ok, TestDesc, TestDriver};
use ferry_devices::GuestMemory;
use vm_memory::GuestAddress;

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

/// Requests of `req` bytes, `depth` in flight, for `secs`. Returns (requests, bytes, wall, cpu).
fn run(
    limit: RateLimiterConfig,
    req: u32,
    depth: u64,
    secs: f64,
) -> (u64, u64, Duration, Duration) {
    const DATA: u64 = 0x10_0000;
    let mem = GuestMemory::from_ranges(&[(GuestAddress(0), 64 << 20)]).unwrap();
    let rng = Rng::new_shared().unwrap();
    rng.lock().unwrap().set_rate_limiter(&limit);
    let mut t = MmioTransport::new(mem.clone(), rng.clone()).unwrap();
    let mut drv = TestDriver::new(mem.clone(), 256, 0x1000);
    drive_to_driver_ok(&mut t, &drv, false);
    let kick = t.queue_notify_evts()[0].1.try_clone().unwrap();
    let mut em: Em = EventManager::new().unwrap();
    em.add_subscriber(rng.clone());
    em.run_with_timeout(10).unwrap();
    let heads: Vec<u16> = (0..depth)
        .map(|k| drv.write_chain(&[TestDesc::w(DATA + k * u64::from(req), req)]))
        .collect();
    let cpu0 = thread_cpu();
    let start = Instant::now();
    for &h in &heads {
        drv.push_avail(h);
    }
    kick.write(1).unwrap();
    let (mut done, mut bytes) = (0u64, 0u64);
    while start.elapsed().as_secs_f64() < secs {
        em.run_with_timeout(100).unwrap();
        let mut any = false;
        while let Some((head, len)) = drv.pop_used() {
            done += 1;
            bytes += u64::from(len);
            drv.push_avail(head as u16);
            any = true;
        }
        if any {
            kick.write(1).unwrap();
        }
    }
    let wall = start.elapsed();
    (done, bytes, wall, thread_cpu() - cpu0)
}

fn per_second(rate: u64) -> TokenBucketConfig {
    TokenBucketConfig {
        size: rate / 10,
        one_time_burst: 0,
        refill_time_ms: 100,
    }
}

fn main() {
    let secs: f64 = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(10.0);
    println!(
        "virtio-rng, unlimited (64 in flight, {:.0} s each):",
        secs.min(3.0)
    );
    for req in [512u32, 4096, 64 << 10] {
        let (n, bytes, wall, cpu) = run(RateLimiterConfig::default(), req, 64, secs.min(3.0));
        let w = wall.as_secs_f64();
        println!(
            "  {req:>6} B requests: {:>8.1} MiB/s  {:>9.0} requests/s  loop thread CPU {:.0}%",
            bytes as f64 / w / f64::from(1 << 20),
            n as f64 / w,
            cpu.as_secs_f64() / w * 100.0
        );
    }
    println!("virtio-rng, limited (over {secs:.0} s):");
    for (what, unit, set, limit, req) in [
        (
            "bandwidth 1 MB/s, 4 KiB requests",
            "B",
            1_000_000u64,
            RateLimiterConfig {
                bandwidth: Some(per_second(1_000_000)),
                ops: None,
            },
            4096u32,
        ),
        (
            "ops 2000/s, 512 B requests",
            "req",
            2000,
            RateLimiterConfig {
                bandwidth: None,
                ops: Some(per_second(2000)),
            },
            512,
        ),
    ] {
        let (n, bytes, wall, cpu) = run(limit, req, 64, secs);
        let got = if unit == "B" { bytes } else { n };
        let rate = got as f64 / wall.as_secs_f64();
        println!(
            "  {what:<34} set {set:>9} {unit}/s  delivered {rate:>11.0} {unit}/s  ({:+.2}%)  loop thread CPU {:.1}%",
            (rate / set as f64 - 1.0) * 100.0,
            cpu.as_secs_f64() / wall.as_secs_f64() * 100.0
        );
    }
}
