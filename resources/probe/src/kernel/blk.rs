//! `blk`: for each virtio-blk device on the command line (`virtio_mmio.device=`), negotiate
//! VERSION_1 (+RO, BLK_SIZE, FLUSH), read the capacity, optionally write the
//! [`ferry_probe::pattern`] over the first `probe.blk_kib` KiB (`probe.blk_write=SEED`), flush,
//! read the range back (verifying the pattern when written) and report its CRC-32.
//! `probe.blk_rounds=N` repeats the write mode N times (0: until the VM ends) with the seed
//! advancing by one a round, prints `probe: blk: round R verified` after each and keeps the count
//! in the status page at [`ferry_probe::BLK_STATUS_GPA`], so a harness can migrate or snapshot the
//! guest while its disk I/O is certainly in progress and check the disk against the count.
//!
//! Requests are 64 KiB, four in flight per notification; pattern generation, verification and
//! the CRC run in ring 3, so ring 0 only builds descriptors and polls the used ring.

use super::virtio::{Device, Queue, QueueMem};
use super::{tsc, user, Global, State};
use core::ptr::addr_of_mut;
use ferry_probe::cmdline::ProbeConfig;
use ferry_probe::crc32::Crc32;
use ferry_probe::fmt::LineBuf;
use ferry_probe::virtq::{VIRTQ_DESC_F_NEXT as NEXT, VIRTQ_DESC_F_WRITE as WRITE};
use ferry_probe::{BLK_ROUNDS_MAGIC, BLK_STATUS_GPA};

pub(super) const F_RO: u64 = 1 << 5;
pub(super) const F_BLK_SIZE: u64 = 1 << 6;
pub(super) const F_FLUSH: u64 = 1 << 9;
const T_IN: u32 = 0;
const T_OUT: u32 = 1;
const T_FLUSH: u32 = 4;
const S_OK: u8 = 0;
const S_IOERR: u8 = 1;
/// Bytes per request.
const REQ_BYTES: usize = 64 << 10;
/// Requests per notification.
const INFLIGHT: usize = 4;
/// Bytes per buffer round.
const CHUNK: usize = 1 << 20;
/// Longest wait for one round of requests.
const TIMEOUT_MS: u64 = 20_000;

#[repr(C)]
#[derive(Clone, Copy)]
struct ReqHdr {
    kind: u32,
    reserved: u32,
    sector: u64,
}

#[repr(C, align(4096))]
struct Bufs {
    data: [u8; CHUNK],
    hdr: [ReqHdr; INFLIGHT],
    status: [u8; INFLIGHT],
}

static BUFS: Global<Bufs> = Global::new(Bufs {
    data: [0; CHUNK],
    hdr: [ReqHdr {
        kind: 0,
        reserved: 0,
        sector: 0,
    }; INFLIGHT],
    status: [0; INFLIGHT],
});
pub(super) static QMEM: Global<QueueMem> = Global::new(QueueMem([0; 4096]));

fn bufs() -> *mut Bufs {
    BUFS.ptr()
}

/// Runs the test on every block device.
pub fn run(st: &State) {
    let mut ordinal = 0u64;
    for dev in st.cfg.virtio() {
        let Some((d, 2)) = Device::probe(dev) else {
            continue;
        };
        let mut l = LineBuf::new();
        l.str("dev=").dec(ordinal);
        let status_page = st.boot.is_ram(BLK_STATUS_GPA, 4096);
        match test_device(&d, &st.cfg, status_page, &mut l) {
            Ok(()) => super::pass(&l),
            Err(reason) => {
                l.byte(b' ').str(reason);
                super::fail(&l);
            }
        }
        d.reset();
        ordinal += 1;
    }
    if ordinal == 0 {
        super::fail_str("no virtio-blk device");
    }
}

fn test_device(
    d: &Device,
    cfg: &ProbeConfig,
    status_page: bool,
    l: &mut LineBuf,
) -> Result<(), &'static str> {
    let feats = d.negotiate(F_RO | F_BLK_SIZE | F_FLUSH)?;
    let sectors = u64::from(d.read(super::virtio::CONFIG))
        | u64::from(d.read(super::virtio::CONFIG + 4)) << 32;
    // SAFETY: QMEM is used by one device at a time; the previous one was reset.
    let mut q = d.queue(0, unsafe { &mut *QMEM.ptr() })?;
    d.driver_ok();
    let ro = feats & F_RO != 0;
    let total = (cfg.blk_kib.saturating_mul(1024)).min(sectors.saturating_mul(512));
    let rounds = match cfg.blk_write {
        Some(_) => cfg.blk_rounds,
        None => 1,
    };
    let report_rounds = rounds != 1;
    if report_rounds && !status_page {
        return Err("round status page not in RAM");
    }
    let status = BLK_STATUS_GPA as *mut u64;
    let mut round = 1u64;
    loop {
        let seed = cfg.blk_write.map(|s| s.wrapping_add(round - 1));
        if report_rounds && round == 1 {
            // SAFETY: the page was checked to be RAM; nothing else uses it.
            unsafe {
                status.write_volatile(0);
                status.add(2).write_volatile(seed.unwrap_or(0));
                status.add(1).write_volatile(BLK_ROUNDS_MAGIC);
            }
        }
        let crc = one_round(&mut q, feats, ro, total, seed, l)?;
        // A read-only disk refuses the first write: one round says all there is to say.
        if round == rounds || crc.rejected {
            l.str(" sectors=")
                .dec(sectors)
                .str(" crc32=")
                .hex_fixed(u64::from(crc.crc), 8);
            l.str(" ro=").dec(u64::from(ro));
            if crc.rejected {
                l.str(" rejected_write=1");
            }
            return Ok(());
        }
        if report_rounds {
            // SAFETY: as above. Written only after the round's read-back verified.
            unsafe { status.write_volatile(round) };
            let mut line = super::line_for(b"blk");
            line.str("round ").dec(round).str(" verified");
            super::say(&line);
        }
        round += 1;
    }
}

/// What one round found: the CRC-32 of the range read back, and whether a write was refused.
pub(super) struct RoundResult {
    pub(super) crc: u32,
    rejected: bool,
}

/// Writes the pattern of `seed` (when given) over `total` bytes, flushes, reads the range back,
/// verifies it and returns its CRC-32.
pub(super) fn one_round(
    q: &mut Queue,
    feats: u64,
    ro: bool,
    total: u64,
    seed: Option<u64>,
    l: &mut LineBuf,
) -> Result<RoundResult, &'static str> {
    let mut rejected = false;
    let mut wrote = None;
    if let Some(seed) = seed {
        let mut off = 0;
        while off < total {
            let len = (total - off).min(CHUNK as u64) as usize;
            let mut f = FillArgs {
                seed,
                offset: off,
                len,
                mismatch: 0,
            };
            user::call_with(fill, &mut f);
            match transfer(q, T_OUT, off, len)? {
                S_OK if ro => return Err("write to read-only disk succeeded"),
                S_OK => {}
                S_IOERR if ro => {
                    rejected = true;
                    break;
                }
                _ => return Err("write failed"),
            }
            off += len as u64;
        }
        if !rejected {
            if feats & F_FLUSH != 0 && flush(q)? != S_OK {
                return Err("flush failed");
            }
            wrote = Some(seed);
        }
    }
    let mut crc = user::CrcArgs {
        crc: Crc32::new(),
        ptr: core::ptr::null(),
        len: 0,
    };
    let mut off = 0;
    while off < total {
        let len = (total - off).min(CHUNK as u64) as usize;
        if transfer(q, T_IN, off, len)? != S_OK {
            return Err("read failed");
        }
        // SAFETY: the device finished writing the buffer (its requests completed).
        crc.ptr = unsafe { addr_of_mut!((*bufs()).data) } as *const u8;
        crc.len = len;
        user::call_with(user::crc_update, &mut crc);
        if let Some(seed) = wrote {
            let mut v = FillArgs {
                seed,
                offset: off,
                len,
                mismatch: 0,
            };
            user::call_with(verify, &mut v);
            if v.mismatch != u64::MAX {
                l.str(" mismatch_at=").dec(v.mismatch);
                return Err("read-back differs from the written pattern");
            }
        }
        off += len as u64;
    }
    Ok(RoundResult {
        crc: crc.crc.finish(),
        rejected,
    })
}

/// Waits for `n` completions on `q`.
fn wait(q: &mut Queue, n: usize) -> Result<(), &'static str> {
    let deadline = tsc::deadline_ms(TIMEOUT_MS);
    let mut done = 0;
    while done < n {
        if q.pop_used().is_some() {
            done += 1;
        } else if tsc::expired(deadline) {
            return Err("timeout");
        }
    }
    Ok(())
}

/// Transfers `len` bytes between the buffer and disk byte offset `off` (`kind` IN or OUT).
/// Returns the first non-OK request status, or OK.
fn transfer(q: &mut Queue, kind: u32, off: u64, len: usize) -> Result<u8, &'static str> {
    let b = bufs();
    let inflight = INFLIGHT.min(usize::from(q.size()) / 3);
    if inflight == 0 {
        return Err("queue too small");
    }
    let data_flags = if kind == T_IN { NEXT | WRITE } else { NEXT };
    let mut result = S_OK;
    let mut done = 0;
    while done < len {
        let mut n = 0;
        while n < inflight && done < len {
            let l = (len - done).min(REQ_BYTES);
            let head = (3 * n) as u16;
            // SAFETY: slot `n` is idle (the previous round completed).
            unsafe {
                (*b).hdr[n] = ReqHdr {
                    kind,
                    reserved: 0,
                    sector: (off + done as u64) / 512,
                };
                (*b).status[n] = 0xff;
                q.set_desc(head, addr_of_mut!((*b).hdr[n]) as u64, 16, NEXT, head + 1);
                q.set_desc(
                    head + 1,
                    addr_of_mut!((*b).data[done]) as u64,
                    l as u32,
                    data_flags,
                    head + 2,
                );
                q.set_desc(head + 2, addr_of_mut!((*b).status[n]) as u64, 1, WRITE, 0);
            }
            q.push(head);
            n += 1;
            done += l;
        }
        q.notify();
        wait(q, n)?;
        for s in 0..n {
            // SAFETY: the device wrote the status before publishing the used element.
            let status = unsafe { addr_of_mut!((*b).status[s]).read_volatile() };
            if status != S_OK && result == S_OK {
                result = status;
            }
        }
    }
    Ok(result)
}

/// Issues a FLUSH and returns its status.
fn flush(q: &mut Queue) -> Result<u8, &'static str> {
    let b = bufs();
    // SAFETY: slot 0 is idle.
    unsafe {
        (*b).hdr[0] = ReqHdr {
            kind: T_FLUSH,
            reserved: 0,
            sector: 0,
        };
        (*b).status[0] = 0xff;
        q.set_desc(0, addr_of_mut!((*b).hdr[0]) as u64, 16, NEXT, 1);
        q.set_desc(1, addr_of_mut!((*b).status[0]) as u64, 1, WRITE, 0);
    }
    q.push(0);
    q.notify();
    wait(q, 1)?;
    // SAFETY: completed.
    Ok(unsafe { addr_of_mut!((*b).status[0]).read_volatile() })
}

struct FillArgs {
    seed: u64,
    offset: u64,
    len: usize,
    mismatch: u64,
}

/// Ring 3: writes the pattern for disk bytes `offset..offset+len` into the data buffer.
extern "C" fn fill(arg: u64) -> u64 {
    // SAFETY: `arg` is a `FillArgs`; the buffer is idle while ring 3 runs.
    let a = unsafe { user::args::<FillArgs>(arg) };
    let data = unsafe {
        core::slice::from_raw_parts_mut(addr_of_mut!((*bufs()).data).cast::<u8>(), a.len)
    };
    ferry_probe::pattern::fill_words(a.seed, a.offset, data);
    0
}

/// Ring 3: sets `mismatch` to the first buffer offset that differs from the pattern, or
/// `u64::MAX`.
extern "C" fn verify(arg: u64) -> u64 {
    // SAFETY: as for `fill`.
    let a = unsafe { user::args::<FillArgs>(arg) };
    let data =
        unsafe { core::slice::from_raw_parts(addr_of_mut!((*bufs()).data).cast::<u8>(), a.len) };
    a.mismatch = ferry_probe::pattern::first_mismatch(a.seed, a.offset, data)
        .map_or(u64::MAX, |m| a.offset + m as u64);
    0
}
