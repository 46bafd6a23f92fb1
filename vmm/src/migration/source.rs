//! The sending side: connect, pre-copy rounds until the remainder fits the downtime budget,
//! switch over, commit.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::dirty::{count_dirty, DirtyBitmaps, DirtyLog};
use super::memory::{memory_digest, MemorySender};
use super::transport::{MigrationUrl, Stream};
use super::wire::{self, Reply};
use super::{MigrationError, MigrationPhase, MigrationProgress, MigrationStart, SendOptions};
use crate::controller::{VmController, VmState};
use crate::VmmError;

/// How long the source waits for any destination answer (building a large VM included).
const REPLY_TIMEOUT: Duration = Duration::from_secs(120);
/// Auto-converge period: vCPUs run (100 - p)% and are held p% of each period.
const THROTTLE_PERIOD: Duration = Duration::from_millis(20);
const THROTTLE_START: u32 = 20;
const THROTTLE_STEP: u32 = 10;
const THROTTLE_MAX: u32 = 99;

/// Figures of a completed migration.
#[derive(Clone, Debug, serde::Serialize)]
pub struct MigrationSummary {
    pub total_ms: u64,
    pub downtime_ms: u64,
    pub bytes: u64,
    pub rounds: u32,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Migrates the running VM of `controller` to `url`. On any failure before COMMIT the guest keeps
/// (or goes back to) running here. On success the controller has forgotten the VM.
pub fn migrate(
    controller: &Arc<Mutex<VmController>>,
    url: &MigrationUrl,
    options: &SendOptions,
    progress: &Mutex<MigrationProgress>,
) -> Result<MigrationSummary, MigrationError> {
    let started = Instant::now();
    *lock(progress) = MigrationProgress {
        state: MigrationPhase::Active,
        ..Default::default()
    };
    let result = run(controller, url, options, progress, started);
    let mut p = lock(progress);
    p.total_ms = started.elapsed().as_millis() as u64;
    match &result {
        Ok(summary) => {
            p.state = MigrationPhase::Completed;
            p.downtime_ms = summary.downtime_ms;
        }
        Err(MigrationError::InDoubt(_)) => p.state = MigrationPhase::InDoubt,
        Err(_) => p.state = MigrationPhase::Failed,
    }
    if let Err(e) = &result {
        p.error = Some(e.to_string());
    }
    result
}

fn run(
    controller: &Arc<Mutex<VmController>>,
    url: &MigrationUrl,
    options: &SendOptions,
    progress: &Mutex<MigrationProgress>,
    started: Instant,
) -> Result<MigrationSummary, MigrationError> {
    let (memory, vm, config) = {
        let mut c = lock(controller);
        // The move reads (and so consumes) the dirty log: a later diff snapshot would miss pages.
        c.invalidate_diff_base();
        if c.state() != VmState::Running {
            return Err(VmmError::InvalidState {
                state: c.state().name(),
                action: "migrating",
            }
            .into());
        }
        let memory = c.memory().cloned().ok_or(VmmError::InvalidState {
            state: "not started",
            action: "migrating",
        })?;
        let vm = c.vm_fd().cloned().ok_or(VmmError::InvalidState {
            state: "not started",
            action: "migrating",
        })?;
        (memory, vm, c.config().clone())
    };

    let mut stream =
        Stream::connect(url, &options.security).map_err(|source| MigrationError::Connect {
            url: url.to_string(),
            source,
        })?;
    stream
        .set_read_timeout(Some(REPLY_TIMEOUT))
        .map_err(wire::WireError::Io)?;
    let mut replies = stream.try_clone().map_err(wire::WireError::Io)?;
    wire::write_hello(&mut stream).map_err(wire::WireError::Io)?;
    wire::expect_reply(&mut replies, Reply::HelloOk, "HELLO_OK")?;
    let keep_logging = config.machine.track_dirty_pages;
    let start = MigrationStart {
        config,
        verify: options.verify,
    };
    let json = serde_json::to_vec(&start).map_err(|e| VmmError::Device(e.to_string()))?;
    wire::write_blob(&mut stream, wire::CONFIG, &json).map_err(wire::WireError::Io)?;
    wire::expect_reply(&mut replies, Reply::Accepted, "ACCEPTED")?;

    let dirty = DirtyLog::start(&vm, &memory, keep_logging)?;
    let mut sender = MemorySender::new(&mut stream);
    let io = |e: std::io::Error| MigrationError::Wire(wire::WireError::Io(e));

    // Round 0: everything.
    let round_start = Instant::now();
    sender.send_all(&memory).map_err(io)?;
    sender.send_message(&wire::round_message(0)).map_err(io)?;
    let mut bandwidth = rate(sender.stats.bytes, round_start.elapsed());
    let mut round: u32 = 0;
    let mut throttle = Throttle::new(controller.clone());
    let downtime_budget = options.downtime_ms as f64 / 1000.0;
    let mut last_fetch = Instant::now();
    let mut maps = dirty.fetch()?;
    let mut dirty_rate = 0.0;
    loop {
        let pages = count_dirty(&maps);
        let since = last_fetch.elapsed();
        last_fetch = Instant::now();
        dirty_rate = if round == 0 {
            dirty_rate
        } else {
            rate(pages * 4096, since)
        };
        let expected = (pages * 4096) as f64 / bandwidth.max(1.0);
        {
            let mut p = lock(progress);
            p.round = round;
            p.bytes_sent = sender.stats.bytes;
            p.dirty_pages = pages;
            p.bandwidth_mib_s = bandwidth / (1 << 20) as f64;
            p.dirty_rate_mib_s = dirty_rate / (1 << 20) as f64;
            p.expected_downtime_ms = (expected * 1000.0) as u64;
            p.throttle_percent = throttle.percent();
        }
        if expected <= downtime_budget {
            break;
        }
        if round >= options.max_iterations {
            if options.force_switchover {
                log::warn!(
                    "migration: forcing switchover after {round} rounds with {pages} dirty pages \
                     (expected downtime {:.0} ms)",
                    expected * 1000.0
                );
                break;
            }
            throttle.stop();
            drop(sender);
            let _ = wire::write_blob(&mut stream, wire::ABORT, b"source gave up: no convergence");
            return Err(MigrationError::NoConvergence {
                dirty_rate_mib_s: dirty_rate / (1 << 20) as f64,
                bandwidth_mib_s: bandwidth / (1 << 20) as f64,
                rounds: round,
            });
        }
        // Not converging: the guest dirties at least half as fast as we send.
        if options.auto_converge && round >= 2 && dirty_rate * 2.0 > bandwidth {
            throttle.raise();
        }
        round += 1;
        let t = Instant::now();
        let before = sender.stats.bytes;
        sender.send_dirty(&memory, &maps).map_err(io)?;
        sender
            .send_message(&wire::round_message(round))
            .map_err(io)?;
        let sent = sender.stats.bytes - before;
        if sent > (1 << 20) {
            bandwidth = rate(sent, t.elapsed());
        }
        maps = dirty.fetch()?;
    }
    throttle.stop();

    // Switchover.
    let pause_started = Instant::now();
    lock(controller).pause()?;
    let result = switchover(
        controller,
        &mut sender,
        &dirty,
        maps,
        &memory,
        options,
        &mut replies,
    );
    let bytes = sender.stats.bytes;
    drop(sender);
    drop(dirty);
    match result {
        Ok(()) => {}
        Err(e @ MigrationError::InDoubt(_)) => return Err(e),
        Err(e) => {
            let _ = wire::write_blob(&mut stream, wire::ABORT, e.to_string().as_bytes());
            stream.shutdown();
            if let Err(resume) = lock(controller).resume() {
                log::error!("migration failed and the guest could not be resumed: {resume}");
            }
            return Err(e);
        }
    }
    let downtime = pause_started.elapsed();
    lock(controller).forget_migrated();
    let summary = MigrationSummary {
        total_ms: started.elapsed().as_millis() as u64,
        downtime_ms: downtime.as_millis() as u64,
        bytes,
        rounds: round + 1,
    };
    // One machine-readable line on stderr whatever the log level, for orchestrators and logs.
    eprintln!(
        "{}",
        serde_json::json!({"event": "migration-completed", "side": "source",
            "total_ms": summary.total_ms, "downtime_ms": summary.downtime_ms,
            "bytes": summary.bytes, "rounds": summary.rounds})
    );
    Ok(summary)
}

/// With the VM paused: last pages, state, optional digest, READY, COMMIT, COMMITTED.
fn switchover<W: super::memory::PageSink>(
    controller: &Arc<Mutex<VmController>>,
    sender: &mut MemorySender<'_, W>,
    dirty: &DirtyLog<'_>,
    pending: DirtyBitmaps,
    memory: &ferry_arch::GuestMemory,
    options: &SendOptions,
    replies: &mut Stream,
) -> Result<(), MigrationError> {
    let io = |e: std::io::Error| MigrationError::Wire(wire::WireError::Io(e));
    let t = Instant::now();
    let snapshot = {
        let c = lock(controller);
        if let Some(virtio) = c.virtio() {
            virtio.quiesce()?;
        }
        c.save_snapshot()?
    };
    // The pages found dirty when the loop decided to stop, plus everything written since
    // (device writes made while quiescing included).
    let mut maps = dirty.fetch()?;
    merge(&mut maps, &pending);
    let saved = t.elapsed();
    sender.send_dirty(memory, &maps).map_err(io)?;
    log::info!(
        "migration: switchover saved state in {saved:?}, sent {} final pages by {:?}",
        count_dirty(&maps),
        t.elapsed()
    );
    let state = serde_json::to_vec(&snapshot).map_err(|e| VmmError::Device(e.to_string()))?;
    let mut message = Vec::with_capacity(state.len() + 5);
    message.push(wire::STATE);
    message.extend_from_slice(&(state.len() as u32).to_le_bytes());
    message.extend_from_slice(&state);
    sender.send_message(&message).map_err(io)?;
    if options.verify {
        sender
            .send_message(&wire::digest_message(memory_digest(memory)))
            .map_err(io)?;
    }
    let reply = wire::read_reply(replies)?;
    log::info!("migration: destination ready after {:?}", t.elapsed());
    match reply {
        Reply::Ready => {}
        Reply::Error(reason) if reason.contains("digest") => {
            return Err(MigrationError::DigestMismatch)
        }
        Reply::Error(reason) => return Err(MigrationError::Aborted(reason)),
        other => {
            return Err(MigrationError::Aborted(format!(
                "unexpected reply {other:?}"
            )));
        }
    }
    // Point of no return: from here on the source never runs this guest again.
    sender
        .send_message(&[wire::COMMIT])
        .map_err(|e| MigrationError::InDoubt(e.to_string()))?;
    match wire::read_reply(replies) {
        Ok(Reply::Committed) => Ok(()),
        Ok(other) => Err(MigrationError::InDoubt(format!(
            "unexpected reply {other:?}"
        ))),
        Err(e) => Err(MigrationError::InDoubt(e.to_string())),
    }
}

/// ORs `other` into `maps`.
fn merge(maps: &mut DirtyBitmaps, other: &DirtyBitmaps) {
    for (map, extra) in maps.iter_mut().zip(other) {
        for (word, bits) in map.iter_mut().zip(extra) {
            *word |= bits;
        }
    }
}

fn rate(bytes: u64, elapsed: Duration) -> f64 {
    bytes as f64 / elapsed.as_secs_f64().max(1e-6)
}

/// Auto-converge: holds the vCPUs for a growing share of each period so the guest dirties less.
struct Throttle {
    controller: Arc<Mutex<VmController>>,
    percent: Arc<AtomicU32>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Throttle {
    fn new(controller: Arc<Mutex<VmController>>) -> Self {
        Self {
            controller,
            percent: Arc::new(AtomicU32::new(0)),
            stop: Arc::new(AtomicBool::new(false)),
            thread: None,
        }
    }

    fn percent(&self) -> u32 {
        self.percent.load(Ordering::Relaxed)
    }

    fn raise(&mut self) {
        let next = match self.percent() {
            0 => THROTTLE_START,
            p => (p + THROTTLE_STEP).min(THROTTLE_MAX),
        };
        self.percent.store(next, Ordering::Relaxed);
        log::info!("migration: auto-converge holds vCPUs {next}% of the time");
        if self.thread.is_none() {
            let controller = self.controller.clone();
            let percent = self.percent.clone();
            let stop = self.stop.clone();
            self.thread = std::thread::Builder::new()
                .name("ferry_throttle".into())
                .spawn(move || {
                    crate::seccomp::install_or_abort(crate::seccomp::ThreadKind::Throttle);
                    while !stop.load(Ordering::Relaxed) {
                        let p = percent.load(Ordering::Relaxed);
                        let held = THROTTLE_PERIOD * p / 100;
                        std::thread::sleep(THROTTLE_PERIOD - held);
                        if lock(&controller).pause().is_err() {
                            continue;
                        }
                        std::thread::sleep(held);
                        let _ = lock(&controller).resume();
                    }
                })
                .ok();
        }
    }

    /// Stops throttling and leaves the vCPUs running.
    fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Throttle {
    fn drop(&mut self) {
        self.stop();
    }
}
