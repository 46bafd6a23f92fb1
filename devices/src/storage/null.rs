//! A disk that completes every request at once without touching data: for benchmarks of the
//! device path and for tests. Reads leave guest buffers unchanged.

use std::io;
use std::os::fd::RawFd;

use super::{Completion, DiskBackend, DiskInfo, DiskRequest, SubmitError};

/// Null disk of a given size.
pub struct NullDisk {
    info: DiskInfo,
    depth: usize,
    done: Vec<Completion>,
}

impl NullDisk {
    pub fn new(size_bytes: u64, depth: usize) -> Self {
        let depth = depth.max(1);
        Self {
            info: DiskInfo {
                size_bytes: size_bytes - size_bytes % 512,
                logical_block_size: 512,
                read_only: false,
                discard: true,
                write_zeroes: true,
            },
            depth,
            done: Vec::with_capacity(depth),
        }
    }
}

impl DiskBackend for NullDisk {
    fn info(&self) -> DiskInfo {
        self.info
    }

    fn refresh(&mut self) -> io::Result<DiskInfo> {
        Ok(self.info)
    }

    fn queue_depth(&self) -> usize {
        self.depth
    }

    fn submit(&mut self, req: &DiskRequest<'_>) -> Result<(), SubmitError> {
        if self.done.len() >= self.depth {
            return Err(SubmitError::Busy);
        }
        let len = u32::try_from(req.bufs.iter().map(|b| u64::from(b.len)).sum::<u64>())
            .unwrap_or(u32::MAX);
        self.done.push(Completion {
            tag: req.tag,
            result: Ok(len),
        });
        Ok(())
    }

    fn kick(&mut self) -> io::Result<()> {
        Ok(())
    }

    fn notifier(&self) -> Option<RawFd> {
        None
    }

    fn poll_completions(&mut self, out: &mut Vec<Completion>) {
        out.append(&mut self.done);
    }

    fn in_flight(&self) -> usize {
        self.done.len()
    }
}
