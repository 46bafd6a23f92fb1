//! Initial vCPU register state for the two entry protocols ferry supports.
//!
//! * Linux 64-bit boot protocol: long mode with paging on (identity map of the first 4 GiB),
//!   RSI = zero page, as `Documentation/x86/boot.rst` describes for 64-bit entry.
//! * PVH: 32-bit protected mode, paging off, EBX = `hvm_start_info`, per the Xen PVH ABI.

use kvm_bindings::{kvm_fpu, kvm_regs, kvm_sregs, Msrs};
use kvm_ioctls::VcpuFd;
use vm_memory::{Bytes, GuestAddress};

use crate::gdt::{gdt_entry, kvm_segment_from_gdt, CODE32, CODE64, DATA, TSS};
use crate::layout::{
    BOOT_STACK_POINTER, GDT_ADDR, IDT_ADDR, PDPT_ADDR, PD_ADDR, PD_COUNT, PML4_ADDR, PVH_INFO_ADDR,
    ZERO_PAGE_ADDR,
};
use crate::GuestMemory;

const X86_CR0_PE: u64 = 1 << 0;
const X86_CR0_ET: u64 = 1 << 4;
const X86_CR0_PG: u64 = 1 << 31;
const X86_CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;

/// How the kernel is entered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum BootProtocol {
    /// 64-bit Linux boot protocol at `entry` with the zero page in RSI.
    Linux64,
    /// PVH 32-bit entry with `hvm_start_info` in EBX.
    Pvh,
}

/// Why the boot state could not be set.
#[derive(Debug, thiserror::Error)]
pub enum RegsError {
    #[error("writing boot tables into guest memory: {0}")]
    GuestMemory(#[from] vm_memory::GuestMemoryError),
    #[error("{what}: {source}")]
    Kvm {
        what: &'static str,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("building the MSR list: {0}")]
    Msrs(String),
}

fn kvm(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> RegsError {
    move |source| RegsError::Kvm { what, source }
}

/// Writes the GDT and empty IDT shared by both protocols, and for Linux64 the identity page tables.
/// Called once per VM, before any vCPU is configured.
pub fn write_boot_tables(mem: &GuestMemory, protocol: BootProtocol) -> Result<(), RegsError> {
    for (i, entry) in boot_gdt(protocol).iter().enumerate() {
        mem.write_obj(*entry, GuestAddress(GDT_ADDR + i as u64 * 8))?;
    }
    mem.write_obj(0u64, GuestAddress(IDT_ADDR))?;
    if protocol == BootProtocol::Linux64 {
        write_identity_page_tables(mem)?;
    }
    Ok(())
}

fn boot_gdt(protocol: BootProtocol) -> [u64; 4] {
    let code = match protocol {
        BootProtocol::Linux64 => CODE64,
        BootProtocol::Pvh => CODE32,
    };
    [
        0,
        gdt_entry(code, 0, 0xfffff),
        gdt_entry(DATA, 0, 0xfffff),
        gdt_entry(TSS, 0, 0xfffff),
    ]
}

/// Identity-maps the first `PD_COUNT` GiB with 2 MiB pages.
fn write_identity_page_tables(mem: &GuestMemory) -> Result<(), RegsError> {
    mem.write_obj(PDPT_ADDR | 0x3, GuestAddress(PML4_ADDR))?;
    let mut pd = [0u8; 4096];
    for dir in 0..PD_COUNT {
        let pd_addr = PD_ADDR + dir * 0x1000;
        mem.write_obj(pd_addr | 0x3, GuestAddress(PDPT_ADDR + dir * 8))?;
        for (i, entry) in pd.chunks_exact_mut(8).enumerate() {
            // Present, writable, 2 MiB page.
            let pde = ((dir << 30) + ((i as u64) << 21)) | 0x83;
            entry.copy_from_slice(&pde.to_le_bytes());
        }
        mem.write_slice(&pd, GuestAddress(pd_addr))?;
    }
    Ok(())
}

/// Sets segment and control registers for `protocol`.
pub fn setup_sregs(vcpu: &VcpuFd, protocol: BootProtocol) -> Result<(), RegsError> {
    let mut sregs: kvm_sregs = vcpu.get_sregs().map_err(kvm("KVM_GET_SREGS"))?;
    let gdt = boot_gdt(protocol);
    let code = kvm_segment_from_gdt(gdt[1], 1);
    let data = kvm_segment_from_gdt(gdt[2], 2);
    let tss = kvm_segment_from_gdt(gdt[3], 3);
    sregs.gdt.base = GDT_ADDR;
    sregs.gdt.limit = (gdt.len() * 8 - 1) as u16;
    sregs.idt.base = IDT_ADDR;
    sregs.idt.limit = 7;
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = tss;
    match protocol {
        BootProtocol::Linux64 => {
            sregs.cr0 |= X86_CR0_PE | X86_CR0_PG | X86_CR0_ET;
            sregs.cr3 = PML4_ADDR;
            sregs.cr4 |= X86_CR4_PAE;
            sregs.efer |= EFER_LME | EFER_LMA;
        }
        BootProtocol::Pvh => {
            sregs.cr0 = X86_CR0_PE | X86_CR0_ET;
            sregs.cr4 = 0;
            sregs.efer = 0;
        }
    }
    vcpu.set_sregs(&sregs).map_err(kvm("KVM_SET_SREGS"))
}

/// Sets general registers: entry point, stack and the boot-information pointer.
pub fn setup_regs(vcpu: &VcpuFd, protocol: BootProtocol, entry: u64) -> Result<(), RegsError> {
    let mut regs = kvm_regs {
        rflags: 0x2,
        rip: entry,
        ..Default::default()
    };
    match protocol {
        BootProtocol::Linux64 => {
            regs.rsp = BOOT_STACK_POINTER;
            regs.rbp = BOOT_STACK_POINTER;
            regs.rsi = ZERO_PAGE_ADDR;
        }
        BootProtocol::Pvh => regs.rbx = PVH_INFO_ADDR,
    }
    vcpu.set_regs(&regs).map_err(kvm("KVM_SET_REGS"))
}

/// x87 control word and MXCSR as after FNINIT / reset.
pub fn setup_fpu(vcpu: &VcpuFd) -> Result<(), RegsError> {
    let fpu = kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    };
    vcpu.set_fpu(&fpu).map_err(kvm("KVM_SET_FPU"))
}

const MSR_IA32_SYSENTER_CS: u32 = 0x174;
const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
const MSR_STAR: u32 = 0xc000_0081;
const MSR_LSTAR: u32 = 0xc000_0082;
const MSR_CSTAR: u32 = 0xc000_0083;
const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
const MSR_IA32_TSC: u32 = 0x10;
const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
const MISC_ENABLE_FAST_STRING: u64 = 1;
/// MTRRs enabled, default type write-back.
const MTRR_ENABLE_WB: u64 = (1 << 11) | 6;

/// The MSRs every boot starts from: syscall MSRs cleared, fast strings on, MTRRs write-back.
pub fn boot_msr_entries() -> Vec<(u32, u64)> {
    vec![
        (MSR_IA32_SYSENTER_CS, 0),
        (MSR_IA32_SYSENTER_ESP, 0),
        (MSR_IA32_SYSENTER_EIP, 0),
        (MSR_STAR, 0),
        (MSR_CSTAR, 0),
        (MSR_KERNEL_GS_BASE, 0),
        (MSR_SYSCALL_MASK, 0),
        (MSR_LSTAR, 0),
        (MSR_IA32_TSC, 0),
        (MSR_IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
        (MSR_MTRR_DEF_TYPE, MTRR_ENABLE_WB),
    ]
}

/// Writes [`boot_msr_entries`].
pub fn setup_msrs(vcpu: &VcpuFd) -> Result<(), RegsError> {
    let entries: Vec<kvm_bindings::kvm_msr_entry> = boot_msr_entries()
        .into_iter()
        .map(|(index, data)| kvm_bindings::kvm_msr_entry {
            index,
            data,
            ..Default::default()
        })
        .collect();
    let msrs = Msrs::from_entries(&entries).map_err(|e| RegsError::Msrs(format!("{e:?}")))?;
    let written = vcpu.set_msrs(&msrs).map_err(kvm("KVM_SET_MSRS"))?;
    if written != entries.len() {
        // An MSR the host refused: name it, the guest may still boot.
        log::warn!(
            "KVM accepted {written} of {} boot MSRs (first refused: {:#x})",
            entries.len(),
            entries[written].index
        );
    }
    Ok(())
}

const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

/// LINT0 delivers the 8259's ExtINT and LINT1 delivers NMI, as firmware leaves them.
pub fn setup_lint(vcpu: &VcpuFd) -> Result<(), RegsError> {
    let mut lapic = vcpu.get_lapic().map_err(kvm("KVM_GET_LAPIC"))?;
    for (offset, mode) in [(APIC_LVT0, APIC_MODE_EXTINT), (APIC_LVT1, APIC_MODE_NMI)] {
        let reg = read_lapic_reg(&lapic.regs, offset);
        write_lapic_reg(&mut lapic.regs, offset, (reg & !0x700) | (mode << 8));
    }
    vcpu.set_lapic(&lapic).map_err(kvm("KVM_SET_LAPIC"))
}

fn read_lapic_reg(regs: &[std::os::raw::c_char], offset: usize) -> u32 {
    let bytes: [u8; 4] = std::array::from_fn(|i| regs[offset + i] as u8);
    u32::from_le_bytes(bytes)
}

fn write_lapic_reg(regs: &mut [std::os::raw::c_char], offset: usize, value: u32) {
    for (i, b) in value.to_le_bytes().iter().enumerate() {
        regs[offset + i] = *b as std::os::raw::c_char;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryBackend;

    fn mem() -> GuestMemory {
        GuestMemory::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap()
    }

    #[test]
    fn page_tables_identity_map_four_gib() {
        let mem = mem();
        write_boot_tables(&mem, BootProtocol::Linux64).unwrap();
        let pml4: u64 = mem.read_obj(GuestAddress(PML4_ADDR)).unwrap();
        assert_eq!(pml4, PDPT_ADDR | 3);
        for dir in 0..PD_COUNT {
            let pdpte: u64 = mem.read_obj(GuestAddress(PDPT_ADDR + dir * 8)).unwrap();
            assert_eq!(pdpte, (PD_ADDR + dir * 0x1000) | 3);
        }
        // The last 2 MiB page below 4 GiB.
        let last: u64 = mem
            .read_obj(GuestAddress(PD_ADDR + 3 * 0x1000 + 511 * 8))
            .unwrap();
        assert_eq!(last, ((4u64 << 30) - (2 << 20)) | 0x83);
        assert!(mem
            .check_address(GuestAddress(PD_ADDR + PD_COUNT * 0x1000 - 1))
            .is_some());
    }

    #[test]
    fn pvh_gdt_has_32bit_code_and_no_page_tables() {
        let mem = mem();
        write_boot_tables(&mem, BootProtocol::Pvh).unwrap();
        let code: u64 = mem.read_obj(GuestAddress(GDT_ADDR + 8)).unwrap();
        assert_eq!(code, gdt_entry(CODE32, 0, 0xfffff));
        let pml4: u64 = mem.read_obj(GuestAddress(PML4_ADDR)).unwrap();
        assert_eq!(pml4, 0);
    }

    #[test]
    fn lapic_register_helpers_round_trip() {
        let mut regs = [0 as std::os::raw::c_char; 1024];
        write_lapic_reg(&mut regs, APIC_LVT0, 0x0001_0700);
        assert_eq!(read_lapic_reg(&regs, APIC_LVT0), 0x0001_0700);
    }
}
