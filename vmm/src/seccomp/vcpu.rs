//! vCPU threads (`ferry_vcpuN`): `KVM_RUN` and the port/MMIO exits it returns, which run the
//! device emulation the guest drives directly. This is the thread a hostile guest talks to
//! most, so its list is the narrowest: no files, no sockets, no new threads.

use super::common;
use super::ioctls;
use super::rules::{any, ioctl_in, Allow};

pub fn allows() -> Vec<Allow> {
    use libc::*;
    let mut v = common::runtime();
    v.extend([
        ioctl_in(
            ioctls::kvm_vcpu(),
            "KVM_RUN, and the vCPU state saved and restored on this thread (pause, snapshot, \
             migration)",
        ),
        ioctl_in(
            ioctls::tap_running(),
            "TUNSETOFFLOAD when the guest's virtio-net driver accepts its features, TUNSETQUEUE \
             for the queue pairs in use at activation (status register writes)",
        ),
        any(
            SYS_read,
            "eventfd reads of the exit-code and notification eventfds",
        ),
        any(
            SYS_fsync,
            "the serial console's file output is flushed when the guest ends",
        ),
    ]);
    v
}
