//! The entropy device as an event-loop subscriber (see the `virtio` module docs for the flow).

use std::os::fd::AsRawFd;

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};

use super::Rng;

const EV_ACTIVATE: u32 = 0;
const EV_QUEUE: u32 = 1;
/// The rate limiter's timerfd: tokens are there for the request it held back.
const EV_RATE_LIMITER: u32 = 2;

impl MutEventSubscriber for Rng {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::with_data(
            &self.activate_evt,
            EV_ACTIVATE,
            EventSet::IN,
        )) {
            log::error!("virtio-rng: cannot watch the activate eventfd: {e}");
        }
        // Registered even without a limit (the timerfd exists, unarmed), like virtio-blk's.
        if let Err(e) = ops.add(Events::with_data_raw(
            self.limiter.timer_fd(),
            EV_RATE_LIMITER,
            EventSet::IN,
        )) {
            log::error!("virtio-rng: cannot watch the rate limiter timer: {e}");
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        match events.data() {
            EV_ACTIVATE => {
                let _ = self.activate_evt.read();
                // The queue eventfd never changes for the device's life: add it once.
                if let Some(evt) = &self.queue_evt {
                    let fd = evt.as_raw_fd();
                    if self.registered_queue_fd != Some(fd) {
                        match ops.add(Events::with_data(evt.as_ref(), EV_QUEUE, EventSet::IN)) {
                            Ok(()) => self.registered_queue_fd = Some(fd),
                            Err(e) => log::error!("virtio-rng: cannot watch the queue: {e}"),
                        }
                    }
                }
                // Requests may already wait (driver kicked early, restored snapshot).
                self.process_queue();
            }
            EV_QUEUE => {
                if let Some(evt) = &self.queue_evt {
                    let _ = evt.read();
                }
                self.process_queue();
            }
            EV_RATE_LIMITER => {
                if self.limiter.on_timer() {
                    self.process_queue();
                }
            }
            other => log::warn!("virtio-rng: unexpected event {other}"),
        }
    }
}
