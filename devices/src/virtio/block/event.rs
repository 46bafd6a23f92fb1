//! The block device as an event-loop subscriber (see the `virtio` module docs for the flow).

use std::os::fd::AsRawFd;

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};

use super::Block;

const EV_ACTIVATE: u32 = 0;
const EV_QUEUE: u32 = 1;
const EV_BACKEND: u32 = 2;
/// The rate limiter's timerfd: tokens are there for the request it held back.
const EV_RATE_LIMITER: u32 = 3;

impl Block {
    /// Adds the queue and backend fds to the event loop the first time the device activates;
    /// they stay registered for the device's life, except a backend's after a swap: the retired
    /// backends' notifiers are removed here (while their fds are still open), then the backends
    /// are dropped and the current backend's notifier added.
    fn register_fds(&mut self, ops: &mut EventOps) {
        for old in self.retired.drain(..) {
            if let Some(fd) = old.notifier() {
                if self.registered_backend_fd == Some(fd) {
                    if let Err(e) = ops.remove(Events::with_data_raw(fd, EV_BACKEND, EventSet::IN))
                    {
                        log::error!("virtio-blk: cannot unwatch a replaced backend: {e}");
                    }
                    self.registered_backend_fd = None;
                }
            }
        }
        if let Some(evt) = &self.queue_evt {
            let fd = evt.as_raw_fd();
            if self.registered_queue_fd != Some(fd) {
                match ops.add(Events::with_data(evt.as_ref(), EV_QUEUE, EventSet::IN)) {
                    Ok(()) => self.registered_queue_fd = Some(fd),
                    Err(e) => log::error!("virtio-blk: cannot watch the queue eventfd: {e}"),
                }
            }
        }
        if let Some(fd) = self.backend.notifier() {
            if self.registered_backend_fd != Some(fd) {
                match ops.add(Events::with_data_raw(fd, EV_BACKEND, EventSet::IN)) {
                    Ok(()) => self.registered_backend_fd = Some(fd),
                    Err(e) => log::error!("virtio-blk: cannot watch the backend notifier: {e}"),
                }
            }
        }
    }
}

impl MutEventSubscriber for Block {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::with_data(
            &self.activate_evt,
            EV_ACTIVATE,
            EventSet::IN,
        )) {
            log::error!("virtio-blk: cannot watch the activate eventfd: {e}");
        }
        // The limiter's timerfd exists (unarmed) even without a limit, so a limit set later on
        // the running device needs no new registration.
        if let Err(e) = ops.add(Events::with_data_raw(
            self.limiter.timer_fd(),
            EV_RATE_LIMITER,
            EventSet::IN,
        )) {
            log::error!("virtio-blk: cannot watch the rate limiter timer: {e}");
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        match events.data() {
            // Activation, or a backend swap (see `swap`).
            EV_ACTIVATE => {
                let _ = self.activate_evt.read();
                self.register_fds(ops);
                // Requests may already wait (driver kicked early, restored snapshot).
                self.process_queue();
            }
            EV_QUEUE => {
                if let Some(evt) = &self.queue_evt {
                    let _ = evt.read();
                }
                self.process_queue();
            }
            // process_queue reaps completions first, then continues with any requests the
            // backend had no room for.
            EV_BACKEND => self.process_queue(),
            EV_RATE_LIMITER => {
                if self.limiter.on_timer() {
                    self.process_queue();
                }
            }
            other => log::warn!("virtio-blk: unexpected event {other}"),
        }
    }
}
