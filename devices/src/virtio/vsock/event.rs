//! The vsock device as an event-loop subscriber: activation, the three queue kicks, and the
//! muxer's epoll set (one fd for every host socket).

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};

use super::{config, Vsock};

const EV_ACTIVATE: u32 = 0;
const EV_MUXER: u32 = 1;
/// Queue kicks: `EV_QUEUE + queue index`.
const EV_QUEUE: u32 = 2;

impl MutEventSubscriber for Vsock {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::with_data(
            &self.activate_evt,
            EV_ACTIVATE,
            EventSet::IN,
        )) {
            log::error!("virtio-vsock: cannot watch the activate eventfd: {e}");
        }
        // Host clients may connect before the guest's driver is up; they wait in the muxer.
        if let Err(e) = ops.add(Events::with_data_raw(
            self.muxer.epoll_fd(),
            EV_MUXER,
            EventSet::IN,
        )) {
            log::error!("virtio-vsock: cannot watch the host sockets: {e}");
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        match events.data() {
            EV_ACTIVATE => {
                let _ = self.activate_evt.read();
                // The queue eventfds never change for the device's life: add them once.
                if !self.queues_registered && !self.queue_evts.is_empty() {
                    for (i, evt) in self.queue_evts.iter().enumerate() {
                        let data = EV_QUEUE + i as u32;
                        if let Err(e) = ops.add(Events::with_data(evt.as_ref(), data, EventSet::IN))
                        {
                            log::error!("virtio-vsock: cannot watch queue {i}: {e}");
                        }
                    }
                    self.queues_registered = true;
                }
                // A restored device tells the guest, and packets may already wait.
                self.process_event_queue();
                self.process_tx();
                self.process_rx();
            }
            EV_MUXER => {
                self.muxer.process_host_events();
                self.process_rx();
            }
            data if (EV_QUEUE..EV_QUEUE + 3).contains(&data) => {
                let q = (data - EV_QUEUE) as usize;
                if let Some(evt) = self.queue_evts.get(q) {
                    let _ = evt.read();
                }
                match q {
                    config::RX => {
                        super::count(&self.metrics.rx_queue_events, 1);
                        self.process_rx();
                    }
                    config::TX => {
                        super::count(&self.metrics.tx_queue_events, 1);
                        self.process_tx();
                        self.process_rx();
                    }
                    _ => self.process_event_queue(),
                }
            }
            other => log::warn!(
                "virtio-vsock: unexpected event {other} (fd {})",
                events.fd()
            ),
        }
    }
}
