//! The device thread: one event-manager loop serving every device's eventfds (virtio queue
//! notifications, backend completions) and the serial console's stdin.

use std::io::Read;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use event_manager::{
    EventManager, EventOps, Events, MutEventSubscriber, RemoteEndpoint, SubscriberOps,
};
use vmm_sys_util::epoll::EventSet;

use ferry_devices::legacy::Serial;

use crate::error::VmmError;

/// Anything the device thread serves.
pub type Subscriber = Arc<Mutex<dyn MutEventSubscriber + Send>>;

/// The running device thread.
pub struct EventLoop {
    endpoint: RemoteEndpoint<Subscriber>,
    _thread: JoinHandle<()>,
}

impl EventLoop {
    /// Starts the thread with the given subscribers already registered.
    pub fn start(subscribers: Vec<Subscriber>) -> Result<Self, VmmError> {
        let mut manager: EventManager<Subscriber> =
            EventManager::new().map_err(|e| VmmError::Device(format!("event manager: {e:?}")))?;
        for s in subscribers {
            manager.add_subscriber(s);
        }
        let endpoint = manager.remote_endpoint();
        let thread = std::thread::Builder::new()
            .name("ferry_devices".into())
            .spawn(move || {
                crate::seccomp::install_or_abort(crate::seccomp::ThreadKind::Devices);
                loop {
                    if let Err(e) = manager.run() {
                        log::error!("device event loop: {e:?}");
                    }
                }
            })
            .map_err(VmmError::io("spawning the device thread"))?;
        Ok(Self {
            endpoint,
            _thread: thread,
        })
    }

    /// Stops the device thread between events until the returned guard is dropped. With the
    /// vCPUs paused this freezes every device: no queue is popped and no guest memory is written,
    /// so a saved state (and the memory sent after it) cannot be overtaken by device work — a
    /// request popped after the save would be lost on the destination.
    pub fn park(&self) -> Result<ParkGuard, VmmError> {
        let (parked_tx, parked_rx) = std::sync::mpsc::channel::<()>();
        let (resume_tx, resume_rx) = std::sync::mpsc::channel::<()>();
        self.endpoint
            .fire(move |_| {
                let _ = parked_tx.send(());
                // Blocks the device thread until the guard is dropped (sender gone).
                let _ = resume_rx.recv();
            })
            .map_err(|e| VmmError::Device(format!("event manager: {e:?}")))?;
        parked_rx
            .recv_timeout(std::time::Duration::from_secs(10))
            .map_err(|_| VmmError::Device("the device thread did not stop".into()))?;
        Ok(ParkGuard { _resume: resume_tx })
    }

    /// Adds a subscriber from another thread (used when devices are hot-added or restored).
    pub fn add(&self, subscriber: Subscriber) -> Result<(), VmmError> {
        self.endpoint
            .call_blocking(move |ops| -> Result<(), event_manager::Error> {
                ops.add_subscriber(subscriber);
                Ok(())
            })
            .map_err(|e| VmmError::Device(format!("event manager: {e:?}")))
    }
}

/// Keeps the device thread parked while alive (see [`EventLoop::park`]).
pub struct ParkGuard {
    _resume: std::sync::mpsc::Sender<()>,
}

/// Feeds host stdin to the guest's UART.
pub struct SerialInput {
    serial: Arc<Mutex<Serial>>,
    stdin: RawFd,
}

impl SerialInput {
    pub fn new(serial: Arc<Mutex<Serial>>) -> Self {
        Self {
            serial,
            stdin: std::io::stdin().as_raw_fd(),
        }
    }
}

impl MutEventSubscriber for SerialInput {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new_raw(self.stdin, EventSet::IN)) {
            log::warn!("serial input unavailable: {e:?}");
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        if events
            .event_set()
            .intersects(EventSet::HANG_UP | EventSet::ERROR)
        {
            // stdin closed: stop watching it rather than spinning.
            let _ = ops.remove(Events::new_raw(self.stdin, EventSet::IN));
            return;
        }
        let mut buf = [0u8; 64];
        let mut stdin = std::io::stdin().lock();
        match stdin.read(&mut buf) {
            Ok(0) => {
                let _ = ops.remove(Events::new_raw(self.stdin, EventSet::IN));
            }
            Ok(n) => {
                let mut serial = self.serial.lock().unwrap_or_else(|p| p.into_inner());
                let queued = serial.enqueue_input(&buf[..n]);
                if queued < n {
                    log::debug!(
                        "serial receive FIFO full: {} input bytes dropped",
                        n - queued
                    );
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                log::warn!("reading stdin: {e}");
                let _ = ops.remove(Events::new_raw(self.stdin, EventSet::IN));
            }
        }
    }
}

/// Puts a terminal stdin into raw mode for the guest console and restores it on drop.
pub struct RawTerminal {
    saved: libc::termios,
}

impl RawTerminal {
    /// Returns `None` when stdin is not a terminal.
    pub fn enable() -> Option<Self> {
        let fd = std::io::stdin().as_raw_fd();
        // SAFETY: tcgetattr/tcsetattr on our own stdin with a properly sized termios.
        unsafe {
            if libc::isatty(fd) != 1 {
                return None;
            }
            let mut saved: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(fd, &mut saved) != 0 {
                return None;
            }
            let mut raw = saved;
            raw.c_lflag &= !(libc::ICANON | libc::ECHO | libc::ISIG);
            raw.c_iflag &= !(libc::ICRNL | libc::IXON);
            raw.c_cc[libc::VMIN] = 1;
            raw.c_cc[libc::VTIME] = 0;
            if libc::tcsetattr(fd, libc::TCSANOW, &raw) != 0 {
                return None;
            }
            Some(Self { saved })
        }
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        // SAFETY: restoring the attributes we read from the same fd.
        unsafe { libc::tcsetattr(std::io::stdin().as_raw_fd(), libc::TCSANOW, &self.saved) };
    }
}
