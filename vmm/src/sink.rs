//! Line output to a file or FIFO an API client names (`PUT /logger`, `PUT /metrics`), without
//! ever blocking the caller.
//!
//! The path is opened the way Firecracker opens it: read-write, non-blocking, created when
//! missing. A FIFO opened read-write never blocks in `open` and never fails with `ENXIO` for
//! want of a reader, and what is written before a reader comes stays in the pipe for it.
//! Writes happen on a thread of their own: the caller only queues a line. When nobody reads
//! and the pipe is full, the thread waits for room; lines that do not fit in the queue
//! meanwhile are dropped and counted.

use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use crate::VmmError;

/// Lines queued for the writer thread before further ones are dropped.
pub const QUEUE_LINES: usize = 4096;

/// A destination for lines, written by its own thread.
#[derive(Debug)]
pub struct Sink {
    path: String,
    lines: SyncSender<Vec<u8>>,
    missed: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    /// Lines queued so far, and (with a wake-up) lines the writer thread is done with.
    queued: AtomicU64,
    done: Arc<(Mutex<u64>, Condvar)>,
}

impl Sink {
    /// Opens `path` (a file, created when missing and appended to, or a FIFO) without blocking
    /// and starts the writer thread `ferry_<what>`.
    pub fn open(path: &str, what: &str) -> Result<Self, VmmError> {
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(path)
            .map_err(VmmError::io(format!("opening {what} output {path}")))?;
        let (lines, queue) = sync_channel::<Vec<u8>>(QUEUE_LINES);
        let failed = Arc::new(AtomicU64::new(0));
        let thread_failed = failed.clone();
        let done = Arc::new((Mutex::new(0u64), Condvar::new()));
        let thread_done = done.clone();
        std::thread::Builder::new()
            .name(format!("ferry_{what}"))
            .spawn(move || {
                crate::seccomp::install_or_abort(crate::seccomp::ThreadKind::Sink);
                for line in queue {
                    if write_all(&file, &line).is_err() {
                        thread_failed.fetch_add(1, Ordering::Relaxed);
                    }
                    let (count, wake) = &*thread_done;
                    *count.lock().unwrap_or_else(|p| p.into_inner()) += 1;
                    wake.notify_all();
                }
            })
            .map_err(VmmError::io(format!("spawning the {what} writer thread")))?;
        Ok(Self {
            path: path.to_string(),
            lines,
            missed: Arc::new(AtomicU64::new(0)),
            failed,
            queued: AtomicU64::new(0),
            done,
        })
    }

    /// The path this sink writes to.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// Queues `line` (a newline is added when missing). Never blocks; a full queue drops it.
    pub fn send(&self, mut line: Vec<u8>) {
        if line.last() != Some(&b'\n') {
            line.push(b'\n');
        }
        match self.lines.try_send(line) {
            Ok(()) => {
                self.queued.fetch_add(1, Ordering::Relaxed);
            }
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.missed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Waits up to `timeout` for the lines queued so far to be written (before the process
    /// exits); returns whether they were. A FIFO nobody reads may hold them back: then it gives
    /// up.
    pub fn drain(&self, timeout: Duration) -> bool {
        let target = self.queued.load(Ordering::Relaxed);
        let (count, wake) = &*self.done;
        let guard = count.lock().unwrap_or_else(|p| p.into_inner());
        let (guard, _) = wake
            .wait_timeout_while(guard, timeout, |done| *done < target)
            .unwrap_or_else(|p| p.into_inner());
        *guard >= target
    }

    /// Lines dropped because the queue was full.
    pub fn missed(&self) -> u64 {
        self.missed.load(Ordering::Relaxed)
    }

    /// Lines the writer thread failed to write (an I/O error other than a full pipe).
    pub fn failed(&self) -> u64 {
        self.failed.load(Ordering::Relaxed)
    }
}

/// Writes all of `buf` to a non-blocking `file`, waiting for room when it is a full pipe.
fn write_all(mut file: &File, buf: &[u8]) -> std::io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        match file.write(&buf[done..]) {
            Ok(0) => return Err(ErrorKind::WriteZero.into()),
            Ok(n) => done += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                let mut pfd = libc::pollfd {
                    fd: file.as_raw_fd(),
                    events: libc::POLLOUT,
                    revents: 0,
                };
                // SAFETY: one valid pollfd. Waits until the reader makes room.
                unsafe { libc::poll(&mut pfd, 1, -1) };
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader};

    fn temp_path(tag: &str) -> std::path::PathBuf {
        std::env::temp_dir().join(format!("ferry-sink-{tag}-{}", std::process::id()))
    }

    #[test]
    fn fifo_without_reader_opens_at_once_and_keeps_lines_for_a_later_reader() {
        let path = temp_path("fifo");
        let _ = std::fs::remove_file(&path);
        let c_path = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
        // SAFETY: valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);
        let sink = Sink::open(path.to_str().unwrap(), "test").unwrap();
        sink.send(b"first".to_vec());
        sink.send(b"second\n".to_vec());
        // A blocking reader opened only now still gets both lines.
        let reader = File::open(&path).unwrap();
        let mut lines = BufReader::new(reader).lines();
        assert_eq!(lines.next().unwrap().unwrap(), "first");
        assert_eq!(lines.next().unwrap().unwrap(), "second");
        assert_eq!(sink.missed(), 0);
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn regular_file_is_created_and_appended() {
        let path = temp_path("file");
        std::fs::write(&path, "old\n").unwrap();
        let sink = Sink::open(path.to_str().unwrap(), "test").unwrap();
        sink.send(b"new".to_vec());
        assert!(sink.drain(std::time::Duration::from_secs(60)));
        drop(sink);
        // The writer thread ends once the queue is drained and closed.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while std::fs::read_to_string(&path).unwrap() != "old\nnew\n" {
            assert!(std::time::Instant::now() < deadline, "line never written");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn unopenable_path_is_a_clear_error() {
        let err = Sink::open("/nonexistent-dir/x/y", "log").unwrap_err();
        assert!(err.to_string().contains("/nonexistent-dir/x/y"), "{err}");
    }
}
