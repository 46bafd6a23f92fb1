//! `balloon`: a minimal virtio-balloon driver. It touches its pool of `probe.balloon_mib` MiB at
//! [`DIRTY_REGION_GPA`] (so the host backs it), says `probe: balloon: ready pool=N`, then
//! follows the device's `num_pages`: inflating gives pages of the pool (top down) on the inflate
//! queue, deflating takes them back on the deflate queue, each change written to `actual` and
//! reported as `probe: balloon: actual N`. With VIRTIO_BALLOON_F_STATS_VQ it keeps one
//! statistics buffer in the statistics queue and refills it each time the device gives it back.
//! The test passes once the balloon went up and came back to 0, and fails when nothing happens
//! for `probe.blk_change_s` seconds (default 120).

use super::virtio::{Device, Queue, QueueMem, CONFIG};
use super::{tsc, Global, State};
use ferry_probe::balloon::{encode_stats, step, Step, PFNS_PER_REQUEST, STATS_BYTES};
use ferry_probe::fmt::LineBuf;
use ferry_probe::DIRTY_REGION_GPA;

/// virtio device id of a memory balloon.
const DEVICE_ID_BALLOON: u32 = 5;
const F_STATS_VQ: u64 = 1 << 1;
/// Longest wait for the device to complete one request.
const REQUEST_TIMEOUT_MS: u64 = 10_000;

#[repr(C, align(4096))]
struct Pfns([u32; PFNS_PER_REQUEST as usize]);

#[repr(C, align(64))]
struct Stats([u8; STATS_BYTES]);

static PFNS: Global<Pfns> = Global::new(Pfns([0; PFNS_PER_REQUEST as usize]));
static STATS: Global<Stats> = Global::new(Stats([0; STATS_BYTES]));
static QMEM: [Global<QueueMem>; 3] = [
    Global::new(QueueMem([0; 4096])),
    Global::new(QueueMem([0; 4096])),
    Global::new(QueueMem([0; 4096])),
];

/// Runs the test on the first balloon device.
pub fn run(st: &State) {
    let Some(d) = st
        .cfg
        .virtio()
        .iter()
        .find_map(|dev| Device::probe(dev).filter(|(_, id)| *id == DEVICE_ID_BALLOON))
        .map(|(d, _)| d)
    else {
        super::fail_str("no virtio-balloon device");
        return;
    };
    let mut l = LineBuf::new();
    match drive(&d, st, &mut l) {
        Ok(()) => super::pass(&l),
        Err(reason) => {
            l.byte(b' ').str(reason);
            super::fail(&l);
        }
    }
    d.reset();
}

struct Driver {
    inflate: Queue,
    deflate: Queue,
    stats: Option<Queue>,
    pool_pages: u32,
    actual: u32,
    refills: u64,
}

fn drive(d: &Device, st: &State, l: &mut LineBuf) -> Result<(), &'static str> {
    let pool_bytes = st.cfg.balloon_mib << 20;
    if !st.boot.is_ram(DIRTY_REGION_GPA, pool_bytes) {
        return Err("pool not in RAM");
    }
    let accepted = d.negotiate(F_STATS_VQ)?;
    // SAFETY: each QMEM page is used by one queue of this one device, reset before returning.
    let mut drv = Driver {
        inflate: d.queue(0, unsafe { &mut *QMEM[0].ptr() })?,
        deflate: d.queue(1, unsafe { &mut *QMEM[1].ptr() })?,
        stats: if accepted & F_STATS_VQ != 0 {
            Some(d.queue(2, unsafe { &mut *QMEM[2].ptr() })?)
        } else {
            None
        },
        pool_pages: (pool_bytes >> 12) as u32,
        actual: 0,
        refills: 0,
    };
    // Make the pool resident, so the host's memory use shows what inflating gives back.
    for page in 0..u64::from(drv.pool_pages) {
        let p = (DIRTY_REGION_GPA + (page << 12)) as *mut u64;
        // SAFETY: inside the pool, checked to be RAM and identity-mapped.
        unsafe { p.write_volatile(page | 1) };
    }
    d.driver_ok();
    if drv.stats.is_some() {
        drv.send_stats();
    }
    let mut line = super::line_for(b"balloon");
    line.str("ready pool=").dec(u64::from(drv.pool_pages));
    super::say(&line);
    let quiet_ms = st.cfg.blk_change_s.saturating_mul(1000);
    let mut deadline = tsc::deadline_ms(quiet_ms);
    let mut peak = 0u32;
    loop {
        drv.poll_stats();
        let target = d.read(CONFIG);
        match step(target, drv.actual, drv.pool_pages) {
            Step::Inflate(n) => drv.inflate_pages(d, n)?,
            Step::Deflate(n) => drv.deflate_pages(d, n)?,
            Step::Idle => {
                if peak > 0 && drv.actual == 0 {
                    l.str("peak_pages=")
                        .dec(u64::from(peak))
                        .str(" stats_refills=")
                        .dec(drv.refills);
                    return Ok(());
                }
                if tsc::expired(deadline) {
                    return Err("timeout waiting for a new target");
                }
                core::hint::spin_loop();
                continue;
            }
        }
        peak = peak.max(drv.actual);
        deadline = tsc::deadline_ms(quiet_ms);
        // Report once the balloon reached what it can reach for now.
        if step(d.read(CONFIG), drv.actual, drv.pool_pages) == Step::Idle {
            let mut line = super::line_for(b"balloon");
            line.str("actual ").dec(u64::from(drv.actual));
            super::say(&line);
        }
    }
}

impl Driver {
    /// Pfn of the pool's `i`-th page from the top (the balloon grows downwards).
    fn pfn(&self, i: u32) -> u32 {
        ((DIRTY_REGION_GPA >> 12) as u32) + self.pool_pages - 1 - i
    }

    fn inflate_pages(&mut self, d: &Device, n: u32) -> Result<(), &'static str> {
        for k in 0..n {
            let pfn = self.pfn(self.actual + k);
            // Touch it once more: the page is resident when handed over.
            let p = (u64::from(pfn) << 12) as *mut u64;
            // SAFETY: inside the pool (checked RAM); nobody else uses it.
            unsafe { p.write_volatile(u64::from(pfn)) };
            // SAFETY: PFNS is this driver's; the device reads it only while the request runs.
            unsafe { (*PFNS.ptr()).0[k as usize] = pfn };
        }
        request(&mut self.inflate, n)?;
        self.actual += n;
        d.write(CONFIG + 4, self.actual);
        Ok(())
    }

    fn deflate_pages(&mut self, d: &Device, n: u32) -> Result<(), &'static str> {
        for k in 0..n {
            let pfn = self.pfn(self.actual - 1 - k);
            // SAFETY: as in `inflate_pages`.
            unsafe { (*PFNS.ptr()).0[k as usize] = pfn };
        }
        request(&mut self.deflate, n)?;
        self.actual -= n;
        d.write(CONFIG + 4, self.actual);
        // The page is the probe's again: writing it must work (a fresh zero page on the host).
        let p = (u64::from(self.pfn(self.actual)) << 12) as *mut u64;
        // SAFETY: inside the pool.
        unsafe { p.write_volatile(7) };
        Ok(())
    }

    /// Puts the statistics buffer, freshly filled, in the statistics queue.
    fn send_stats(&mut self) {
        let free = u64::from(self.pool_pages - self.actual) << 12;
        let total = u64::from(self.pool_pages) << 12;
        // SAFETY: STATS is this driver's; the device holds it only while it is in the queue.
        encode_stats(
            unsafe { &mut (*STATS.ptr()).0 },
            [self.refills, free, total],
        );
        if let Some(q) = self.stats.as_mut() {
            q.set_desc(0, STATS.ptr() as u64, STATS_BYTES as u32, 0, 0);
            q.push(0);
            q.notify();
        }
    }

    /// The device gave the statistics buffer back: send fresh statistics.
    fn poll_stats(&mut self) {
        if let Some(q) = self.stats.as_mut() {
            if q.pop_used().is_some() {
                self.refills += 1;
                self.send_stats();
            }
        }
    }
}

/// Sends the first `n` pfns of PFNS as one request and waits until the device completed it.
fn request(q: &mut Queue, n: u32) -> Result<(), &'static str> {
    q.set_desc(0, PFNS.ptr() as u64, n * 4, 0, 0);
    q.push(0);
    q.notify();
    let deadline = tsc::deadline_ms(REQUEST_TIMEOUT_MS);
    loop {
        if q.pop_used().is_some() {
            return Ok(());
        }
        if tsc::expired(deadline) {
            return Err("timeout waiting for the device");
        }
        core::hint::spin_loop();
    }
}
