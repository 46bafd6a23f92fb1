//! Transmit: guest → backend.
//!
//! Each chain (vnet header + frame, device-readable only) is handed to the backend with one
//! `writev` straight from guest memory: no copy. The backend fd is non-blocking; on EAGAIN the
//! chain is put back (`next_avail` rewound, nothing reported to the guest), the pair waits for
//! EPOLLOUT, and sending resumes there. Malformed chains and frames the header check or the
//! kernel refuse are completed unsent and counted.
//!
//! Rate limiting: a well-formed frame takes one op and its length (without the vnet header)
//! from the TX limiter before the `writev`. Refused, the chain is put back the same way as on
//! EAGAIN and sending stops until the limiter's timer; no frame is dropped.

use virtio_queue::QueueT;
use vm_memory::{Bytes, GuestMemoryBackend};

use super::{
    admit_frame, avail_overrun, notify_guest, Active, Net, NetMetrics, ETH_HLEN, MAX_CHAIN_DESCS,
    MAX_FRAME_LEN,
};
use crate::net::vnet::{check_tx_header, VNET_HDR_LEN};
use crate::GuestMemory;

/// Frames sent per pass before other events get a turn (the queue is re-kicked to continue).
const TX_BATCH: usize = 256;

/// Why a TX chain was refused.
#[derive(Debug, PartialEq, Eq)]
enum BadTx {
    /// Malformed chain (counted in `bad_chains`).
    Chain,
    /// Header uses offloads not negotiated (counted in `tx_dropped`).
    Header,
}

impl Net {
    /// Sends the frames the guest queued on pair `p`. Returns whether a batch limit stopped it
    /// with work left (the caller re-kicks the queue).
    pub(super) fn process_tx(&mut self, a: &mut Active, p: usize) -> bool {
        let qi = 2 * p + 1;
        if !a.serves(qi) || self.pairs[p].tx_blocked {
            return false;
        }
        let Some(fd) = self.backend.fd(p) else {
            return false;
        };
        let features = self.acked_features;
        let mut used = false;
        let mut frames = 0;
        let mut more = false;
        'outer: loop {
            if a.queues[qi].disable_notification(&a.mem).is_err() {
                Net::break_device(a, "cannot write the TX used ring");
                break;
            }
            loop {
                if frames >= TX_BATCH {
                    more = true;
                    break 'outer;
                }
                let q = &mut a.queues[qi];
                let Some(chain) = q.pop_descriptor_chain(&a.mem) else {
                    break;
                };
                let head = chain.head_index();
                frames += 1;
                let result =
                    build_iovecs(chain, &a.mem, &mut self.iovs.0).and_then(|(len, hdr)| {
                        check_tx_header(&hdr, features).map_err(|_| BadTx::Header)?;
                        Ok(len)
                    });
                match result {
                    Ok(len)
                        if !self.tx_limiter.is_unlimited()
                            && !admit_frame(
                                &mut self.tx_limiter,
                                len - VNET_HDR_LEN,
                                &self.metrics.tx_throttled,
                            ) =>
                    {
                        // Keep the chain for the limiter's timer: the guest has not seen it used.
                        self.iovs.0.clear();
                        q.set_next_avail(q.next_avail().wrapping_sub(1));
                        break 'outer;
                    }
                    Ok(len) => {
                        let iov = &self.iovs.0;
                        // SAFETY: every iovec points into guest memory checked by build_iovecs
                        // (inside one mapped region); the kernel only reads them.
                        let n = unsafe { libc::writev(fd, iov.as_ptr(), iov.len() as libc::c_int) };
                        self.iovs.0.clear();
                        if n < 0 {
                            let e = std::io::Error::last_os_error();
                            if e.kind() == std::io::ErrorKind::WouldBlock {
                                // Keep the chain for later: the guest has not seen it used.
                                q.set_next_avail(q.next_avail().wrapping_sub(1));
                                self.pairs[p].tx_blocked = true;
                                break 'outer;
                            }
                            // EINVAL (a header the kernel refuses), EIO (link down), ...
                            log::debug!("virtio-net: backend refused a frame: {e}");
                            NetMetrics::add(&self.metrics.tx_dropped, 1);
                        } else {
                            NetMetrics::add(&self.metrics.tx_frames, 1);
                            NetMetrics::add(&self.metrics.tx_bytes, (len - VNET_HDR_LEN) as u64);
                        }
                    }
                    Err(BadTx::Chain) => {
                        self.iovs.0.clear();
                        NetMetrics::add(&self.metrics.bad_chains, 1);
                        NetMetrics::add(&self.metrics.tx_dropped, 1);
                    }
                    Err(BadTx::Header) => {
                        self.iovs.0.clear();
                        NetMetrics::add(&self.metrics.tx_dropped, 1);
                    }
                }
                if q.add_used(&a.mem, head, 0).is_err() {
                    Net::break_device(a, "cannot write the TX used ring");
                    break 'outer;
                }
                used = true;
            }
            match a.queues[qi].enable_notification(&a.mem) {
                Ok(true) if avail_overrun(&a.queues[qi], &a.mem) => {
                    Net::break_device(a, "TX avail index is beyond the ring");
                    break;
                }
                Ok(true) => continue,
                Ok(false) => break,
                Err(_) => {
                    Net::break_device(a, "cannot read the TX avail ring");
                    break;
                }
            }
        }
        if used {
            notify_guest(&mut a.queues[qi], &a.mem, &a.interrupt);
        }
        more
    }
}

/// Fills `iovs` with host views of the chain's buffers; returns the total length and the vnet
/// header. Refuses device-writable descriptors, buffers outside one guest memory region, too
/// many descriptors, and sizes that cannot be a frame.
fn build_iovecs<I>(
    chain: I,
    mem: &GuestMemory,
    iovs: &mut Vec<libc::iovec>,
) -> Result<(usize, [u8; VNET_HDR_LEN]), BadTx>
where
    I: Iterator<Item = virtio_queue::desc::split::Descriptor>,
{
    iovs.clear();
    let mut hdr = [0u8; VNET_HDR_LEN];
    let mut total = 0usize;
    for (n, d) in chain.enumerate() {
        if n >= MAX_CHAIN_DESCS || d.is_write_only() {
            return Err(BadTx::Chain);
        }
        let len = d.len() as usize;
        if len == 0 {
            continue;
        }
        let slice = GuestMemoryBackend::get_slice(mem, d.addr(), len).map_err(|_| BadTx::Chain)?;
        if slice.len() != len {
            return Err(BadTx::Chain);
        }
        if total < VNET_HDR_LEN {
            let take = (VNET_HDR_LEN - total).min(len);
            mem.read_slice(&mut hdr[total..total + take], d.addr())
                .map_err(|_| BadTx::Chain)?;
        }
        total += len;
        if total > VNET_HDR_LEN + MAX_FRAME_LEN {
            return Err(BadTx::Chain);
        }
        iovs.push(libc::iovec {
            iov_base: slice.ptr_guard_mut().as_ptr().cast(),
            iov_len: len,
        });
    }
    if total < VNET_HDR_LEN + ETH_HLEN {
        return Err(BadTx::Chain);
    }
    Ok((total, hdr))
}
