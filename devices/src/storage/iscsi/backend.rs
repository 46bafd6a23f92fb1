//! The [`DiskBackend`] front end: runs on the device thread, hands requests to the session
//! thread through the shared queues and collects completions when the notifier fires.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::session::QUEUE_DEPTH;
use super::shared::{lock, Shared};
use crate::storage::{Completion, DiskBackend, DiskInfo, DiskRequest, SubmitError};

/// An iSCSI LUN as a disk. Dropping it logs out and stops the session thread.
pub struct IscsiDisk {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
    info: DiskInfo,
    /// Free slot indices.
    free: Vec<u16>,
    /// Requests submitted since the last kick.
    unkicked: usize,
    /// How long refresh() waits for the session thread.
    refresh_timeout: Duration,
}

impl IscsiDisk {
    pub(crate) fn new(
        shared: Arc<Shared>,
        thread: JoinHandle<()>,
        info: DiskInfo,
        timeout: Duration,
    ) -> Self {
        IscsiDisk {
            shared,
            thread: Some(thread),
            info,
            free: (0..QUEUE_DEPTH as u16).rev().collect(),
            unkicked: 0,
            refresh_timeout: timeout + Duration::from_secs(10),
        }
    }
}

impl IscsiDisk {
    /// Successful logins since open: 1, plus one per reconnection.
    pub fn logins(&self) -> u64 {
        self.shared.logins.load(Ordering::Relaxed)
    }
}

impl DiskBackend for IscsiDisk {
    fn info(&self) -> DiskInfo {
        self.info
    }

    /// Re-reads the capacity with READ CAPACITY(16) through the session thread.
    fn refresh(&mut self) -> io::Result<DiskInfo> {
        {
            let mut mb = lock(&self.shared.admin);
            // A result left by an earlier refresh that timed out is stale.
            mb.result = None;
            mb.requested = true;
        }
        self.shared.refresh_flag.store(true, Ordering::Release);
        self.shared.sub_evt.write(1)?;
        let deadline = Instant::now() + self.refresh_timeout;
        let mut mb = lock(&self.shared.admin);
        loop {
            if let Some(r) = mb.result.take() {
                let g = r.map_err(|_| io::Error::other("iSCSI READ CAPACITY failed"))?;
                self.info.size_bytes = g.blocks * g.block_size as u64;
                return Ok(self.info);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                mb.requested = false;
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "iSCSI refresh timed out",
                ));
            }
            mb = self
                .shared
                .admin_cv
                .wait_timeout(mb, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    fn queue_depth(&self) -> usize {
        QUEUE_DEPTH
    }

    fn submit(&mut self, req: &DiskRequest<'_>) -> Result<(), SubmitError> {
        let Some(slot) = self.free.pop() else {
            return Err(SubmitError::Busy);
        };
        let mut q = lock(&self.shared.sub);
        let e = &mut q.entries[slot as usize];
        e.tag = req.tag;
        e.op = req.op;
        e.offset = req.offset;
        e.len = req.len;
        e.bufs.clear();
        e.bufs.extend_from_slice(req.bufs);
        q.pending.push_back(slot);
        self.unkicked += 1;
        Ok(())
    }

    fn kick(&mut self) -> io::Result<()> {
        if self.unkicked > 0 {
            self.unkicked = 0;
            self.shared.sub_evt.write(1)?;
        }
        Ok(())
    }

    fn notifier(&self) -> Option<RawFd> {
        Some(self.shared.comp_evt.as_raw_fd())
    }

    fn poll_completions(&mut self, out: &mut Vec<Completion>) {
        // Reset the eventfd first: a completion queued after the drain below re-arms it.
        let _ = self.shared.comp_evt.read();
        let mut q = lock(&self.shared.comp);
        for d in q.drain(..) {
            self.free.push(d.slot);
            out.push(d.completion);
        }
    }

    fn in_flight(&self) -> usize {
        QUEUE_DEPTH - self.free.len()
    }
}

impl Drop for IscsiDisk {
    fn drop(&mut self) {
        self.shared.shutdown.store(true, Ordering::Release);
        let _ = self.shared.sub_evt.write(1);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
