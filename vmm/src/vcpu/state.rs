//! A vCPU's complete architectural state, serialisable: what migration and snapshots move.

use kvm_bindings::{
    kvm_debugregs, kvm_fpu, kvm_lapic_state, kvm_mp_state, kvm_msr_entry, kvm_regs, kvm_sregs,
    kvm_vcpu_events, kvm_xcrs, kvm_xsave, Msrs,
};
use kvm_ioctls::VcpuFd;
use serde::{Deserialize, Serialize};

/// MSRs that carry guest state beyond sregs: syscall setup, TSC and its deadline/adjust, PAT,
/// APIC base, MTRR default type, misc-enable, and kvmclock's pages.
const SAVED_MSRS: &[u32] = &[
    0x10,        // IA32_TSC
    0x1b,        // IA32_APIC_BASE
    0x3b,        // IA32_TSC_ADJUST
    0x174,       // SYSENTER_CS
    0x175,       // SYSENTER_ESP
    0x176,       // SYSENTER_EIP
    0x1a0,       // MISC_ENABLE
    0x277,       // PAT
    0x2ff,       // MTRR default type
    0x6e0,       // TSC_DEADLINE
    0xc000_0081, // STAR
    0xc000_0082, // LSTAR
    0xc000_0083, // CSTAR
    0xc000_0084, // SYSCALL_MASK
    0xc000_0102, // KERNEL_GS_BASE
    0xc000_0103, // TSC_AUX
    0x4b56_4d00, // kvmclock wall clock (new)
    0x4b56_4d01, // kvmclock system time (new)
    0x4b56_4d02, // async PF enable
    0x4b56_4d04, // PV EOI
];

/// Everything needed to resume a vCPU elsewhere.
#[derive(Debug, Serialize, Deserialize)]
pub struct VcpuState {
    pub regs: kvm_regs,
    pub sregs: kvm_sregs,
    /// `kvm_fpu` raw bytes, used when XSAVE is unavailable.
    pub fpu: Vec<u8>,
    pub xsave: Option<kvm_xsave>,
    pub xcrs: Option<kvm_xcrs>,
    pub lapic: kvm_lapic_state,
    pub mp_state: kvm_mp_state,
    pub events: kvm_vcpu_events,
    pub debug_regs: kvm_debugregs,
    /// (index, value) of every saved MSR the host supports.
    pub msrs: Vec<(u32, u64)>,
}

type KvmResult<T> = Result<T, kvm_ioctls::Error>;

impl VcpuState {
    /// A deep copy (the KVM structs are not `Clone`, but they are plain data).
    pub fn clone_state(&self) -> Self {
        // SAFETY: kvm_xsave is plain data; a bitwise copy is a valid value.
        let xsave = self
            .xsave
            .as_ref()
            .map(|x| unsafe { std::ptr::read(x as *const kvm_xsave) });
        Self {
            regs: self.regs,
            sregs: self.sregs,
            fpu: self.fpu.clone(),
            xsave,
            xcrs: self.xcrs,
            lapic: self.lapic,
            mp_state: self.mp_state,
            events: self.events,
            debug_regs: self.debug_regs,
            msrs: self.msrs.clone(),
        }
    }

    /// Reads the state of a vCPU that is not running.
    pub fn save(fd: &VcpuFd) -> KvmResult<Self> {
        let fpu = fd.get_fpu()?;
        // SAFETY: kvm_fpu is a plain C struct; viewing it as bytes is sound.
        let fpu_bytes = unsafe {
            std::slice::from_raw_parts(
                (&fpu as *const kvm_fpu).cast::<u8>(),
                std::mem::size_of::<kvm_fpu>(),
            )
        }
        .to_vec();
        Ok(Self {
            regs: fd.get_regs()?,
            sregs: fd.get_sregs()?,
            fpu: fpu_bytes,
            xsave: fd.get_xsave().ok(),
            xcrs: fd.get_xcrs().ok(),
            lapic: fd.get_lapic()?,
            mp_state: fd.get_mp_state()?,
            events: fd.get_vcpu_events()?,
            debug_regs: fd.get_debug_regs()?,
            msrs: read_msrs(fd),
        })
    }

    /// Applies the state to a vCPU that is not running. Order matters: sregs before MSRs (EFER,
    /// APIC base), LAPIC after MSRs, events last.
    pub fn restore(&self, fd: &VcpuFd) -> KvmResult<()> {
        fd.set_sregs(&self.sregs)?;
        fd.set_regs(&self.regs)?;
        if let Some(xsave) = &self.xsave {
            // SAFETY: the buffer came from KVM_GET_XSAVE of the same kind of vCPU.
            unsafe { fd.set_xsave(xsave)? };
        } else if self.fpu.len() == std::mem::size_of::<kvm_fpu>() {
            // SAFETY: length checked; kvm_fpu accepts any bit pattern.
            let fpu: kvm_fpu = unsafe { std::ptr::read_unaligned(self.fpu.as_ptr().cast()) };
            fd.set_fpu(&fpu)?;
        }
        if let Some(xcrs) = &self.xcrs {
            fd.set_xcrs(xcrs)?;
        }
        let entries: Vec<kvm_msr_entry> = self
            .msrs
            .iter()
            .map(|&(index, data)| kvm_msr_entry {
                index,
                data,
                ..Default::default()
            })
            .collect();
        if let Ok(msrs) = Msrs::from_entries(&entries) {
            let written = fd.set_msrs(&msrs)?;
            if written != entries.len() {
                log::warn!("restored {written} of {} MSRs", entries.len());
            }
        }
        fd.set_lapic(&self.lapic)?;
        fd.set_mp_state(self.mp_state)?;
        fd.set_debug_regs(&self.debug_regs)?;
        fd.set_vcpu_events(&self.events)?;
        Ok(())
    }
}

/// Reads every MSR of [`SAVED_MSRS`] the host knows, skipping the ones it refuses. One
/// KVM_GET_MSRS call in the usual case (it stops at the first MSR it cannot read; that one is
/// dropped and the rest read again), since each ioctl costs on the switchover's critical path.
fn read_msrs(fd: &VcpuFd) -> Vec<(u32, u64)> {
    let mut wanted: Vec<u32> = SAVED_MSRS.to_vec();
    let mut out = Vec::with_capacity(wanted.len());
    while !wanted.is_empty() {
        let entries: Vec<kvm_msr_entry> = wanted
            .iter()
            .map(|&index| kvm_msr_entry {
                index,
                ..Default::default()
            })
            .collect();
        let Ok(mut msrs) = Msrs::from_entries(&entries) else {
            break;
        };
        let read = fd.get_msrs(&mut msrs).unwrap_or(0);
        out.extend(msrs.as_slice()[..read].iter().map(|e| (e.index, e.data)));
        // Skip the MSR that stopped the read (if any) and continue after it.
        wanted.drain(..(read + 1).min(wanted.len()));
    }
    out
}
