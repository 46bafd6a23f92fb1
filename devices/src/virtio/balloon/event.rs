//! The balloon as an event-loop subscriber: activation, queue kicks, the statistics timer.

use std::os::fd::AsRawFd;

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};

use super::Balloon;

const EV_ACTIVATE: u32 = 0;
/// The statistics polling timer.
const EV_STATS_TIMER: u32 = 1;
/// Queue `i` kicks come as `EV_QUEUE + i`.
const EV_QUEUE: u32 = 16;

impl MutEventSubscriber for Balloon {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::with_data(
            &self.activate_evt,
            EV_ACTIVATE,
            EventSet::IN,
        )) {
            log::error!("virtio-balloon: cannot watch the activate eventfd: {e}");
        }
        if let Err(e) = ops.add(Events::with_data_raw(
            self.stats_timer.as_raw_fd(),
            EV_STATS_TIMER,
            EventSet::IN,
        )) {
            log::error!("virtio-balloon: cannot watch the statistics timer: {e}");
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        match events.data() {
            EV_ACTIVATE => {
                let _ = self.activate_evt.read();
                self.arm_stats_timer();
                // The queue eventfds never change for the device's life: add each once.
                for (i, evt) in self.queue_evts.iter().enumerate() {
                    let fd = evt.as_raw_fd();
                    if self.registered_fds.contains(&fd) {
                        continue;
                    }
                    match ops.add(Events::with_data(
                        evt.as_ref(),
                        EV_QUEUE + i as u32,
                        EventSet::IN,
                    )) {
                        Ok(()) => self.registered_fds.push(fd),
                        Err(e) => log::error!("virtio-balloon: cannot watch queue {i}: {e}"),
                    }
                }
                // Requests may already wait (driver kicked early, restored snapshot).
                for i in 0..self.queue_sizes.len() {
                    self.process_queue(i);
                }
            }
            EV_STATS_TIMER => {
                let mut ticks = [0u8; 8];
                // SAFETY: reads 8 bytes into our buffer from our non-blocking timerfd; EAGAIN
                // (a spurious wake-up) leaves it untouched.
                unsafe { libc::read(self.stats_timer.as_raw_fd(), ticks.as_mut_ptr().cast(), 8) };
                if self.active.is_none() {
                    // Reset since the timer was armed: stop it until the next activation.
                    self.arm_stats_timer();
                } else {
                    self.request_stats();
                }
            }
            data if data >= EV_QUEUE => {
                let i = (data - EV_QUEUE) as usize;
                if let Some(evt) = self.queue_evts.get(i) {
                    let _ = evt.read();
                }
                self.process_queue(i);
            }
            other => log::warn!("virtio-balloon: unexpected event {other}"),
        }
    }
}
