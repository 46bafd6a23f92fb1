//! The full-feature phase (RFC 7143 §4, §11): request slots, initiator task tags, the CmdSN
//! window, immediate/unsolicited and R2T-driven Data-Out, Data-In into guest buffers, NOP
//! handling, and the handling of every PDU a target may send. Connection management (connect,
//! login, reconnect, the poll loop, logout) is in `conn.rs`.
//!
//! Every value a target sends is checked before use: task tags are looked up against the slot
//! they claim and its generation, data offsets and lengths against the transfer, R2T counts
//! against what was negotiated. A violation drops the connection, which re-issues the
//! outstanding commands on a fresh login; it never panics and never writes outside a buffer.

use std::collections::VecDeque;
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::login::LoginConfig;
use super::pdu::{self, Framing, Pdu, SeqNums, RESERVED_TAG};
use super::scsi::{self, Outcome, Sense};
use super::shared::{Done, Shared, SEGMENTS_PER_SLOT};
use super::text::Params;
use crate::storage::{Completion, DiskError, DiskOp, GuestBuf};

/// Request slots (and so commands in flight) per backend.
pub const QUEUE_DEPTH: usize = 64;
/// Low 16 bits of the task tag of our keep-alive NOP-Out; never a slot index.
pub const PING_SLOT: u32 = 0xfffe;
/// Low 16 bits of the logout request's task tag.
pub const LOGOUT_SLOT: u32 = 0xfffd;
/// Stop generating PDUs while this much is waiting to be written.
const TX_HIGH_WATER: usize = 512 * 1024;
/// A target that makes us queue more than this (NOP echoes it never reads) is dropped.
const TX_HARD_LIMIT: usize = 64 * 1024 * 1024;
/// Retries of a command that met a transient condition (unit attention, busy, ...).
const MAX_RETRIES: u32 = 16;
/// Largest single READ/WRITE command; bigger requests are split.
const MAX_CHUNK_BYTES: u64 = 8 * 1024 * 1024;

/// A protocol violation or connection failure: the connection is dropped and re-established.
#[derive(Debug)]
pub struct Fault(pub String);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Read,
    Write,
    Flush,
    Discard,
    WriteZeroes,
    /// An internal command (INQUIRY, READ CAPACITY...) reading into the admin buffer.
    Admin,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SlotState {
    Free,
    /// Waiting to be (re)issued.
    Ready,
    /// Issued on the current connection.
    Sent,
}

/// One request and the SCSI command currently carrying (part of) it.
pub struct Slot {
    pub state: SlotState,
    pub kind: Kind,
    pub tag: u64,
    /// First block and block count of the whole request.
    pub lba: u64,
    pub blocks: u64,
    /// Blocks already completed by earlier commands (requests larger than one command).
    pub done_blocks: u64,
    /// Blocks covered by the command in flight.
    pub chunk_blocks: u64,
    pub bufs: Vec<GuestBuf>,
    pub itt: u32,
    /// Expected data transfer length of the command in flight.
    pub xfer_len: u32,
    pub reads: bool,
    pub writes: bool,
    pub got_bytes: u64,
    pub r2t_outstanding: u32,
    pub retries: u32,
    /// When the command in flight was issued (for the per-command timeout).
    pub sent_at: Instant,
    pub unmap_param: [u8; scsi::UNMAP_PARAM_LEN],
}

impl Slot {
    fn new() -> Self {
        Slot {
            state: SlotState::Free,
            kind: Kind::Flush,
            tag: 0,
            lba: 0,
            blocks: 0,
            done_blocks: 0,
            chunk_blocks: 0,
            bufs: Vec::with_capacity(SEGMENTS_PER_SLOT),
            itt: 0,
            xfer_len: 0,
            reads: false,
            writes: false,
            got_bytes: 0,
            r2t_outstanding: 0,
            retries: 0,
            sent_at: Instant::now(),
            unmap_param: [0; scsi::UNMAP_PARAM_LEN],
        }
    }
}

/// Data-Out still to send for one command: an unsolicited burst or an R2T.
#[derive(Clone, Copy, Debug)]
pub struct Job {
    pub slot: u16,
    pub itt: u32,
    pub ttt: u32,
    pub offset: u32,
    pub remaining: u32,
    pub data_sn: u32,
}

/// What the LUN supports and how big commands may be.
#[derive(Clone, Copy, Debug, Default)]
pub struct Limits {
    pub max_transfer_blocks: u32,
    pub discard: bool,
    pub max_unmap_blocks: u32,
    pub write_zeroes: bool,
    pub max_write_same_blocks: u64,
    pub read_only: bool,
}

/// Result of an internal command: bytes received, or the status and sense it failed with.
pub type AdminResult = Result<usize, (u8, Option<Sense>)>;

pub struct Session {
    pub shared: Arc<Shared>,
    pub portal: String,
    /// The portal's addresses, resolved by the first connect (on the thread that opens the
    /// disk). Reconnects reuse them: the session thread's seccomp filter cannot open the files
    /// name resolution reads.
    pub portal_addrs: Vec<std::net::SocketAddr>,
    pub login_cfg: LoginConfig,
    pub lun: u64,
    /// How long requests wait for a lost connection before failing.
    pub timeout: Duration,
    pub stream: Option<TcpStream>,
    pub slots: Vec<Slot>,
    pub ready: VecDeque<u16>,
    pub jobs: VecDeque<Job>,
    pub params: Params,
    pub framing: Framing,
    pub cmd_sn: u32,
    pub exp_stat_sn: u32,
    pub max_cmd_sn: u32,
    pub rx: Vec<u8>,
    pub rx_start: usize,
    pub rx_end: usize,
    pub tx: Vec<u8>,
    pub tx_off: usize,
    pub itt_gen: u32,
    pub last_rx: Instant,
    pub ping_sent: Option<Instant>,
    /// Last scan for commands stuck at the target.
    pub last_scan: Instant,
    /// Set when the connection went down; cleared when a command status arrives again.
    pub down_since: Option<Instant>,
    pub next_attempt: Instant,
    pub backoff: Duration,
    /// While opening, a lost connection is an error instead of a reason to reconnect.
    pub opening: bool,
    pub block_size: u32,
    pub blocks: u64,
    pub limits: Limits,
    pub admin_buf: Vec<u8>,
    pub admin_cdb: [u8; 16],
    pub admin_result: Option<AdminResult>,
    /// The admin command in flight was asked for by the front end's refresh().
    pub admin_for_frontend: bool,
    pub done: Vec<Done>,
}

/// Index of the internal-command slot (after the request slots).
pub const ADMIN_SLOT: usize = QUEUE_DEPTH;

/// Copies guest buffer bytes starting at `off` (relative to the buffers' concatenation) to `dst`.
fn sg_read(bufs: &[GuestBuf], mut off: u64, dst: &mut [u8]) {
    let mut done = 0;
    for b in bufs {
        if done == dst.len() {
            break;
        }
        let len = b.len as u64;
        if off >= len {
            off -= len;
            continue;
        }
        let n = ((len - off) as usize).min(dst.len() - done);
        // SAFETY: the device validated each GuestBuf as `len` bytes of mapped guest memory,
        // valid until the request completes; `off + n <= len`.
        unsafe {
            std::ptr::copy_nonoverlapping(b.ptr.add(off as usize), dst[done..].as_mut_ptr(), n)
        };
        done += n;
        off = 0;
    }
}

/// Copies `src` into the guest buffers starting at `off`.
fn sg_write(bufs: &[GuestBuf], mut off: u64, src: &[u8]) {
    let mut done = 0;
    for b in bufs {
        if done == src.len() {
            break;
        }
        let len = b.len as u64;
        if off >= len {
            off -= len;
            continue;
        }
        let n = ((len - off) as usize).min(src.len() - done);
        // SAFETY: as in sg_read; the guest may race on this memory, which only affects its data.
        unsafe { std::ptr::copy_nonoverlapping(src[done..].as_ptr(), b.ptr.add(off as usize), n) };
        done += n;
        off = 0;
    }
}

/// Appends a PDU whose data segment of `len` bytes is produced by `fill`.
fn append_pdu(
    tx: &mut Vec<u8>,
    framing: Framing,
    pdu: &Pdu,
    len: usize,
    fill: impl FnOnce(&mut [u8]),
) {
    let bhs = pdu.encode(len as u32);
    tx.extend_from_slice(&bhs);
    if framing.header_digest {
        tx.extend_from_slice(&super::digest::crc32c(&bhs).to_le_bytes());
    }
    let start = tx.len();
    tx.resize(start + len + pdu::pad_len(len), 0);
    fill(&mut tx[start..start + len]);
    if framing.data_digest && len > 0 {
        let d = super::digest::crc32c(&tx[start..]);
        tx.extend_from_slice(&d.to_le_bytes());
    }
}

impl Session {
    pub fn new(
        shared: Arc<Shared>,
        portal: String,
        login_cfg: LoginConfig,
        lun: u64,
        timeout: Duration,
    ) -> Self {
        let params = Params::from_offer(&login_cfg.offer);
        let max_frame = pdu::BHS_LEN + 255 * 4 + 4 + params.our_max_recv_dsl as usize + 8;
        let now = Instant::now();
        Session {
            shared,
            portal,
            portal_addrs: Vec::new(),
            login_cfg,
            lun,
            timeout,
            stream: None,
            slots: (0..=QUEUE_DEPTH).map(|_| Slot::new()).collect(),
            ready: VecDeque::with_capacity(QUEUE_DEPTH + 1),
            jobs: VecDeque::with_capacity(2 * (QUEUE_DEPTH + 1)),
            params,
            framing: Framing::default(),
            cmd_sn: 0,
            exp_stat_sn: 0,
            max_cmd_sn: 0,
            rx: vec![0; 2 * max_frame],
            rx_start: 0,
            rx_end: 0,
            tx: Vec::with_capacity(TX_HIGH_WATER + 2 * max_frame),
            tx_off: 0,
            itt_gen: 0,
            last_rx: now,
            ping_sent: None,
            last_scan: now,
            down_since: None,
            next_attempt: now,
            backoff: Duration::from_millis(50),
            opening: true,
            block_size: 512,
            blocks: 0,
            limits: Limits::default(),
            admin_buf: vec![0; 4096],
            admin_cdb: [0; 16],
            admin_result: None,
            admin_for_frontend: false,
            done: Vec::with_capacity(QUEUE_DEPTH),
        }
    }

    /// Moves newly submitted requests from the shared queue into slots.
    pub fn intake(&mut self) {
        let shared = Arc::clone(&self.shared);
        let mut q = super::shared::lock(&shared.sub);
        let super::shared::SubQueue { entries, pending } = &mut *q;
        while let Some(idx) = pending.pop_front() {
            let i = idx as usize;
            let (Some(e), true) = (entries.get_mut(i), i < QUEUE_DEPTH) else {
                continue;
            };
            if self.slots[i].state != SlotState::Free {
                continue;
            }
            std::mem::swap(&mut self.slots[i].bufs, &mut e.bufs);
            let (tag, op, offset, len) = (e.tag, e.op, e.offset, e.len);
            self.accept(i, tag, op, offset, len);
        }
    }

    /// Validates a request and queues it, or completes it at once with an error.
    fn accept(&mut self, i: usize, tag: u64, op: DiskOp, offset: u64, len: u64) {
        let bs = self.block_size as u64;
        let s = &mut self.slots[i];
        s.tag = tag;
        s.retries = 0;
        s.done_blocks = 0;
        s.kind = match op {
            DiskOp::Read => Kind::Read,
            DiskOp::Write => Kind::Write,
            DiskOp::Flush => Kind::Flush,
            DiskOp::Discard => Kind::Discard,
            DiskOp::WriteZeroes => Kind::WriteZeroes,
        };
        let buf_total: u64 = s.bufs.iter().map(|b| b.len as u64).sum();
        // The block size is a power of two (checked when READ CAPACITY was parsed).
        let in_range = offset & (bs - 1) == 0
            && len & (bs - 1) == 0
            && offset
                .checked_add(len)
                .is_some_and(|end| end <= self.blocks.saturating_mul(bs));
        let verdict = match s.kind {
            Kind::Read | Kind::Write if buf_total != len || !in_range => Err(DiskError::Io),
            Kind::Write | Kind::Discard | Kind::WriteZeroes if self.limits.read_only => {
                Err(DiskError::Io)
            }
            Kind::Discard if !self.limits.discard => Err(DiskError::Unsupported),
            Kind::WriteZeroes if !self.limits.write_zeroes => Err(DiskError::Unsupported),
            Kind::Discard | Kind::WriteZeroes if !in_range => Err(DiskError::Io),
            _ => Ok(()),
        };
        s.lba = offset / bs;
        s.blocks = if s.kind == Kind::Flush { 0 } else { len / bs };
        s.state = SlotState::Ready;
        match verdict {
            Err(e) => self.complete(i, Err(e)),
            Ok(()) if s.blocks == 0 && s.kind != Kind::Flush => self.complete(i, Ok(())),
            Ok(()) => self.ready.push_back(i as u16),
        }
    }

    /// Queues an internal command reading up to `alloc` bytes into the admin buffer.
    pub fn start_admin(&mut self, cdb: [u8; 16], alloc: usize) {
        let s = &mut self.slots[ADMIN_SLOT];
        s.kind = Kind::Admin;
        s.retries = 0;
        s.done_blocks = 0;
        s.blocks = alloc.min(self.admin_buf.len()) as u64;
        s.state = SlotState::Ready;
        self.admin_cdb = cdb;
        self.admin_result = None;
        self.ready.push_back(ADMIN_SLOT as u16);
    }

    /// Bytes written to the socket buffer and not yet sent.
    pub fn tx_pending(&self) -> usize {
        self.tx.len() - self.tx_off
    }

    fn window_open(&self) -> bool {
        !pdu::sn_lt(self.max_cmd_sn, self.cmd_sn)
    }

    /// Generates PDUs (Data-Out first, then new commands within the CmdSN window) until the
    /// transmit buffer reaches its high-water mark.
    pub fn pump(&mut self) {
        while self.tx_pending() < TX_HIGH_WATER {
            if let Some(job) = self.jobs.front().copied() {
                self.emit_data_out(job);
                continue;
            }
            if !self.window_open() {
                break;
            }
            let Some(i) = self.ready.pop_front() else {
                break;
            };
            self.issue(i as usize);
        }
    }

    /// The CDB, transfer length and direction of the next command for slot `i`.
    fn build_chunk(&mut self, i: usize) -> ([u8; 16], u32, bool, bool) {
        let bs = self.block_size as u64;
        let lim = self.limits;
        let s = &mut self.slots[i];
        let rem = s.blocks - s.done_blocks;
        let lba = s.lba + s.done_blocks;
        let cap = |limit: u64| {
            if limit == 0 {
                u32::MAX as u64
            } else {
                limit.min(u32::MAX as u64)
            }
        };
        match s.kind {
            Kind::Read | Kind::Write => {
                let max = cap(lim.max_transfer_blocks as u64)
                    .min(MAX_CHUNK_BYTES / bs)
                    .max(1);
                s.chunk_blocks = rem.min(max);
                let n = s.chunk_blocks as u32;
                let read = s.kind == Kind::Read;
                let cdb = if read {
                    scsi::read16(lba, n)
                } else {
                    scsi::write16(lba, n)
                };
                (cdb, n * bs as u32, read, !read)
            }
            Kind::Flush => {
                s.chunk_blocks = 0;
                (scsi::sync_cache16(), 0, false, false)
            }
            Kind::Discard => {
                s.chunk_blocks = rem.min(cap(lim.max_unmap_blocks as u64));
                let cdb = scsi::unmap(lba, s.chunk_blocks as u32, &mut s.unmap_param);
                (cdb, scsi::UNMAP_PARAM_LEN as u32, false, true)
            }
            Kind::WriteZeroes => {
                s.chunk_blocks = rem.min(cap(lim.max_write_same_blocks));
                (
                    scsi::write_same16(lba, s.chunk_blocks as u32),
                    bs as u32,
                    false,
                    true,
                )
            }
            Kind::Admin => {
                s.chunk_blocks = s.blocks;
                (self.admin_cdb, s.blocks as u32, s.blocks > 0, false)
            }
        }
    }

    /// Copies Data-Out bytes `[off, off + dst.len())` of slot `s`'s current command.
    fn fill_out(s: &Slot, block_size: u32, off: u32, dst: &mut [u8]) {
        match s.kind {
            Kind::Write => sg_read(&s.bufs, s.done_blocks * block_size as u64 + off as u64, dst),
            Kind::Discard => {
                let o = off as usize;
                if let Some(src) = s.unmap_param.get(o..o + dst.len()) {
                    dst.copy_from_slice(src);
                }
            }
            _ => dst.fill(0),
        }
    }

    fn issue(&mut self, i: usize) {
        let (cdb, xfer, reads, writes) = self.build_chunk(i);
        self.itt_gen = (self.itt_gen + 1) & 0x7fff;
        let itt = (self.itt_gen << 16) | i as u32;
        let p = self.params;
        let imm = if writes && p.immediate_data {
            xfer.min(p.first_burst_length).min(p.target_max_recv_dsl)
        } else {
            0
        };
        let unsolicited = if writes && !p.initial_r2t {
            xfer.min(p.first_burst_length) - imm
        } else {
            0
        };
        let s = &mut self.slots[i];
        s.itt = itt;
        s.xfer_len = xfer;
        s.reads = reads;
        s.writes = writes;
        s.got_bytes = 0;
        s.r2t_outstanding = 0;
        s.state = SlotState::Sent;
        s.sent_at = Instant::now();
        let cmd = Pdu::ScsiCommand {
            immediate: false,
            final_: unsolicited == 0,
            read: reads,
            write: writes,
            lun: self.lun,
            itt,
            expected_len: xfer,
            cmd_sn: self.cmd_sn,
            exp_stat_sn: self.exp_stat_sn,
            cdb,
        };
        self.cmd_sn = self.cmd_sn.wrapping_add(1);
        let bs = self.block_size;
        let slot = &self.slots[i];
        append_pdu(&mut self.tx, self.framing, &cmd, imm as usize, |d| {
            Self::fill_out(slot, bs, 0, d)
        });
        if unsolicited > 0 {
            self.jobs.push_back(Job {
                slot: i as u16,
                itt,
                ttt: RESERVED_TAG,
                offset: imm,
                remaining: unsolicited,
                data_sn: 0,
            });
        }
    }

    fn emit_data_out(&mut self, mut job: Job) {
        let i = job.slot as usize;
        let live = self
            .slots
            .get(i)
            .is_some_and(|s| s.state == SlotState::Sent && s.itt == job.itt);
        if !live || job.remaining == 0 {
            self.jobs.pop_front();
            return;
        }
        let n = job.remaining.min(self.params.target_max_recv_dsl);
        let final_ = n == job.remaining;
        let pdu = Pdu::DataOut {
            final_,
            lun: self.lun,
            itt: job.itt,
            ttt: job.ttt,
            exp_stat_sn: self.exp_stat_sn,
            data_sn: job.data_sn,
            offset: job.offset,
        };
        let bs = self.block_size;
        let slot = &self.slots[i];
        append_pdu(&mut self.tx, self.framing, &pdu, n as usize, |d| {
            Self::fill_out(slot, bs, job.offset, d)
        });
        job.offset += n;
        job.remaining -= n;
        job.data_sn = job.data_sn.wrapping_add(1);
        if final_ {
            self.jobs.pop_front();
            if job.ttt != RESERVED_TAG {
                let s = &mut self.slots[i];
                s.r2t_outstanding = s.r2t_outstanding.saturating_sub(1);
            }
        } else if let Some(front) = self.jobs.front_mut() {
            *front = job;
        }
    }

    /// Sends our keep-alive NOP-Out (immediate, so it takes no CmdSN).
    pub fn send_ping(&mut self) {
        let pdu = Pdu::NopOut {
            immediate: true,
            lun: 0,
            itt: (self.itt_gen << 16) | PING_SLOT,
            ttt: RESERVED_TAG,
            cmd_sn: self.cmd_sn,
            exp_stat_sn: self.exp_stat_sn,
        };
        append_pdu(&mut self.tx, self.framing, &pdu, 0, |_| {});
        self.ping_sent = Some(Instant::now());
    }

    /// The slot a target-supplied task tag names, if it is a command in flight.
    fn lookup(&self, itt: u32) -> Result<usize, Fault> {
        let i = (itt & 0xffff) as usize;
        match self.slots.get(i) {
            Some(s) if s.state == SlotState::Sent && s.itt == itt => Ok(i),
            _ => Err(Fault(format!("target used unknown task tag {itt:#x}"))),
        }
    }

    fn update_window(&mut self, sn: SeqNums) {
        // RFC 7143 §4.2.2.1: ignore MaxCmdSN < ExpCmdSN - 1; never move the window back.
        if pdu::sn_lt(sn.max_cmd_sn, sn.exp_cmd_sn.wrapping_sub(1)) {
            return;
        }
        if pdu::sn_lt(self.max_cmd_sn, sn.max_cmd_sn) {
            self.max_cmd_sn = sn.max_cmd_sn;
        }
    }

    fn advance_stat_sn(&mut self, stat_sn: u32) {
        if !pdu::sn_lt(stat_sn, self.exp_stat_sn) {
            self.exp_stat_sn = stat_sn.wrapping_add(1);
        }
    }

    /// Handles one PDU from the target.
    pub fn handle(&mut self, pdu: Pdu, data: &[u8]) -> Result<(), Fault> {
        match pdu {
            Pdu::ScsiResponse {
                flags,
                response,
                status,
                itt,
                sn,
                residual,
                ..
            } => {
                self.update_window(sn);
                self.advance_stat_sn(sn.stat_sn);
                let i = self.lookup(itt)?;
                let outcome = if response != 0 {
                    Outcome::Retry
                } else {
                    let sense = if status == scsi::STATUS_CHECK_CONDITION {
                        scsi::response_sense(data)
                    } else {
                        None
                    };
                    let o = scsi::classify(status, sense);
                    if o == Outcome::Done {
                        self.data_outcome(i, flags, residual)
                    } else if matches!(o, Outcome::Fail(_)) && self.slots[i].kind == Kind::Admin {
                        self.admin_result = Some(Err((status, sense)));
                        o
                    } else {
                        o
                    }
                };
                self.finish_command(i, outcome);
            }
            Pdu::DataIn {
                final_,
                flags,
                status,
                itt,
                sn,
                offset,
                residual,
                ..
            } => {
                self.update_window(sn);
                let i = self.lookup(itt)?;
                let s = &mut self.slots[i];
                if !s.reads {
                    return Err(Fault("Data-In for a command that reads nothing".into()));
                }
                let end = offset as u64 + data.len() as u64;
                if end > s.xfer_len as u64 {
                    return Err(Fault(format!(
                        "Data-In beyond the transfer ({end} > {})",
                        s.xfer_len
                    )));
                }
                match s.kind {
                    Kind::Admin => {
                        if let Some(dst) = self.admin_buf.get_mut(offset as usize..end as usize) {
                            dst.copy_from_slice(data);
                        }
                    }
                    _ => sg_write(
                        &s.bufs,
                        s.done_blocks * self.block_size as u64 + offset as u64,
                        data,
                    ),
                }
                s.got_bytes += data.len() as u64;
                if let Some(st) = status {
                    if !final_ {
                        return Err(Fault("Data-In with status but without the F bit".into()));
                    }
                    self.advance_stat_sn(sn.stat_sn);
                    let o = scsi::classify(st, None);
                    let o = if o == Outcome::Done {
                        self.data_outcome(i, flags, residual)
                    } else {
                        o
                    };
                    self.finish_command(i, o);
                }
            }
            Pdu::R2t {
                itt,
                ttt,
                sn,
                offset,
                desired_len,
                ..
            } => {
                self.update_window(sn);
                let i = self.lookup(itt)?;
                let s = &mut self.slots[i];
                let end = offset as u64 + desired_len as u64;
                if !s.writes || desired_len == 0 || end > s.xfer_len as u64 || ttt == RESERVED_TAG {
                    return Err(Fault(format!(
                        "bad R2T offset {offset} length {desired_len}"
                    )));
                }
                if s.r2t_outstanding >= self.params.max_outstanding_r2t
                    || self.jobs.len() >= self.jobs.capacity()
                {
                    return Err(Fault("target exceeded MaxOutstandingR2T".into()));
                }
                s.r2t_outstanding += 1;
                self.jobs.push_back(Job {
                    slot: i as u16,
                    itt,
                    ttt,
                    offset,
                    remaining: desired_len,
                    data_sn: 0,
                });
            }
            Pdu::NopIn { lun, itt, ttt, sn } => {
                self.update_window(sn);
                if itt != RESERVED_TAG {
                    self.advance_stat_sn(sn.stat_sn);
                    if itt & 0xffff == PING_SLOT {
                        self.ping_sent = None;
                    }
                }
                if ttt != RESERVED_TAG {
                    // The target pings us: answer with the same TTT, LUN and data.
                    let reply = Pdu::NopOut {
                        immediate: true,
                        lun,
                        itt: RESERVED_TAG,
                        ttt,
                        cmd_sn: self.cmd_sn,
                        exp_stat_sn: self.exp_stat_sn,
                    };
                    let echo = &data[..data.len().min(self.params.target_max_recv_dsl as usize)];
                    append_pdu(&mut self.tx, self.framing, &reply, echo.len(), |d| {
                        d.copy_from_slice(echo)
                    });
                    if self.tx_pending() > TX_HARD_LIMIT {
                        return Err(Fault("target floods us with pings it does not read".into()));
                    }
                }
            }
            Pdu::AsyncMessage { sn, event, .. } => {
                self.update_window(sn);
                self.advance_stat_sn(sn.stat_sn);
                match event {
                    // Logout requested, connection or session about to be dropped: log in again.
                    1..=3 => {
                        return Err(Fault(format!(
                            "target asked to end the connection (async event {event})"
                        )))
                    }
                    _ => log::debug!("iscsi: ignoring async event {event}"),
                }
            }
            Pdu::Reject { reason, sn, .. } => {
                self.update_window(sn);
                return Err(Fault(format!(
                    "target rejected a PDU (reason {reason:#04x})"
                )));
            }
            other => {
                return Err(Fault(format!(
                    "unexpected PDU in full-feature phase: {other:?}"
                )))
            }
        }
        Ok(())
    }

    /// For a command that ended GOOD: did all its data arrive?
    fn data_outcome(&mut self, i: usize, flags: u8, residual: u32) -> Outcome {
        let s = &self.slots[i];
        if s.kind == Kind::Admin {
            let got = if flags & pdu::FLAG_UNDERFLOW != 0 {
                s.xfer_len.saturating_sub(residual)
            } else {
                s.xfer_len
            };
            self.admin_result = Some(Ok((got as usize).min(s.got_bytes as usize)));
            return Outcome::Done;
        }
        // A short READ or WRITE lost data. Targets report odd residuals for parameter-list
        // commands (tgtd says UNMAP underflowed by its whole list), which are harmless.
        let data_cmd = matches!(s.kind, Kind::Read | Kind::Write);
        let underflow = flags & pdu::FLAG_UNDERFLOW != 0 && residual != 0;
        if data_cmd && (underflow || (s.reads && s.got_bytes < s.xfer_len as u64)) {
            return Outcome::Fail(DiskError::Io);
        }
        Outcome::Done
    }

    fn finish_command(&mut self, i: usize, outcome: Outcome) {
        // A status arrived: the session works again, so the reconnect clock stops.
        self.down_since = None;
        let s = &mut self.slots[i];
        match outcome {
            Outcome::Done => {
                s.done_blocks += s.chunk_blocks;
                if s.kind != Kind::Admin && s.done_blocks < s.blocks {
                    s.state = SlotState::Ready;
                    self.ready.push_back(i as u16);
                } else {
                    self.complete(i, Ok(()));
                }
            }
            Outcome::Retry if s.retries < MAX_RETRIES => {
                s.retries += 1;
                s.state = SlotState::Ready;
                self.ready.push_back(i as u16);
            }
            Outcome::Retry => self.complete(i, Err(DiskError::Io)),
            Outcome::Fail(e) => self.complete(i, Err(e)),
        }
    }

    /// Ends slot `i`'s request.
    pub fn complete(&mut self, i: usize, result: Result<(), DiskError>) {
        let s = &mut self.slots[i];
        s.state = SlotState::Free;
        if s.kind == Kind::Admin {
            // Keep the detailed result handle() recorded; otherwise note a bare success/failure.
            match result {
                Ok(()) if self.admin_result.is_none() => self.admin_result = Some(Ok(0)),
                Err(_) if !matches!(self.admin_result, Some(Err(_))) => {
                    self.admin_result = Some(Err((0xff, None)))
                }
                _ => {}
            }
            return;
        }
        let bytes = match s.kind {
            Kind::Read | Kind::Write => {
                u32::try_from(s.blocks * self.block_size as u64).unwrap_or(u32::MAX)
            }
            _ => 0,
        };
        self.done.push(Done {
            slot: i as u16,
            completion: Completion {
                tag: s.tag,
                result: result.map(|()| bytes),
            },
        });
    }

    /// Hands finished requests to the front end and wakes it.
    pub fn publish(&mut self) {
        if self.done.is_empty() {
            return;
        }
        {
            let mut q = super::shared::lock(&self.shared.comp);
            q.extend(self.done.drain(..));
        }
        if let Err(e) = self.shared.comp_evt.write(1) {
            log::error!("iscsi: cannot signal completions: {e}");
        }
    }

    /// Drops the commands in flight back to the ready queue (connection lost: they will be
    /// re-issued whole on the next connection) and clears per-connection state.
    pub fn requeue_in_flight(&mut self) {
        self.jobs.clear();
        for i in 0..self.slots.len() {
            if self.slots[i].state == SlotState::Sent {
                self.slots[i].state = SlotState::Ready;
                self.ready.push_back(i as u16);
            }
        }
    }

    /// A command the target has kept for longer than the timeout while the connection looked
    /// healthy: the connection is dropped, which makes the target abort it (session
    /// reinstatement), and the command is issued again on the new connection.
    pub fn check_stuck_commands(&mut self) -> Result<(), Fault> {
        let timeout = self.timeout;
        match self
            .slots
            .iter()
            .find(|s| s.state == SlotState::Sent && s.sent_at.elapsed() > timeout)
        {
            Some(s) => Err(Fault(format!(
                "command {:#x} outstanding for more than {timeout:?}",
                s.itt
            ))),
            None => Ok(()),
        }
    }

    /// Fails every request waiting for a connection.
    pub fn fail_waiting(&mut self) {
        while let Some(i) = self.ready.pop_front() {
            self.complete(i as usize, Err(DiskError::Io));
        }
    }
}

/// Fuzzing harness: a session with a read, a write, a discard and an admin command in flight
/// receives `data` (first byte: digest flags, then PDUs) from the target. Guest buffers are a
/// local vector.
pub fn fuzz_feed(data: &[u8]) {
    fuzz_feed_checked(data);
}

/// [`fuzz_feed`], returning how many PDUs made the session fault (0 or 1).
pub fn fuzz_feed_checked(data: &[u8]) -> usize {
    let Ok(shared) = Shared::new(QUEUE_DEPTH) else {
        return 0;
    };
    let cfg = LoginConfig {
        initiator: String::new(),
        target: String::new(),
        isid: [0; 6],
        credentials: Default::default(),
        offer: Default::default(),
    };
    let mut s = Session::new(
        Arc::new(shared),
        String::new(),
        cfg,
        0,
        Duration::from_secs(1),
    );
    s.opening = false;
    s.blocks = 1 << 20;
    s.limits.discard = true;
    s.limits.write_zeroes = true;
    s.params.max_outstanding_r2t = 2;
    s.params.target_max_recv_dsl = 1024;
    let mut guest = vec![0u8; 64 * 1024];
    let base = guest.as_mut_ptr();
    let reqs = [
        (DiskOp::Read, 8192u64),
        (DiskOp::Write, 16384),
        (DiskOp::Discard, 4096),
    ];
    for (i, (kind, len)) in reqs.into_iter().enumerate() {
        // Two buffers per request, inside `guest`, which outlives the session's use of them.
        // SAFETY: offsets i * 16384 and 49152 plus at most 8192 bytes stay within 64 KiB.
        let bufs = unsafe {
            [
                GuestBuf {
                    ptr: base.add(i * 16384),
                    len: len as u32 / 2,
                },
                GuestBuf {
                    ptr: base.add(49152),
                    len: len as u32 / 2,
                },
            ]
        };
        s.slots[i].bufs.clear();
        s.slots[i].bufs.extend_from_slice(&bufs);
        s.accept(i, i as u64, kind, 0, len);
    }
    s.start_admin(scsi::inquiry(None, 96), 96);
    s.max_cmd_sn = 100;
    s.pump();
    let flags = data.first().copied().unwrap_or(0);
    let framing = Framing {
        header_digest: flags & 1 != 0,
        data_digest: flags & 2 != 0,
    };
    let mut rest = data.get(1..).unwrap_or_default();
    let mut faults = 0;
    while let Ok(Some(f)) = pdu::parse_frame(rest, framing, 1 << 16) {
        rest = &rest[f.len..];
        if s.handle(f.pdu, f.data).is_err() {
            s.requeue_in_flight();
            faults += 1;
            break;
        }
        s.pump();
        s.tx.clear();
        s.tx_off = 0;
    }
    drop(s);
    drop(guest);
    faults
}
