//! Swapping the backend of a live device (`PATCH /drives/{id}` with a new `path_on_host`, as
//! Firecracker does for orchestrators that keep placeholder drives and fill them later).
//!
//! The swap runs on the VMM's thread with the device lock held, so the device thread cannot pop
//! or complete anything meanwhile:
//!
//! 1. Every request already handed to the old backend (and a request held back by the rate
//!    limiter or a full backend: it was parsed and bounds-checked against the old capacity) is
//!    completed on the old backend and reported to the guest; requests still in the avail ring
//!    go to the new backend, checked against the new capacity.
//! 2. Completed writes are flushed to the old backing, so nothing the guest wrote is lost.
//! 3. The new backend takes over; capacity and config space follow it, and the guest gets a
//!    config-change interrupt (the generation moves even when the size did not, so a driver can
//!    tell that its disk changed).
//!
//! The old backend's notifier fd is still registered with the event loop, which only the device
//! thread may change. The old backend is therefore kept (`retired`) until the device thread
//! handles the activate event: it unregisters the old fd while it is still open (the event loop
//! keys registrations by fd number, so closing first would leave a stale entry that a new fd of
//! the same number could not be added over), drops the old backend and registers the new one.
//!
//! Feature bits cannot change under a running driver: the new backing must have the same logical
//! block size, and its read-only flag comes from the drive's configuration (the VMM opens it with
//! the same options). A backing without discard or write-zeroes support answers such requests
//! with UNSUPP.

use std::io;

use super::{config, request::Request, Block};
use crate::storage::DiskBackend;

/// Why a swap was refused; the old backend stays in place.
#[derive(Debug, thiserror::Error)]
pub enum SwapError {
    #[error("the new backing has {new}-byte blocks, the drive has {old}-byte blocks")]
    BlockSize { old: u32, new: u32 },
    #[error("the new backing is {0} bytes, not a multiple of 512")]
    Size(u64),
    #[error("{0} requests are still in flight on the current backing")]
    InFlight(usize),
    #[error("flushing the current backing: {0}")]
    Flush(io::Error),
}

impl Block {
    /// Replaces the backend (see the module docs). Returns the new capacity in bytes. On error
    /// the old backend stays in place and `backend` is dropped.
    pub fn swap_backend(&mut self, backend: Box<dyn DiskBackend>) -> Result<u64, SwapError> {
        let info = backend.info();
        if info.logical_block_size != self.info.logical_block_size {
            return Err(SwapError::BlockSize {
                old: self.info.logical_block_size,
                new: info.logical_block_size,
            });
        }
        if !info.size_bytes.is_multiple_of(config::SECTOR_SIZE) {
            return Err(SwapError::Size(info.size_bytes));
        }
        self.drain(true);
        if self.backend.in_flight() > 0 || self.pending.is_some() {
            return Err(SwapError::InFlight(self.backend.in_flight()));
        }
        if !self.info.read_only {
            self.flush_backend().map_err(SwapError::Flush)?;
        }
        let depth = backend
            .queue_depth()
            .clamp(1, usize::from(config::QUEUE_SIZE));
        if depth != self.slots.len() {
            // Nothing is in flight, so every slot is free and the table can be rebuilt.
            self.slots = (0..depth).map(|_| Request::new()).collect();
            self.free_slots = (0..depth as u16).rev().collect();
            self.slot_busy = vec![false; depth];
        }
        let old = std::mem::replace(&mut self.backend, backend);
        if self.registered_backend_fd.is_some() {
            self.retired.push(old);
            // The device thread unregisters the old notifier and registers the new one.
            if let Err(e) = self.activate_evt.write(1) {
                log::error!("virtio-blk: cannot wake the device thread after a swap: {e}");
            }
        } else {
            // Never registered (the driver never started the device): nothing to undo.
            drop(old);
        }
        self.info = info;
        self.capacity = info.size_bytes;
        self.config = config::build(&info, info.size_bytes);
        if let Some(interrupt) = &self.interrupt {
            interrupt.signal_config_change();
        }
        Ok(self.capacity)
    }
}
