//! `dirty`: prints `probe: dirty: running`, then loops forever in ring 3 stamping every 4 KiB
//! page of `probe.dirty_mib` MiB at [`DIRTY_REGION_GPA`], optionally paced with the TSC to
//! `probe.dirty_rate_mib` MiB/s. The status page at [`DIRTY_COUNTER_GPA`] is documented in
//! lib.rs. It never returns: the harness kills or migrates the VM.

use super::{fail_str, line_for, say, tsc, user, State};
use ferry_probe::{DIRTY_COUNTER_GPA, DIRTY_MAGIC, DIRTY_REGION_GPA};

/// Pages per pacing step (64 KiB).
const BATCH_PAGES: u64 = 16;

struct DirtyArgs {
    pages: u64,
    mib: u64,
    rate_mib: u64,
    /// TSC ticks per batch (0 = unpaced).
    ticks_per_batch: u64,
    /// Most pacing debt kept, in ticks (after a pause the loop does not burst for long).
    max_debt: u64,
}

/// Runs the test (returns only on a configuration error).
pub fn run(st: &State) {
    let Some(mib) = st.cfg.dirty_mib.filter(|&m| m > 0) else {
        fail_str("probe.dirty_mib missing");
        return;
    };
    let bytes = mib << 20;
    if !st.boot.is_ram(DIRTY_COUNTER_GPA, 4096 + bytes) {
        fail_str("region not in RAM");
        return;
    }
    let rate = st.cfg.dirty_rate_mib.unwrap_or(0);
    let ticks_per_batch = if rate == 0 {
        0
    } else {
        tsc::khz() * 1000 / (rate * 256 / BATCH_PAGES).max(1)
    };
    let mut args = DirtyArgs {
        pages: bytes >> 12,
        mib,
        rate_mib: rate,
        ticks_per_batch,
        max_debt: tsc::ms_to_ticks(100),
    };
    let mut l = line_for(b"dirty");
    l.str("running");
    say(&l);
    user::call_with(dirty_loop, &mut args);
}

/// Ring 3: the never-ending dirtying loop.
extern "C" fn dirty_loop(arg: u64) -> u64 {
    // SAFETY: `arg` is the `DirtyArgs` on the (never unwound) ring-0 stack.
    let a = unsafe { user::args::<DirtyArgs>(arg) };
    let status = DIRTY_COUNTER_GPA as *mut u64;
    // SAFETY: the status page and region were checked to be RAM; the identity map is
    // user-accessible.
    unsafe {
        status.write_volatile(0);
        status.add(1).write_volatile(DIRTY_MAGIC);
        status.add(2).write_volatile(a.mib);
        status.add(3).write_volatile(a.rate_mib);
    }
    let mut start = super::io::rdtsc();
    let mut batches = 0u64;
    let mut pass = 1u64;
    loop {
        for page in 0..a.pages {
            let p = (DIRTY_REGION_GPA + (page << 12)) as *mut u64;
            // SAFETY: inside the checked region.
            unsafe {
                p.write_volatile(page);
                p.add(1).write_volatile(pass);
            }
            if a.ticks_per_batch != 0 && (page + 1) % BATCH_PAGES == 0 {
                batches += 1;
                let due = batches * a.ticks_per_batch;
                let now = super::io::rdtsc().wrapping_sub(start);
                if now > due + a.max_debt {
                    start = start.wrapping_add(now - due - a.max_debt);
                }
                while super::io::rdtsc().wrapping_sub(start) < due {
                    core::hint::spin_loop();
                }
            }
        }
        // SAFETY: status page checked above.
        unsafe { status.write_volatile(pass) };
        pass += 1;
    }
}
