//! Opening /dev/kvm with errors a user can act on, and host checks.

use std::path::Path;

use kvm_ioctls::{Cap, Kvm};

use crate::error::VmmError;

/// Capabilities ferry cannot work without.
const REQUIRED_CAPS: &[(Cap, &str)] = &[
    (Cap::Irqchip, "in-kernel irqchip"),
    (Cap::Ioeventfd, "ioeventfd"),
    (Cap::Irqfd, "irqfd"),
    (Cap::UserMemory, "user memory regions"),
    (Cap::SetTssAddr, "TSS address"),
    (Cap::Pit2, "in-kernel PIT"),
    (Cap::ExtCpuid, "KVM_GET_SUPPORTED_CPUID"),
];

/// Opens /dev/kvm, checks the API version and required capabilities.
pub fn open_kvm() -> Result<Kvm, VmmError> {
    let kvm = Kvm::new().map_err(|e| match e.errno() {
        libc::ENOENT => VmmError::KvmMissing,
        libc::EACCES | libc::EPERM => VmmError::KvmPermission,
        _ => VmmError::Kvm("opening /dev/kvm", e),
    })?;
    let version = kvm.get_api_version();
    if version != 12 {
        return Err(VmmError::KvmApiVersion(version));
    }
    for (cap, name) in REQUIRED_CAPS {
        if !kvm.check_extension(*cap) {
            return Err(VmmError::KvmCapability(name));
        }
    }
    warn_if_pvm();
    Ok(kvm)
}

/// True when the host's KVM is PVM (software nested virtualization), under which a guest kernel
/// without PVM support runs its ring-0 code in KVM's instruction emulator.
pub fn host_is_pvm() -> bool {
    Path::new("/sys/module/kvm_pvm").exists()
}

fn warn_if_pvm() {
    if host_is_pvm() {
        log::warn!(
            "host KVM is PVM (kvm_pvm): guest kernels without PVM support run their ring-0 code \
             under instruction emulation, thousands of times slower than on hardware KVM"
        );
    }
}
