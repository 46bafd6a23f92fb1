//! Page frame numbers from the guest → validated, coalesced guest-physical ranges → memory given
//! back to the host.
//!
//! The guest controls every pfn: one outside guest RAM (or in the MMIO hole) is skipped and
//! counted, never used to compute a host address. Valid pfns of a batch are sorted and merged so
//! the host pays one `madvise` per contiguous range instead of one per 4 KiB page.
//!
//! How memory is released depends on how ferry mapped it (`vmm/src/memory.rs`):
//! * anonymous private memory (the default, and `huge_pages: "transparent"`):
//!   `MADV_DONTNEED`. The pages are freed at once and read as zero afterwards; a transparent
//!   huge page is split first by the kernel.
//! * hugetlbfs 2 MiB pages (`huge_pages: "2M"`): only whole, 2 MiB-aligned huge pages can be
//!   dropped. The parts of a range that do not cover a whole huge page stay resident: inflating
//!   scattered 4 KiB pages then frees nothing on the host (the guest still cannot use them), as
//!   on Firecracker. The balloon's `actual` is what the guest gave, not what the host freed.
//! * a shared or file-backed mapping (not used by ferry today): `MADV_REMOVE`, which punches a
//!   hole in the backing file so the memory is really returned.

use std::io;

use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

use super::config::{PAGE_SHIFT, PAGE_SIZE};
use crate::GuestMemory;

/// Size of a hugetlbfs page ferry maps.
const HUGE_PAGE: u64 = 2 << 20;

/// A contiguous run of guest-physical memory, page aligned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageRange {
    pub gpa: u64,
    pub len: u64,
}

/// Whether the 4 KiB page `pfn` lies entirely in guest RAM. Regions start and end on page
/// boundaries, so the page's first byte decides.
pub fn pfn_in_memory(mem: &GuestMemory, pfn: u32) -> bool {
    mem.find_region(GuestAddress(u64::from(pfn) << PAGE_SHIFT))
        .is_some()
}

/// Sorts `pfns`, drops duplicates and appends the contiguous runs to `out` (cleared first).
/// Runs are not merged across a region boundary here; [`release`] splits them anyway.
pub fn coalesce(pfns: &mut [u32], out: &mut Vec<PageRange>) {
    out.clear();
    pfns.sort_unstable();
    let mut iter = pfns.iter().copied();
    let Some(first) = iter.next() else {
        return;
    };
    let (mut start, mut last) = (first, first);
    for pfn in iter {
        if pfn == last {
            continue;
        }
        if u64::from(pfn) == u64::from(last) + 1 {
            last = pfn;
            continue;
        }
        out.push(run(start, last));
        (start, last) = (pfn, pfn);
    }
    out.push(run(start, last));
}

fn run(first: u32, last: u32) -> PageRange {
    PageRange {
        gpa: u64::from(first) << PAGE_SHIFT,
        len: (u64::from(last) - u64::from(first) + 1) * PAGE_SIZE,
    }
}

/// What [`release`] did with a range.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Released {
    /// Bytes handed back to the host.
    pub bytes: u64,
    /// Bytes that stay resident: the part of a hugetlbfs-backed range that is not a whole
    /// huge page, or a part outside guest memory.
    pub kept: u64,
}

/// Gives the host the memory behind `range` (see the module docs for how, per backing). The
/// contents read as zero afterwards (or, for the kept parts of huge pages, are unchanged). A
/// failed `madvise` is an error for the caller to count; what was released before stays so.
pub fn release(mem: &GuestMemory, range: PageRange) -> io::Result<Released> {
    let mut done = Released::default();
    let end = range.gpa.saturating_add(range.len);
    let mut gpa = range.gpa;
    while gpa < end {
        let Some(region) = mem.find_region(GuestAddress(gpa)) else {
            // Callers validate every pfn; a gap here means a region map change.
            done.kept += end - gpa;
            break;
        };
        let region_start = region.start_addr().0;
        let region_end = region_start + region.len();
        let part_end = end.min(region_end);
        let offset = gpa - region_start;
        let len = part_end - gpa;
        let (advise_off, advise_len, advice) = if region.is_hugetlbfs() == Some(true) {
            let (first, n) = whole_huge_pages(offset, len);
            (first, n, libc::MADV_DONTNEED)
        } else if region.file_offset().is_some() {
            (offset, len, libc::MADV_REMOVE)
        } else {
            (offset, len, libc::MADV_DONTNEED)
        };
        if advise_len > 0 {
            let base = region.as_ptr();
            // SAFETY: `advise_off + advise_len <= region.len()` (clipped to the region above),
            // so the advice covers only this region's mapping, which ferry owns for the VM's
            // life. Dropping pages of guest RAM is what the guest asked for by inflating; the
            // mapping itself stays, and later accesses fault in zero pages.
            let rc = unsafe {
                libc::madvise(
                    base.add(advise_off as usize).cast(),
                    advise_len as usize,
                    advice,
                )
            };
            if rc != 0 {
                return Err(io::Error::last_os_error());
            }
        }
        done.bytes += advise_len;
        done.kept += len - advise_len;
        gpa = part_end;
    }
    Ok(done)
}

/// The whole 2 MiB pages inside `[offset, offset + len)` of a hugetlbfs region (offsets from
/// the region's start, which is huge-page aligned): `(start, len)`, `len` 0 when there is none.
fn whole_huge_pages(offset: u64, len: u64) -> (u64, u64) {
    let first = offset.div_ceil(HUGE_PAGE) * HUGE_PAGE;
    let last = ((offset + len) / HUGE_PAGE) * HUGE_PAGE;
    (first, last.saturating_sub(first))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hugetlbfs_ranges_shrink_to_whole_huge_pages() {
        const M: u64 = 1 << 20;
        // A 4 KiB page, or anything short of a whole aligned huge page: nothing.
        assert_eq!(whole_huge_pages(4096, 4096).1, 0);
        assert_eq!(whole_huge_pages(M, 2 * M).1, 0);
        assert_eq!(whole_huge_pages(0, 2 * M - 4096).1, 0);
        // Exactly one, and the aligned middle of a longer run.
        assert_eq!(whole_huge_pages(2 * M, 2 * M), (2 * M, 2 * M));
        assert_eq!(whole_huge_pages(M, 6 * M), (2 * M, 4 * M));
    }

    fn ranges(mut pfns: Vec<u32>) -> Vec<(u64, u64)> {
        let mut out = Vec::new();
        coalesce(&mut pfns, &mut out);
        out.iter().map(|r| (r.gpa >> 12, r.len >> 12)).collect()
    }

    #[test]
    fn coalesces_sorted_unsorted_and_duplicate_pfns() {
        assert_eq!(ranges(vec![]), vec![]);
        assert_eq!(ranges(vec![7]), vec![(7, 1)]);
        assert_eq!(ranges(vec![3, 1, 2, 10, 9, 2, 3]), vec![(1, 3), (9, 2)]);
        // The largest pfns do not overflow.
        assert_eq!(
            ranges(vec![u32::MAX, u32::MAX - 1, 0]),
            vec![(0, 1), (u64::from(u32::MAX) - 1, 2)]
        );
    }

    #[test]
    fn validates_pfns_against_guest_memory() {
        let mem = GuestMemory::from_ranges(&[
            (GuestAddress(0), 1 << 20),
            (GuestAddress(4 << 20), 1 << 20),
        ])
        .unwrap();
        assert!(pfn_in_memory(&mem, 0));
        assert!(pfn_in_memory(&mem, 255));
        assert!(!pfn_in_memory(&mem, 256), "in the gap between regions");
        assert!(pfn_in_memory(&mem, 1024));
        assert!(!pfn_in_memory(&mem, 1280), "past the end");
        assert!(!pfn_in_memory(&mem, u32::MAX));
    }

    #[test]
    fn released_pages_read_as_zero_and_ranges_split_at_regions() {
        use vm_memory::Bytes;
        let mem = GuestMemory::from_ranges(&[
            (GuestAddress(0), 1 << 20),
            (GuestAddress(1 << 20), 1 << 20),
        ])
        .unwrap();
        mem.write_slice(&[0xaa; 3 * 4096], GuestAddress(0xff000))
            .unwrap();
        // Three pages straddling the two regions.
        let r = release(
            &mem,
            PageRange {
                gpa: 0xff000,
                len: 3 * 4096,
            },
        )
        .unwrap();
        assert_eq!(
            r,
            Released {
                bytes: 3 * 4096,
                kept: 0
            }
        );
        let mut back = [1u8; 3 * 4096];
        mem.read_slice(&mut back, GuestAddress(0xff000)).unwrap();
        assert!(back.iter().all(|&b| b == 0));
        // A range running past guest memory releases what is there and keeps the rest.
        let r = release(
            &mem,
            PageRange {
                gpa: (2 << 20) - 4096,
                len: 2 * 4096,
            },
        )
        .unwrap();
        assert_eq!(
            r,
            Released {
                bytes: 4096,
                kept: 4096
            }
        );
    }
}
