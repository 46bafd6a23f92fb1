//! Applying a custom CPU template (`ferry_api::CpuTemplate`, from `PUT /cpu-config` or
//! `--cpu-template`) to a vCPU: CPUID registers after ferry's own filtering, MSRs after ferry's
//! boot values, so the template has the last word, as in Firecracker.

use kvm_bindings::{kvm_msr_entry, CpuId, Msrs};
use kvm_ioctls::{Kvm, VcpuFd};

use ferry_api::{CpuidModifier, CpuidRegister, KvmCapability, MsrModifier};

use crate::error::VmmError;

/// Sets, clears or keeps the template's bits in the CPUID KVM will give the vCPU. A leaf the host
/// does not report cannot be modified: that is a configuration error, not a silent no-op.
pub fn apply_cpuid(cpuid: &mut CpuId, modifiers: &[CpuidModifier]) -> Result<(), VmmError> {
    for m in modifiers {
        let entry = cpuid
            .as_mut_slice()
            .iter_mut()
            .find(|e| e.function == m.leaf && e.index == m.subleaf)
            .ok_or_else(|| {
                VmmError::Config(format!(
                    "CPU template: CPUID leaf {:#x} subleaf {:#x} is not reported by this host's KVM",
                    m.leaf, m.subleaf
                ))
            })?;
        let register = match m.register {
            CpuidRegister::Eax => &mut entry.eax,
            CpuidRegister::Ebx => &mut entry.ebx,
            CpuidRegister::Ecx => &mut entry.ecx,
            CpuidRegister::Edx => &mut entry.edx,
        };
        *register = (*register & !m.mask) | (m.value & m.mask);
    }
    Ok(())
}

/// Reads each MSR the template names, changes its bits and writes it back.
pub fn apply_msrs(vcpu: &VcpuFd, modifiers: &[MsrModifier]) -> Result<(), VmmError> {
    for m in modifiers {
        let refused = || {
            VmmError::Config(format!(
                "CPU template: KVM does not let the guest have MSR {:#x}",
                m.addr
            ))
        };
        let mut msrs = Msrs::from_entries(&[kvm_msr_entry {
            index: m.addr,
            ..Default::default()
        }])
        .map_err(|e| VmmError::Device(format!("MSR list: {e:?}")))?;
        let read = vcpu
            .get_msrs(&mut msrs)
            .map_err(|e| VmmError::Kvm("KVM_GET_MSRS", e))?;
        if read != 1 {
            return Err(refused());
        }
        let entry = &mut msrs.as_mut_slice()[0];
        entry.data = (entry.data & !m.mask) | (m.value & m.mask);
        let written = vcpu
            .set_msrs(&msrs)
            .map_err(|e| VmmError::Kvm("KVM_SET_MSRS", e))?;
        if written != 1 {
            return Err(refused());
        }
    }
    Ok(())
}

/// A template may require KVM capabilities (`"N"`); `"!N"` only tells Firecracker not to check
/// one of its defaults, which ferry does not have, so it is accepted as is.
pub fn check_kvm_capabilities(kvm: &Kvm, caps: &[KvmCapability]) -> Result<(), VmmError> {
    for cap in caps.iter().filter(|c| c.required) {
        if kvm.check_extension_raw(u64::from(cap.cap)) <= 0 {
            return Err(VmmError::Config(format!(
                "CPU template: this host's KVM lacks capability {}",
                cap.cap
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvm_bindings::kvm_cpuid_entry2;

    #[test]
    fn cpuid_bits_are_set_cleared_and_kept() {
        let mut cpuid = CpuId::from_entries(&[
            kvm_cpuid_entry2 {
                function: 7,
                index: 0,
                ebx: 0b1111_0000,
                ..Default::default()
            },
            kvm_cpuid_entry2 {
                function: 1,
                index: 0,
                ecx: 0x8000_0001,
                ..Default::default()
            },
        ])
        .unwrap();
        let modifiers = [
            CpuidModifier {
                leaf: 7,
                subleaf: 0,
                register: CpuidRegister::Ebx,
                mask: 0b1010_0101,
                value: 0b0000_0101,
            },
            CpuidModifier {
                leaf: 1,
                subleaf: 0,
                register: CpuidRegister::Ecx,
                mask: 1 << 31,
                value: 0,
            },
        ];
        apply_cpuid(&mut cpuid, &modifiers).unwrap();
        let e = cpuid.as_slice();
        assert_eq!(e[0].ebx, 0b0101_0101);
        assert_eq!(e[1].ecx, 1);
        let missing = [CpuidModifier {
            leaf: 0x4000_0000,
            subleaf: 3,
            register: CpuidRegister::Eax,
            mask: 1,
            value: 1,
        }];
        let err = apply_cpuid(&mut cpuid, &missing).unwrap_err().to_string();
        assert!(err.contains("0x40000000"), "{err}");
    }
}
