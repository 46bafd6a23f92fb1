//! The ioctl request numbers the filters allow, grouped by the file they are made on.
//!
//! kvm-ioctls keeps its numbers private, so they are derived here from the kernel's uapi
//! definitions (`include/uapi/linux/kvm.h`) with vmm-sys-util's `_IOC` helpers; the sizes come
//! from kvm-bindings, so a number cannot drift from the structure the call passes.

use kvm_bindings::{
    kvm_clear_dirty_log, kvm_clock_data, kvm_cpuid2, kvm_debugregs, kvm_dirty_log, kvm_enable_cap,
    kvm_fpu, kvm_ioeventfd, kvm_irqchip, kvm_irqfd, kvm_lapic_state, kvm_mp_state, kvm_msr_list,
    kvm_msrs, kvm_pit_config, kvm_pit_state2, kvm_regs, kvm_sregs, kvm_userspace_memory_region,
    kvm_vcpu_events, kvm_xcrs, kvm_xsave,
};
use vmm_sys_util::{ioctl_io_nr, ioctl_ior_nr, ioctl_iow_nr, ioctl_iowr_nr};

const KVMIO: u32 = 0xAE;
const BLK: u32 = 0x12;

// /dev/kvm
ioctl_io_nr!(KVM_GET_API_VERSION, KVMIO, 0x00);
ioctl_io_nr!(KVM_CREATE_VM, KVMIO, 0x01);
ioctl_iowr_nr!(KVM_GET_MSR_INDEX_LIST, KVMIO, 0x02, kvm_msr_list);
ioctl_io_nr!(KVM_CHECK_EXTENSION, KVMIO, 0x03);
ioctl_io_nr!(KVM_GET_VCPU_MMAP_SIZE, KVMIO, 0x04);
ioctl_iowr_nr!(KVM_GET_SUPPORTED_CPUID, KVMIO, 0x05, kvm_cpuid2);
ioctl_iowr_nr!(KVM_GET_MSR_FEATURE_INDEX_LIST, KVMIO, 0x0a, kvm_msr_list);
// VM fd
ioctl_io_nr!(KVM_CREATE_VCPU, KVMIO, 0x41);
ioctl_iow_nr!(KVM_GET_DIRTY_LOG, KVMIO, 0x42, kvm_dirty_log);
ioctl_iow_nr!(
    KVM_SET_USER_MEMORY_REGION,
    KVMIO,
    0x46,
    kvm_userspace_memory_region
);
ioctl_io_nr!(KVM_SET_TSS_ADDR, KVMIO, 0x47);
ioctl_iow_nr!(KVM_SET_IDENTITY_MAP_ADDR, KVMIO, 0x48, u64);
ioctl_io_nr!(KVM_CREATE_IRQCHIP, KVMIO, 0x60);
ioctl_iowr_nr!(KVM_GET_IRQCHIP, KVMIO, 0x62, kvm_irqchip);
ioctl_ior_nr!(KVM_SET_IRQCHIP, KVMIO, 0x63, kvm_irqchip);
ioctl_iow_nr!(KVM_IRQFD, KVMIO, 0x76, kvm_irqfd);
ioctl_iow_nr!(KVM_CREATE_PIT2, KVMIO, 0x77, kvm_pit_config);
ioctl_iow_nr!(KVM_IOEVENTFD, KVMIO, 0x79, kvm_ioeventfd);
ioctl_iow_nr!(KVM_SET_CLOCK, KVMIO, 0x7b, kvm_clock_data);
ioctl_ior_nr!(KVM_GET_CLOCK, KVMIO, 0x7c, kvm_clock_data);
ioctl_ior_nr!(KVM_GET_PIT2, KVMIO, 0x9f, kvm_pit_state2);
ioctl_iow_nr!(KVM_SET_PIT2, KVMIO, 0xa0, kvm_pit_state2);
ioctl_iow_nr!(KVM_ENABLE_CAP, KVMIO, 0xa3, kvm_enable_cap);
ioctl_iowr_nr!(KVM_CLEAR_DIRTY_LOG, KVMIO, 0xc0, kvm_clear_dirty_log);
// vCPU fd
ioctl_io_nr!(KVM_RUN, KVMIO, 0x80);
ioctl_ior_nr!(KVM_GET_REGS, KVMIO, 0x81, kvm_regs);
ioctl_iow_nr!(KVM_SET_REGS, KVMIO, 0x82, kvm_regs);
ioctl_ior_nr!(KVM_GET_SREGS, KVMIO, 0x83, kvm_sregs);
ioctl_iow_nr!(KVM_SET_SREGS, KVMIO, 0x84, kvm_sregs);
ioctl_iowr_nr!(KVM_GET_MSRS, KVMIO, 0x88, kvm_msrs);
ioctl_iow_nr!(KVM_SET_MSRS, KVMIO, 0x89, kvm_msrs);
ioctl_ior_nr!(KVM_GET_FPU, KVMIO, 0x8c, kvm_fpu);
ioctl_iow_nr!(KVM_SET_FPU, KVMIO, 0x8d, kvm_fpu);
ioctl_ior_nr!(KVM_GET_LAPIC, KVMIO, 0x8e, kvm_lapic_state);
ioctl_iow_nr!(KVM_SET_LAPIC, KVMIO, 0x8f, kvm_lapic_state);
ioctl_iow_nr!(KVM_SET_CPUID2, KVMIO, 0x90, kvm_cpuid2);
ioctl_iowr_nr!(KVM_GET_CPUID2, KVMIO, 0x91, kvm_cpuid2);
ioctl_ior_nr!(KVM_GET_MP_STATE, KVMIO, 0x98, kvm_mp_state);
ioctl_iow_nr!(KVM_SET_MP_STATE, KVMIO, 0x99, kvm_mp_state);
ioctl_ior_nr!(KVM_GET_VCPU_EVENTS, KVMIO, 0x9f, kvm_vcpu_events);
ioctl_iow_nr!(KVM_SET_VCPU_EVENTS, KVMIO, 0xa0, kvm_vcpu_events);
ioctl_ior_nr!(KVM_GET_DEBUGREGS, KVMIO, 0xa1, kvm_debugregs);
ioctl_iow_nr!(KVM_SET_DEBUGREGS, KVMIO, 0xa2, kvm_debugregs);
ioctl_ior_nr!(KVM_GET_XSAVE, KVMIO, 0xa4, kvm_xsave);
ioctl_iow_nr!(KVM_SET_XSAVE, KVMIO, 0xa5, kvm_xsave);
ioctl_ior_nr!(KVM_GET_XCRS, KVMIO, 0xa6, kvm_xcrs);
ioctl_iow_nr!(KVM_SET_XCRS, KVMIO, 0xa7, kvm_xcrs);
ioctl_ior_nr!(KVM_GET_XSAVE2, KVMIO, 0xcf, kvm_xsave);
// Block devices (linux/fs.h)
ioctl_io_nr!(BLKSSZGET, BLK, 104);
ioctl_ior_nr!(BLKGETSIZE64, BLK, 114, u64);
ioctl_io_nr!(BLKDISCARD, BLK, 119);
ioctl_io_nr!(BLKZEROOUT, BLK, 127);

/// `/dev/kvm` itself: opening the VM and learning what the host supports (builder only).
pub fn kvm_system() -> Vec<u64> {
    vec![
        KVM_GET_API_VERSION(),
        KVM_CREATE_VM(),
        KVM_GET_MSR_INDEX_LIST(),
        KVM_CHECK_EXTENSION(),
        KVM_GET_VCPU_MMAP_SIZE(),
        KVM_GET_SUPPORTED_CPUID(),
        KVM_GET_MSR_FEATURE_INDEX_LIST(),
    ]
}

/// Building a VM: vCPUs, the in-kernel irqchip and PIT, memory slots, ioeventfds and irqfds.
pub fn kvm_vm_build() -> Vec<u64> {
    vec![
        KVM_CREATE_VCPU(),
        KVM_SET_TSS_ADDR(),
        KVM_SET_IDENTITY_MAP_ADDR(),
        KVM_CREATE_IRQCHIP(),
        KVM_CREATE_PIT2(),
        KVM_IRQFD(),
        KVM_IOEVENTFD(),
        KVM_ENABLE_CAP(),
        KVM_CHECK_EXTENSION(),
    ]
}

/// The VM-wide state a snapshot or migration saves and restores, and the memory slots whose
/// dirty logging it turns on and off.
pub fn kvm_vm_state() -> Vec<u64> {
    vec![
        KVM_SET_USER_MEMORY_REGION(),
        KVM_GET_DIRTY_LOG(),
        KVM_CLEAR_DIRTY_LOG(),
        KVM_GET_IRQCHIP(),
        KVM_SET_IRQCHIP(),
        KVM_GET_CLOCK(),
        KVM_SET_CLOCK(),
        KVM_GET_PIT2(),
        KVM_SET_PIT2(),
    ]
}

/// Turning on manual dirty-log protection when a migration or diff snapshot starts tracking.
pub fn kvm_dirty_log_setup() -> Vec<u64> {
    vec![KVM_CHECK_EXTENSION(), KVM_ENABLE_CAP()]
}

/// A vCPU fd: running it, and saving/restoring its state (done on the vCPU's own thread).
pub fn kvm_vcpu() -> Vec<u64> {
    vec![
        KVM_RUN(),
        KVM_GET_REGS(),
        KVM_SET_REGS(),
        KVM_GET_SREGS(),
        KVM_SET_SREGS(),
        KVM_GET_MSRS(),
        KVM_SET_MSRS(),
        KVM_GET_FPU(),
        KVM_SET_FPU(),
        KVM_GET_LAPIC(),
        KVM_SET_LAPIC(),
        KVM_SET_CPUID2(),
        KVM_GET_CPUID2(),
        KVM_GET_MP_STATE(),
        KVM_SET_MP_STATE(),
        KVM_GET_VCPU_EVENTS(),
        KVM_SET_VCPU_EVENTS(),
        KVM_GET_DEBUGREGS(),
        KVM_SET_DEBUGREGS(),
        KVM_GET_XSAVE(),
        KVM_SET_XSAVE(),
        KVM_GET_XCRS(),
        KVM_SET_XCRS(),
        KVM_GET_XSAVE2(),
    ]
}

/// Opening and configuring a tap or macvtap, and the interface flags/MTU on a helper socket.
pub fn tap_setup() -> Vec<u64> {
    vec![
        libc::TUNSETIFF,
        libc::TUNGETIFF,
        libc::TUNSETVNETHDRSZ,
        libc::TUNSETOFFLOAD,
        libc::TUNSETQUEUE,
        libc::SIOCGIFFLAGS,
        libc::SIOCSIFFLAGS,
        libc::SIOCSIFMTU,
    ]
}

/// The tap ioctls a running guest can cause, on the vCPU thread that writes the status register
/// or on the device thread (control queue): the offloads follow the features the driver
/// accepted, and a multiqueue tap's queues are attached or detached as the driver enables queue
/// pairs (at activation, and with the control queue's MQ command).
pub fn tap_running() -> Vec<u64> {
    vec![libc::TUNSETOFFLOAD, libc::TUNSETQUEUE]
}

/// Block devices: size and sector size when opened or resized.
pub fn blk_info() -> Vec<u64> {
    vec![BLKGETSIZE64(), BLKSSZGET()]
}

/// Block devices: discard and write-zeroes requests of the synchronous engine.
pub fn blk_io() -> Vec<u64> {
    vec![BLKDISCARD(), BLKZEROOUT()]
}

/// The terminal (raw mode for the serial console, colour detection of the log) and the
/// non-blocking/close-on-exec switches std and tokio use on sockets.
pub fn tty_and_fd() -> Vec<u64> {
    vec![
        libc::TCGETS,
        libc::TCSETS,
        libc::TCSETSW,
        libc::TCSETSF,
        libc::TIOCGWINSZ,
        libc::FIONBIO,
        libc::FIOCLEX,
        libc::FIONCLEX,
    ]
}
