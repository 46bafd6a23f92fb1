//! The net device as an event-loop subscriber (see the `virtio` module docs for the flow).
//!
//! Watched: the activate eventfd; every queue's kick eventfd; each backend fd, with an
//! interest that follows the pair's state after every event: EPOLLIN while the guest has RX
//! buffers (dropped when it runs out, back on the next RX kick), EPOLLOUT while a TX frame waits
//! for the backend, nothing while inactive. The fds are added once and only modified after.
//! EPOLLIN is also dropped while the RX rate limiter is blocked. The two rate limiters'
//! timerfds are watched from `init` (unarmed until a limit refuses something).

use std::os::fd::AsRawFd;

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};

use super::Net;

const EV_ACTIVATE: u32 = 0;
/// The RX rate limiter's timerfd.
const EV_RX_LIMITER: u32 = 1;
/// The TX rate limiter's timerfd.
const EV_TX_LIMITER: u32 = 2;
/// Queue kick `i` is `EV_QUEUE + i`.
const EV_QUEUE: u32 = 0x1_0000;
/// Backend fd of pair `p` is `EV_BACKEND + p`.
const EV_BACKEND: u32 = 0x2_0000;

impl Net {
    /// Adds the queue kick fds the first time the device activates; they stay for its life.
    fn register_queue_fds(&mut self, ops: &mut EventOps) {
        for (i, evt) in self.queue_evts.iter().enumerate() {
            let fd = evt.as_raw_fd();
            if self.registered_queue_fds.contains(&fd) {
                continue;
            }
            match ops.add(Events::with_data(
                evt.as_ref(),
                EV_QUEUE + i as u32,
                EventSet::IN,
            )) {
                Ok(()) => self.registered_queue_fds.push(fd),
                Err(e) => log::error!("virtio-net: cannot watch queue {i}'s eventfd: {e}"),
            }
        }
    }

    /// Makes the event loop's interest in each backend fd match the pair's state.
    fn sync_interest(&mut self, ops: &mut EventOps) {
        let rx_blocked = self.rx_limiter.is_blocked();
        for p in 0..self.pairs.len() {
            let Some(fd) = self.backend.fd(p) else {
                continue;
            };
            let mut want = EventSet::empty();
            if let Some(a) = &self.active {
                let pair = &self.pairs[p];
                if a.serves(2 * p) && !pair.rx_stalled && !rx_blocked {
                    want |= EventSet::IN;
                }
                if a.serves(2 * p + 1) && pair.tx_blocked {
                    want |= EventSet::OUT;
                }
            }
            let events = Events::with_data_raw(fd, EV_BACKEND + p as u32, want);
            let pair = &mut self.pairs[p];
            match pair.interest {
                Some(current) if current == want => {}
                Some(_) => match ops.modify(events) {
                    Ok(()) => pair.interest = Some(want),
                    Err(e) => log::error!("virtio-net: cannot change backend fd interest: {e}"),
                },
                None if want.is_empty() => {}
                None => match ops.add(events) {
                    Ok(()) => pair.interest = Some(want),
                    Err(e) => log::error!("virtio-net: cannot watch the backend fd: {e}"),
                },
            }
        }
    }

    /// Serves every pair and the control queue (activation, restore).
    fn process_all(&mut self) {
        let Some(mut a) = self.active.take() else {
            return;
        };
        self.process_ctrl(&mut a);
        for p in 0..usize::from(a.curr_pairs) {
            self.process_rx(&mut a, p);
            self.process_tx_rekick(&mut a, p);
        }
        self.active = Some(a);
    }

    /// `process_tx`, re-kicking the TX queue when a batch limit left work behind.
    fn process_tx_rekick(&mut self, a: &mut super::Active, p: usize) {
        if self.process_tx(a, p) {
            if let Some(evt) = self.queue_evts.get(2 * p + 1) {
                let _ = evt.write(1);
            }
        }
    }

    fn on_queue(&mut self, index: usize) {
        if let Some(evt) = self.queue_evts.get(index) {
            let _ = evt.read();
        }
        let Some(mut a) = self.active.take() else {
            return;
        };
        if Some(index) == a.ctrl {
            if self.process_ctrl(&mut a) {
                // New pairs may have frames waiting.
                for p in 0..usize::from(a.curr_pairs) {
                    self.process_rx(&mut a, p);
                    self.process_tx_rekick(&mut a, p);
                }
            }
        } else if index / 2 < usize::from(a.usable_pairs) {
            if index.is_multiple_of(2) {
                self.process_rx(&mut a, index / 2);
            } else {
                self.process_tx_rekick(&mut a, index / 2);
            }
        }
        self.active = Some(a);
    }

    /// A rate limiter's timer: retry what it held back on every pair in use.
    fn on_limiter(&mut self, rx: bool) {
        let unblocked = if rx {
            self.rx_limiter.on_timer()
        } else {
            self.tx_limiter.on_timer()
        };
        if !unblocked {
            return;
        }
        let Some(mut a) = self.active.take() else {
            return;
        };
        for p in 0..usize::from(a.curr_pairs) {
            if rx {
                self.process_rx(&mut a, p);
            } else {
                self.process_tx_rekick(&mut a, p);
            }
        }
        self.active = Some(a);
    }

    fn on_backend(&mut self, p: usize, events: EventSet, ops: &mut EventOps) {
        if events.intersects(EventSet::ERROR | EventSet::HANG_UP) {
            // A deleted macvtap/tap: nothing more will come; stop watching so the loop does not
            // spin on a permanent error.
            log::error!("virtio-net: backend queue {p} failed (error/hang-up); no longer served");
            if let Some(fd) = self.backend.fd(p) {
                let _ = ops.remove(Events::with_data_raw(
                    fd,
                    EV_BACKEND + p as u32,
                    EventSet::empty(),
                ));
            }
            if let Some(pair) = self.pairs.get_mut(p) {
                pair.interest = None;
            }
            return;
        }
        let Some(mut a) = self.active.take() else {
            return;
        };
        if events.contains(EventSet::OUT) {
            if let Some(pair) = self.pairs.get_mut(p) {
                pair.tx_blocked = false;
            }
            self.process_tx_rekick(&mut a, p);
        }
        if events.contains(EventSet::IN) {
            self.process_rx(&mut a, p);
        }
        self.active = Some(a);
    }
}

impl MutEventSubscriber for Net {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::with_data(
            &self.activate_evt,
            EV_ACTIVATE,
            EventSet::IN,
        )) {
            log::error!("virtio-net: cannot watch the activate eventfd: {e}");
        }
        for (limiter, data) in [
            (&self.rx_limiter, EV_RX_LIMITER),
            (&self.tx_limiter, EV_TX_LIMITER),
        ] {
            if let Err(e) = ops.add(Events::with_data_raw(
                limiter.timer_fd(),
                data,
                EventSet::IN,
            )) {
                log::error!("virtio-net: cannot watch a rate limiter timer: {e}");
            }
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        match events.data() {
            EV_ACTIVATE => {
                let _ = self.activate_evt.read();
                self.register_queue_fds(ops);
                // Buffers and frames may already wait (driver kicked early, restored snapshot).
                self.process_all();
            }
            EV_RX_LIMITER => self.on_limiter(true),
            EV_TX_LIMITER => self.on_limiter(false),
            d if (EV_QUEUE..EV_BACKEND).contains(&d) => self.on_queue((d - EV_QUEUE) as usize),
            d if d >= EV_BACKEND => {
                self.on_backend((d - EV_BACKEND) as usize, events.event_set(), ops)
            }
            other => log::warn!("virtio-net: unexpected event {other}"),
        }
        self.sync_interest(ops);
    }
}
