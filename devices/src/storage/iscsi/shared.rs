//! State shared between the backend front end (the device thread) and the session thread: a
//! fixed-capacity submission queue, a completion queue, their eventfds, and the mailbox for
//! capacity refreshes.
//!
//! Request slots are owned by index: the front end picks a free slot, fills the submission entry
//! with that index and queues the index; the session thread swaps the entry's buffer list with
//! its own slot's (no allocation, capacities are exchanged), and returns the index with the
//! completion. Both locks are held for a few instructions, once per batch on the session side.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Condvar, Mutex, MutexGuard};

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::storage::{Completion, DiskError, DiskOp, GuestBuf};

/// Buffers per request a slot holds without reallocating; longer lists still work (the vector
/// grows once and keeps its capacity).
pub const SEGMENTS_PER_SLOT: usize = 256;

/// One submitted request, as the front end hands it over.
pub struct SubEntry {
    pub tag: u64,
    pub op: DiskOp,
    pub offset: u64,
    pub len: u64,
    pub bufs: Vec<GuestBuf>,
}

pub struct SubQueue {
    pub entries: Vec<SubEntry>,
    /// Slot indices submitted and not yet taken by the session thread.
    pub pending: VecDeque<u16>,
}

/// A finished request and the slot it frees.
#[derive(Clone, Copy, Debug)]
pub struct Done {
    pub slot: u16,
    pub completion: Completion,
}

/// Size and block size as READ CAPACITY reports them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    pub blocks: u64,
    pub block_size: u32,
}

#[derive(Default)]
pub struct AdminMailbox {
    /// A refresh was asked for and not yet started.
    pub requested: bool,
    pub result: Option<Result<Geometry, DiskError>>,
}

pub struct Shared {
    pub sub: Mutex<SubQueue>,
    pub comp: Mutex<VecDeque<Done>>,
    /// Written by the front end to wake the session thread (new requests, refresh, shutdown).
    pub sub_evt: EventFd,
    /// Written by the session thread when completions are queued: the backend's notifier.
    pub comp_evt: EventFd,
    pub shutdown: AtomicBool,
    /// Successful logins so far (1 + reconnections), for monitoring and tests.
    pub logins: AtomicU64,
    pub admin: Mutex<AdminMailbox>,
    pub admin_cv: Condvar,
    /// Set with `admin.requested`, so the session thread can check for a refresh each
    /// iteration without taking the mailbox lock.
    pub refresh_flag: AtomicBool,
}

impl Shared {
    pub fn new(depth: usize) -> std::io::Result<Self> {
        let entries = (0..depth)
            .map(|_| SubEntry {
                tag: 0,
                op: DiskOp::Flush,
                offset: 0,
                len: 0,
                bufs: Vec::with_capacity(SEGMENTS_PER_SLOT),
            })
            .collect();
        Ok(Shared {
            sub: Mutex::new(SubQueue {
                entries,
                pending: VecDeque::with_capacity(depth),
            }),
            comp: Mutex::new(VecDeque::with_capacity(depth)),
            sub_evt: EventFd::new(EFD_NONBLOCK)?,
            comp_evt: EventFd::new(EFD_NONBLOCK)?,
            shutdown: AtomicBool::new(false),
            logins: AtomicU64::new(0),
            admin: Mutex::new(AdminMailbox::default()),
            admin_cv: Condvar::new(),
            refresh_flag: AtomicBool::new(false),
        })
    }
}

/// Locks a mutex, ignoring poisoning: the protected data are plain queues that stay consistent
/// even if a holder panicked, and refusing I/O afterwards would help nobody.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
