//! Snapshots: a state file (the same [`VmSnapshot`] migration sends, as JSON) and a memory file
//! (guest RAM, regions back to back, sparse: zero pages are holes). `ferry ctl snapshot --to DIR`
//! names them `DIR/vmstate` and `DIR/memory`. Restoring reads only the data extents of the memory
//! file.
//!
//! A `Diff` snapshot (Firecracker's `snapshot_type: "Diff"`, for a VM with `track_dirty_pages`)
//! writes only the pages changed since the previous snapshot of that VM, at their offsets, zero
//! pages included (as data, so they overwrite the base); every other page is a hole. Loading
//! applies the base file's extents and then each diff's, in order (`mem_diff_paths`); merging a
//! diff into its base offline, as Firecracker's tools do, gives the same memory file.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;

use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};

use ferry_arch::GuestMemory;

use crate::builder::BuildOptions;
use crate::controller::{VmController, VmState};
use crate::migration::dirty::{fetch_since_last_snapshot, DirtyBitmaps};
use crate::migration::memory::{is_zero, Residency};
use crate::vm_snapshot::VmSnapshot;
use crate::VmmError;

pub use ferry_api::ctl::{SNAPSHOT_MEMORY_FILE as MEMORY_FILE, SNAPSHOT_STATE_FILE as STATE_FILE};
const PAGE: usize = 4096;

/// Full (all memory) or diff (pages changed since the previous snapshot).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Full,
    Diff,
}

/// Writes a snapshot of the controller's VM, which must be paused (as Firecracker requires).
pub fn create(
    controller: &mut VmController,
    state_path: &Path,
    memory_path: &Path,
    kind: Kind,
) -> Result<(), VmmError> {
    if controller.state() != VmState::Paused {
        return Err(VmmError::InvalidState {
            state: controller.state().name(),
            action: "a snapshot (pause the VM first)",
        });
    }
    let tracking = controller.config().machine.track_dirty_pages;
    if kind == Kind::Diff && !tracking {
        return Err(VmmError::Config(
            "a Diff snapshot needs dirty page tracking: set track_dirty_pages in machine-config \
             (or in PUT /snapshot/load)"
                .into(),
        ));
    }
    if kind == Kind::Diff && !controller.diff_base_ready() {
        return Err(VmmError::Config(
            "a Diff snapshot holds the pages changed since this VM's last snapshot, and there is \
             none to build on (or a migration attempt has read the dirty log since): take a Full \
             snapshot first"
                .into(),
        ));
    }
    // Finish what the disks have in flight (and a request a rate limiter holds back) so the
    // saved rings hold every request either completed or not yet taken, as migration does.
    if let Some(virtio) = controller.virtio() {
        virtio.quiesce()?;
    }
    let snapshot = controller.save_snapshot()?;
    let memory = controller.memory().ok_or(VmmError::InvalidState {
        state: "not started",
        action: "a snapshot",
    })?;
    let file = File::create(state_path)
        .map_err(VmmError::io(format!("creating {}", state_path.display())))?;
    let mut out = BufWriter::new(file);
    serde_json::to_writer(&mut out, &snapshot)
        .map_err(|e| VmmError::Device(format!("writing the VM state: {e}")))?;
    out.flush()
        .map_err(VmmError::io(format!("writing {}", state_path.display())))?;
    let vm = controller.vm_fd().cloned().ok_or(VmmError::InvalidState {
        state: "not started",
        action: "a snapshot",
    })?;
    match kind {
        Kind::Full => {
            write_memory(memory, memory_path)?;
            if tracking {
                // The next diff is relative to this snapshot.
                fetch_since_last_snapshot(&vm, memory)?;
            }
        }
        Kind::Diff => {
            let dirty = fetch_since_last_snapshot(&vm, memory)?;
            write_dirty_memory(memory, memory_path, &dirty)?;
        }
    }
    controller.set_diff_base(tracking);
    Ok(())
}

/// Writes the pages set in `dirty` at their offsets (zero pages too); the rest stays a hole.
fn write_dirty_memory(
    memory: &GuestMemory,
    path: &Path,
    dirty: &DirtyBitmaps,
) -> Result<(), VmmError> {
    let io = || VmmError::io(format!("writing {}", path.display()));
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .map_err(io())?;
    let mut offset = 0u64;
    for (region, bitmap) in memory.iter().zip(dirty) {
        let base = region.as_ptr();
        let pages = region.len() as usize / PAGE;
        let is_dirty = |p: usize| bitmap.get(p / 64).is_some_and(|w| w & (1 << (p % 64)) != 0);
        let mut p = 0;
        while p < pages {
            if !is_dirty(p) {
                p += 1;
                continue;
            }
            let start = p;
            while p < pages && p - start < 256 && is_dirty(p) {
                p += 1;
            }
            let at = start * PAGE;
            // SAFETY: `start..p` pages lie inside the region's mapping; the VM is paused.
            let data = unsafe { std::slice::from_raw_parts(base.add(at), (p - start) * PAGE) };
            file.write_all_at(data, offset + at as u64).map_err(io())?;
        }
        offset += region.len();
    }
    file.set_len(offset).map_err(io())?;
    file.sync_all().map_err(io())
}

fn write_memory(memory: &GuestMemory, path: &Path) -> Result<(), VmmError> {
    let io = || VmmError::io(format!("writing {}", path.display()));
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .map_err(io())?;
    let mut residency = Residency::open();
    let mut flags = Vec::new();
    let mut offset = 0u64;
    for region in memory.iter() {
        let base = region.as_ptr();
        let pages = region.len() as usize / PAGE;
        let mut done = 0;
        while done < pages {
            let chunk = (pages - done).min(1 << 16);
            residency.may_hold_data(base as usize + done * PAGE, chunk, &mut flags);
            // Coalesce consecutive non-zero pages into one write.
            let mut i = 0;
            while i < chunk {
                let page_has_data = |j: usize| {
                    // SAFETY: inside the region's mapping; the VM is paused.
                    flags[j]
                        && !is_zero(unsafe {
                            std::slice::from_raw_parts(base.add((done + j) * PAGE), PAGE)
                        })
                };
                if !page_has_data(i) {
                    i += 1;
                    continue;
                }
                let start = i;
                while i < chunk && i - start < 256 && page_has_data(i) {
                    i += 1;
                }
                let at = (done + start) * PAGE;
                // SAFETY: as above; `start..i` pages lie inside the region.
                let data = unsafe { std::slice::from_raw_parts(base.add(at), (i - start) * PAGE) };
                file.write_all_at(data, offset + at as u64).map_err(io())?;
            }
            done += chunk;
        }
        offset += region.len();
    }
    file.set_len(offset).map_err(io())?;
    file.sync_all().map_err(io())
}

/// Reads a state file.
pub fn read_state(path: &Path) -> Result<VmSnapshot, VmmError> {
    let file = File::open(path).map_err(VmmError::io(format!("opening {}", path.display())))?;
    serde_json::from_reader(std::io::BufReader::new(file))
        .map_err(|e| VmmError::Config(format!("{} is not a ferry VM state: {e}", path.display())))
}

/// Builds a paused VM from a state and its memory file.
pub fn restore(
    memory_path: &Path,
    snapshot: &VmSnapshot,
    options: BuildOptions,
) -> Result<VmController, VmmError> {
    restore_chain(memory_path, &[], snapshot, options)
}

/// Builds a paused VM from a state, a base memory file and the memory files of diff snapshots
/// taken after it, applied in order.
pub fn restore_chain(
    memory_path: &Path,
    diff_paths: &[&Path],
    snapshot: &VmSnapshot,
    options: BuildOptions,
) -> Result<VmController, VmmError> {
    let open =
        |path: &Path| File::open(path).map_err(VmmError::io(format!("opening {}", path.display())));
    // Every file opens before anything is built: a missing diff fails fast.
    let mut files = vec![(open(memory_path)?, memory_path)];
    for path in diff_paths {
        files.push((open(path)?, path));
    }
    VmController::restore(snapshot, options, |memory| {
        files
            .iter()
            .try_for_each(|(file, path)| read_memory(memory, file, path))
    })
}

fn read_memory(memory: &GuestMemory, file: &File, path: &Path) -> Result<(), VmmError> {
    let io = || VmmError::io(format!("reading {}", path.display()));
    let total: u64 = memory.iter().map(|r| r.len()).sum();
    let size = file.metadata().map_err(io())?.len();
    if size != total {
        return Err(VmmError::Config(format!(
            "{} holds {size} bytes but the VM has {total} bytes of memory",
            path.display()
        )));
    }
    let mut offset = 0u64;
    for region in memory.iter() {
        let len = region.len();
        // SAFETY: the whole region is our private mapping; the VM has not run yet.
        let dst = unsafe { std::slice::from_raw_parts_mut(region.as_ptr(), len as usize) };
        let mut pos = 0u64;
        while pos < len {
            let Some((data, hole)) = next_extent(file, offset + pos, offset + len) else {
                break;
            };
            let start = (data - offset) as usize;
            let end = (hole - offset) as usize;
            file.read_exact_at(&mut dst[start..end], data)
                .map_err(io())?;
            pos = hole - offset;
        }
        offset += len;
    }
    Ok(())
}

/// The next data extent `[data, hole)` at or after `from`, clipped to `limit`.
fn next_extent(file: &File, from: u64, limit: u64) -> Option<(u64, u64)> {
    let fd = file.as_raw_fd();
    // SAFETY: lseek on our own fd; errors (ENXIO past the last data) end the walk.
    let data = unsafe { libc::lseek(fd, from as libc::off_t, libc::SEEK_DATA) };
    if data < 0 || data as u64 >= limit {
        return None;
    }
    let hole = unsafe { libc::lseek(fd, data, libc::SEEK_HOLE) };
    let hole = if hole < 0 {
        limit
    } else {
        (hole as u64).min(limit)
    };
    Some((data as u64, hole))
}
