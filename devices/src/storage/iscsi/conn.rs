//! Connection management for a [`Session`]: TCP connect and login, the poll loop of the session
//! thread, non-blocking socket reads and writes, keep-alive pings, reconnection with backoff
//! and the bound on how long requests wait for it, and the logout at shutdown.

use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::login::{self, LoginError};
use super::pdu::{self, Framing, Pdu};
use super::scsi;
use super::session::{Fault, Kind, Session, SlotState, ADMIN_SLOT, LOGOUT_SLOT};
use super::shared::{lock, Geometry};
use super::Error;
use crate::storage::DiskError;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Socket timeout while logging in or out (blocking mode).
const LOGIN_IO_TIMEOUT: Duration = Duration::from_secs(5);
/// Send a NOP-Out after this long without hearing from the target...
const PING_IDLE: Duration = Duration::from_secs(5);
/// ...and give the connection up if the answer takes longer than this.
const PING_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// Socket reads per wake-up, so that a fast sender can not starve transmission.
const READS_PER_WAKE: usize = 16;

impl Session {
    /// Connects to the portal and logs in; on success the session is in the full-feature phase
    /// with a non-blocking socket.
    pub fn connect(&mut self) -> Result<(), Error> {
        let unreachable = |e: io::Error| Error::Unreachable {
            portal: self.portal.clone(),
            source: e,
        };
        if self.portal_addrs.is_empty() {
            self.portal_addrs = self
                .portal
                .to_socket_addrs()
                .map_err(unreachable)?
                .collect();
        }
        let addrs = self.portal_addrs.clone();
        let mut last = io::Error::new(io::ErrorKind::NotFound, "no address for portal");
        let mut stream = None;
        for a in addrs {
            match TcpStream::connect_timeout(&a, CONNECT_TIMEOUT) {
                Ok(s) => {
                    stream = Some(s);
                    break;
                }
                Err(e) => last = e,
            }
        }
        let mut stream = stream.ok_or_else(|| unreachable(last))?;
        let io_err = |e: io::Error| Error::Io(e.to_string());
        stream.set_nodelay(true).map_err(io_err)?;
        stream
            .set_read_timeout(Some(LOGIN_IO_TIMEOUT))
            .map_err(io_err)?;
        stream
            .set_write_timeout(Some(LOGIN_IO_TIMEOUT))
            .map_err(io_err)?;
        let target = self.login_cfg.target.clone();
        let outcome = login::login(&mut stream, &self.login_cfg).map_err(|e| match e {
            LoginError::Auth(reason) => Error::AuthFailed {
                target: target.clone(),
                reason,
            },
            LoginError::TargetNotFound(t) => Error::TargetNotFound(t),
            LoginError::Rejected(reason) | LoginError::Protocol(reason) => Error::LoginFailed {
                target: target.clone(),
                reason,
            },
            LoginError::Io(e) => Error::LoginFailed {
                target: target.clone(),
                reason: e.to_string(),
            },
        })?;
        stream.set_nonblocking(true).map_err(io_err)?;
        self.params = outcome.params;
        self.framing = Framing {
            header_digest: outcome.params.header_digest,
            data_digest: outcome.params.data_digest,
        };
        self.cmd_sn = outcome.cmd_sn;
        self.exp_stat_sn = outcome.exp_stat_sn;
        self.max_cmd_sn = outcome.max_cmd_sn;
        self.rx_start = 0;
        self.rx_end = 0;
        self.tx.clear();
        self.tx_off = 0;
        self.last_rx = Instant::now();
        self.ping_sent = None;
        self.backoff = Duration::from_millis(50);
        self.stream = Some(stream);
        self.shared.logins.fetch_add(1, Ordering::Relaxed);
        log::info!(
            "iscsi: logged in to {} at {} ({:?})",
            self.login_cfg.target,
            self.portal,
            self.params
        );
        Ok(())
    }

    /// Drops the connection; commands in flight go back to the ready queue.
    fn drop_connection(&mut self, why: &Fault) {
        log::warn!("iscsi: connection to {} lost: {}", self.portal, why.0);
        self.stream = None;
        self.requeue_in_flight();
        self.tx.clear();
        self.tx_off = 0;
        self.rx_start = 0;
        self.rx_end = 0;
        self.ping_sent = None;
        self.down_since.get_or_insert_with(Instant::now);
        self.next_attempt = Instant::now();
    }

    /// While disconnected: fail requests that waited too long, and try to reconnect when due.
    fn reconnect_step(&mut self) {
        let now = Instant::now();
        let since = *self.down_since.get_or_insert(now);
        if now.duration_since(since) >= self.timeout {
            self.fail_waiting();
        }
        if now < self.next_attempt {
            return;
        }
        match self.connect() {
            Ok(()) => log::info!("iscsi: reconnected to {}", self.portal),
            Err(e) => {
                log::warn!("iscsi: reconnect to {} failed: {e}", self.portal);
                self.next_attempt = Instant::now() + self.backoff;
                self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
            }
        }
    }

    /// Writes as much of the transmit buffer as the socket takes.
    fn flush(&mut self) -> Result<(), Fault> {
        let Some(stream) = self.stream.as_mut() else {
            return Ok(());
        };
        while self.tx_off < self.tx.len() {
            match stream.write(&self.tx[self.tx_off..]) {
                Ok(0) => return Err(Fault("connection closed while sending".into())),
                Ok(n) => self.tx_off += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(Fault(format!("send failed: {e}"))),
            }
        }
        if self.tx_off == self.tx.len() {
            self.tx.clear();
            self.tx_off = 0;
        } else if self.tx_off >= self.tx.len() / 2 {
            self.tx.drain(..self.tx_off);
            self.tx_off = 0;
        }
        Ok(())
    }

    /// Reads what the socket has and handles every complete PDU.
    fn receive(&mut self) -> Result<(), Fault> {
        for _ in 0..READS_PER_WAKE {
            if self.rx_end == self.rx.len() {
                self.rx.copy_within(self.rx_start..self.rx_end, 0);
                self.rx_end -= self.rx_start;
                self.rx_start = 0;
            }
            let Some(stream) = self.stream.as_mut() else {
                return Ok(());
            };
            match stream.read(&mut self.rx[self.rx_end..]) {
                Ok(0) => return Err(Fault("connection closed by the target".into())),
                Ok(n) => {
                    let filled = self.rx_end + n == self.rx.len();
                    self.rx_end += n;
                    self.last_rx = Instant::now();
                    self.parse_received()?;
                    if !filled {
                        // A short read drained the socket; skip the read that would say so.
                        return Ok(());
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(Fault(format!("receive failed: {e}"))),
            }
        }
        Ok(())
    }

    fn parse_received(&mut self) -> Result<(), Fault> {
        // The buffer is taken out of `self` so frames can borrow it while handlers mutate the
        // session; it is put back (no allocation) before returning.
        let rx = std::mem::take(&mut self.rx);
        let mut result = Ok(());
        while self.rx_start < self.rx_end {
            match pdu::parse_frame(
                &rx[self.rx_start..self.rx_end],
                self.framing,
                self.params.our_max_recv_dsl,
            ) {
                Ok(Some(f)) => {
                    self.rx_start += f.len;
                    if let Err(e) = self.handle(f.pdu, f.data) {
                        result = Err(e);
                        break;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    result = Err(Fault(e.to_string()));
                    break;
                }
            }
        }
        self.rx = rx;
        if self.rx_start == self.rx_end {
            self.rx_start = 0;
            self.rx_end = 0;
        }
        result
    }

    /// One iteration of the session loop: take requests, make progress on the connection, wait
    /// for the socket or the submission eventfd at most `max_wait`, publish completions.
    pub fn step(&mut self, max_wait: Duration) -> Result<(), Error> {
        self.intake();
        self.check_refresh();
        if self.stream.is_none() {
            if self.opening {
                return Err(Error::Io("connection lost while opening the LUN".into()));
            }
            self.reconnect_step();
        }
        let mut wait = max_wait;
        if self.stream.is_some() {
            if let Err(f) = self.io_round() {
                self.drop_connection(&f);
                if self.opening {
                    return Err(Error::Io(f.0));
                }
            }
            if let Some(sent) = self.ping_sent {
                wait = wait.min(PING_TIMEOUT.saturating_sub(sent.elapsed()));
            } else {
                wait = wait.min(PING_IDLE.saturating_sub(self.last_rx.elapsed()));
            }
        } else {
            wait = wait.min(self.next_attempt.saturating_duration_since(Instant::now()));
            // Wake up when the timeout expires; once it has, waiting requests are failed on
            // arrival and only the reconnect backoff paces the loop.
            let expiry = self
                .down_since
                .map(|d| (d + self.timeout).saturating_duration_since(Instant::now()));
            if let Some(left) = expiry.filter(|l| !l.is_zero()) {
                wait = wait.min(left);
            }
        }
        self.publish();
        self.wait(wait.max(Duration::from_millis(1)));
        self.publish_refresh();
        Ok(())
    }

    /// Pump, send, receive once; keep-alive bookkeeping.
    fn io_round(&mut self) -> Result<(), Fault> {
        self.pump();
        self.flush()?;
        self.receive()?;
        self.pump();
        self.flush()?;
        if self.last_scan.elapsed() >= Duration::from_secs(1) {
            self.last_scan = Instant::now();
            self.check_stuck_commands()?;
        }
        match self.ping_sent {
            Some(t) if t.elapsed() > PING_TIMEOUT => {
                return Err(Fault("target stopped answering NOP-Out".into()))
            }
            None if self.last_rx.elapsed() > PING_IDLE => {
                self.send_ping();
                self.flush()?;
            }
            _ => {}
        }
        Ok(())
    }

    /// Sleeps until the socket is readable (or writable with data queued), the submission
    /// eventfd fires, or `timeout` passes.
    fn wait(&mut self, timeout: Duration) {
        let mut fds = [
            libc::pollfd {
                fd: self.shared.sub_evt.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: -1,
                events: 0,
                revents: 0,
            },
        ];
        if let Some(s) = &self.stream {
            fds[1].fd = s.as_raw_fd();
            fds[1].events = libc::POLLIN
                | if self.tx_pending() > 0 {
                    libc::POLLOUT
                } else {
                    0
                };
        }
        let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: `fds` is a valid array of two pollfd structures for the duration of the call.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, ms) };
        if n > 0 && fds[0].revents & libc::POLLIN != 0 {
            // Only resets the counter; the queue itself is read by intake().
            let _ = self.shared.sub_evt.read();
        }
    }

    /// Runs an internal command to completion on the calling thread (used while opening).
    pub fn run_admin(
        &mut self,
        cdb: [u8; 16],
        alloc: usize,
    ) -> Result<super::session::AdminResult, Error> {
        self.start_admin(cdb, alloc);
        let deadline = Instant::now() + self.timeout;
        while self.slots[ADMIN_SLOT].state != SlotState::Free {
            if Instant::now() > deadline {
                return Err(Error::Io("timed out waiting for the target".into()));
            }
            self.step(Duration::from_millis(100))?;
        }
        Ok(self.admin_result.take().unwrap_or(Err((0xff, None))))
    }

    /// Starts a READ CAPACITY for the front end's refresh() if one was asked for.
    fn check_refresh(&mut self) {
        if self.slots[ADMIN_SLOT].state != SlotState::Free
            || !self.shared.refresh_flag.swap(false, Ordering::AcqRel)
        {
            return;
        }
        let mut mb = lock(&self.shared.admin);
        if mb.requested {
            mb.requested = false;
            drop(mb);
            self.admin_for_frontend = true;
            self.start_admin(scsi::read_capacity16(32), 32);
        }
    }

    /// Delivers a finished refresh to the front end.
    fn publish_refresh(&mut self) {
        if !self.admin_for_frontend || self.slots[ADMIN_SLOT].state != SlotState::Free {
            return;
        }
        self.admin_for_frontend = false;
        let result = match self.admin_result.take() {
            Some(Ok(n)) => match scsi::capacity(&self.admin_buf[..n.min(self.admin_buf.len())]) {
                Some(c) if c.block_size == self.block_size => {
                    self.blocks = c.blocks;
                    Ok(Geometry {
                        blocks: c.blocks,
                        block_size: c.block_size,
                    })
                }
                _ => Err(DiskError::Io),
            },
            _ => Err(DiskError::Io),
        };
        lock(&self.shared.admin).result = Some(result);
        self.shared.admin_cv.notify_all();
    }

    /// The session thread's body.
    pub fn run(mut self) {
        self.opening = false;
        while !self.shared.shutdown.load(Ordering::Acquire) {
            // step() only fails while opening.
            let _ = self.step(Duration::from_secs(1));
        }
        self.logout();
        for i in 0..self.slots.len() {
            if self.slots[i].state != SlotState::Free && self.slots[i].kind != Kind::Admin {
                self.complete(i, Err(DiskError::Io));
            }
        }
        self.publish();
    }

    /// Sends a Logout Request (close the session) and waits briefly for the response.
    pub fn logout(&mut self) {
        let Some(mut stream) = self.stream.take() else {
            return;
        };
        let req = Pdu::LogoutRequest {
            reason: 0,
            itt: LOGOUT_SLOT,
            cid: 0,
            cmd_sn: self.cmd_sn,
            exp_stat_sn: self.exp_stat_sn,
        };
        let mut buf = Vec::new();
        pdu::write_frame(&mut buf, &req, &[], self.framing);
        let deadline = Instant::now() + Duration::from_secs(2);
        let ok = stream.set_nonblocking(false).is_ok()
            && stream
                .set_write_timeout(Some(Duration::from_secs(2)))
                .is_ok()
            && stream.write_all(&self.tx[self.tx_off..]).is_ok()
            && stream.write_all(&buf).is_ok();
        self.tx.clear();
        self.tx_off = 0;
        self.rx_start = 0;
        self.rx_end = 0;
        if !ok {
            return;
        }
        let _ = stream.set_read_timeout(Some(Duration::from_millis(200)));
        while Instant::now() < deadline {
            if self.rx_end == self.rx.len() {
                return;
            }
            match stream.read(&mut self.rx[self.rx_end..]) {
                Ok(0) => return,
                Ok(n) => self.rx_end += n,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock
                            | io::ErrorKind::TimedOut
                            | io::ErrorKind::Interrupted
                    ) =>
                {
                    continue
                }
                Err(_) => return,
            }
            while let Ok(Some(f)) = pdu::parse_frame(
                &self.rx[self.rx_start..self.rx_end],
                self.framing,
                self.params.our_max_recv_dsl,
            ) {
                self.rx_start += f.len;
                if matches!(f.pdu, Pdu::LogoutResponse { .. }) {
                    log::info!("iscsi: logged out of {}", self.login_cfg.target);
                    return;
                }
            }
        }
    }
}
