//! `rng`: the first virtio-rng device (command line or DSDT): negotiate VERSION_1, read
//! `probe.rng_kib` KiB in 4 KiB requests (four in flight per notification, a short answer
//! re-requested for the rest of its block), then check the bytes in ring 3 with
//! [`ferry_probe::entropy`]: at least 250 distinct byte values and no two 4 KiB blocks equal.
//! `probe.rng_rounds=N` repeats the read (0: until the VM ends), printing
//! `probe: rng: round R ok` after each round but the last, so a harness can snapshot or migrate
//! the guest while it reads.

use super::virtio::{Device, Queue, QueueMem};
use super::{tsc, user, Global, State};
use ferry_probe::entropy::{distinct_bytes, repeated_block, BLOCK};
use ferry_probe::fmt::LineBuf;
use ferry_probe::virtq::VIRTQ_DESC_F_WRITE as WRITE;

/// virtio device id of an entropy source.
const DEVICE_ID_RNG: u32 = 4;
/// Largest read per round (`probe.rng_kib` is at most 256).
const MAX_BYTES: usize = 256 << 10;
/// Requests per notification.
const INFLIGHT: usize = 4;
/// Fewest distinct byte values accepted in a round (16 KiB of random bytes miss one of the 256
/// values with a probability around 256 · e^-64).
const MIN_DISTINCT: u32 = 250;
/// Longest wait for one batch of requests (a rate-limited device may take a while).
const TIMEOUT_MS: u64 = 60_000;
/// Batches in a row that brought no byte at all before the test gives up.
const MAX_EMPTY_BATCHES: u32 = 16;

#[repr(C, align(4096))]
struct Buf([u8; MAX_BYTES]);

static BUF: Global<Buf> = Global::new(Buf([0; MAX_BYTES]));
static QMEM: Global<QueueMem> = Global::new(QueueMem([0; 4096]));

/// Runs the test on the first entropy device.
pub fn run(st: &State) {
    let Some(d) = st
        .cfg
        .virtio()
        .iter()
        .find_map(|dev| Device::probe(dev).filter(|(_, id)| *id == DEVICE_ID_RNG))
        .map(|(d, _)| d)
    else {
        super::fail_str("no virtio-rng device");
        return;
    };
    let mut l = LineBuf::new();
    match test_device(&d, st, &mut l) {
        Ok(()) => super::pass(&l),
        Err(reason) => {
            l.byte(b' ').str(reason);
            super::fail(&l);
        }
    }
    d.reset();
}

fn test_device(d: &Device, st: &State, l: &mut LineBuf) -> Result<(), &'static str> {
    d.negotiate(0)?;
    // SAFETY: QMEM is used by this one device; it is reset before the test ends.
    let mut q = d.queue(0, unsafe { &mut *QMEM.ptr() })?;
    d.driver_ok();
    let total = (st.cfg.rng_kib as usize * 1024).min(MAX_BYTES);
    let rounds = st.cfg.rng_rounds;
    let mut round = 1u64;
    let mut bytes = 0u64;
    let mut requests = 0u64;
    loop {
        requests += read_round(&mut q, total)?;
        bytes += total as u64;
        let mut check = CheckArgs {
            len: total,
            distinct: 0,
            repeated: 0,
        };
        user::call_with(check_bytes, &mut check);
        if check.distinct < MIN_DISTINCT {
            l.str("distinct=").dec(u64::from(check.distinct));
            return Err("too few distinct byte values");
        }
        if check.repeated != 0 {
            l.str("repeated_block=").dec(check.repeated);
            return Err("two 4 KiB blocks are equal");
        }
        if round == rounds {
            l.str("bytes=")
                .dec(bytes)
                .str(" requests=")
                .dec(requests)
                .str(" distinct=")
                .dec(u64::from(check.distinct))
                .str(" rounds=")
                .dec(round);
            return Ok(());
        }
        let mut line = super::line_for(b"rng");
        line.str("round ").dec(round).str(" ok");
        super::say(&line);
        round += 1;
    }
}

/// Fills the first `total` bytes of the buffer; returns the requests it took.
fn read_round(q: &mut Queue, total: usize) -> Result<u64, &'static str> {
    // The buffer is the whole (repr(C)) struct.
    let base = BUF.ptr() as u64;
    let blocks = total / BLOCK;
    // Bytes already filled at the start of each block (a device may answer with less).
    let mut filled = [0u32; MAX_BYTES / BLOCK];
    let inflight = INFLIGHT.min(usize::from(q.size()));
    let mut next = 0usize;
    let mut requests = 0u64;
    let mut empty = 0u32;
    while next < blocks {
        // The next `inflight` blocks not yet full.
        let mut batch = [0usize; INFLIGHT];
        let mut n = 0;
        let mut b = next;
        while n < inflight && b < blocks {
            if filled[b] < BLOCK as u32 {
                batch[n] = b;
                let addr = base + (b * BLOCK) as u64 + u64::from(filled[b]);
                q.set_desc(n as u16, addr, BLOCK as u32 - filled[b], WRITE, 0);
                q.push(n as u16);
                n += 1;
            }
            b += 1;
        }
        if n == 0 {
            break;
        }
        q.notify();
        let mut got = 0u64;
        let deadline = tsc::deadline_ms(TIMEOUT_MS);
        let mut done = 0;
        while done < n {
            match q.pop_used() {
                Some((id, len)) => {
                    let block = batch[usize::from(id) % n];
                    let want = BLOCK as u32 - filled[block];
                    if len > want {
                        return Err("device reports more bytes than the buffer holds");
                    }
                    filled[block] += len;
                    got += u64::from(len);
                    done += 1;
                }
                None if tsc::expired(deadline) => return Err("timeout"),
                None => {}
            }
        }
        requests += n as u64;
        empty = if got == 0 { empty + 1 } else { 0 };
        if empty == MAX_EMPTY_BATCHES {
            return Err("the device returns no bytes");
        }
        while next < blocks && filled[next] == BLOCK as u32 {
            next += 1;
        }
    }
    Ok(requests)
}

struct CheckArgs {
    len: usize,
    distinct: u32,
    /// 1 + the index of the second of two equal blocks, or 0.
    repeated: u64,
}

/// Ring 3: distinct byte values and repeated blocks in the first `len` bytes of the buffer.
extern "C" fn check_bytes(arg: u64) -> u64 {
    // SAFETY: `arg` is a `CheckArgs`; the device is idle (every request completed).
    let a = unsafe { user::args::<CheckArgs>(arg) };
    // SAFETY: as above; `len` is at most the buffer's size.
    let data = unsafe { core::slice::from_raw_parts(BUF.ptr().cast::<u8>(), a.len) };
    a.distinct = distinct_bytes(data);
    a.repeated = repeated_block(data).map_or(0, |(_, j)| j as u64 + 1);
    0
}
