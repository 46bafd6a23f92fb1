//! Applying a CPU template (`ferry_api::CpuTemplate`: a custom one from `PUT /cpu-config` or
//! `--cpu-template FILE`, or a static one by name, `machine-config.cpu_template`) to a vCPU:
//! CPUID registers after ferry's own filtering, MSRs after ferry's boot values, so the template
//! has the last word, as in Firecracker.

use kvm_bindings::{kvm_msr_entry, CpuId, Msrs};
use kvm_ioctls::{Kvm, VcpuFd};

use ferry_api::{
    CpuTemplate, CpuVendor, CpuidModifier, CpuidRegister, KvmCapability, MsrModifier,
    StaticCpuTemplate, VmConfig,
};

use crate::error::VmmError;

/// The template every vCPU gets, checked against the host: a static template written for the
/// other CPU vendor is refused (Firecracker refuses it too: the guest would see a CPU that cannot
/// exist). `host` is KVM's supported CPUID, whose leaf 0 and 1 are the host's vendor and
/// signature.
pub fn resolve(config: &VmConfig, host: &CpuId) -> Result<Option<CpuTemplate>, VmmError> {
    let name = config.machine.cpu_template;
    if config.cpu_template.is_none() && !name.is_none() {
        check_static_template(name, host)?;
    }
    Ok(config.effective_cpu_template())
}

fn check_static_template(name: StaticCpuTemplate, host: &CpuId) -> Result<(), VmmError> {
    let leaf = |function: u32| {
        host.as_slice()
            .iter()
            .find(|e| e.function == function && e.index == 0)
    };
    let vendor = leaf(0).and_then(|e| CpuVendor::from_leaf0(e.ebx, e.ecx, e.edx));
    if vendor != name.vendor() {
        let host = vendor.map_or_else(|| "an unknown vendor's".to_string(), |v| v.to_string());
        let wanted = name.vendor().map_or_else(String::new, |v| v.to_string());
        return Err(VmmError::Config(format!(
            "CPU template {name} is for {wanted} CPUs; this host's CPU is {host}"
        )));
    }
    // Firecracker also refuses hosts other than the few models it validated each template on;
    // ferry applies the template there too (the masks only hide features) and says so once.
    let signature = leaf(1).map(|e| e.eax & 0x0fff_3fff);
    if !signature.is_some_and(|s| name.validated_signatures().contains(&s)) {
        log::warn!(
            "CPU template {name}: this host's CPU (signature {:#x}) is not one Firecracker \
             validates the template on; applying it anyway",
            signature.unwrap_or_default()
        );
    }
    Ok(())
}

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

    /// A leaf 0 of the given vendor string and a leaf 1 signature.
    fn host(vendor: &[u8; 12], signature: u32) -> CpuId {
        let word =
            |i: usize| u32::from_le_bytes([vendor[i], vendor[i + 1], vendor[i + 2], vendor[i + 3]]);
        CpuId::from_entries(&[
            kvm_cpuid_entry2 {
                function: 0,
                ebx: word(0),
                edx: word(4),
                ecx: word(8),
                ..Default::default()
            },
            kvm_cpuid_entry2 {
                function: 1,
                eax: signature,
                ..Default::default()
            },
        ])
        .unwrap()
    }

    #[test]
    fn static_templates_are_refused_on_the_other_vendor() {
        let intel = host(b"GenuineIntel", 0x000c_06f2);
        let amd = host(b"AuthenticAMD", 0x00a0_0f11);
        let mut config = VmConfig::default();
        config.set_static_cpu_template(StaticCpuTemplate::T2);
        assert_eq!(
            resolve(&config, &intel).unwrap(),
            Some(StaticCpuTemplate::T2.template()),
            "an Intel model Firecracker does not list: applied (with a warning)"
        );
        let err = resolve(&config, &amd).unwrap_err().to_string();
        assert!(
            err.contains("T2 is for Intel CPUs; this host's CPU is AMD"),
            "{err}"
        );
        config.set_static_cpu_template(StaticCpuTemplate::T2A);
        assert!(resolve(&config, &amd).unwrap().is_some());
        let err = resolve(&config, &intel).unwrap_err().to_string();
        assert!(err.contains("T2A is for AMD CPUs"), "{err}");
        let other = host(b"HygonGenuine", 0);
        assert!(resolve(&config, &other).is_err());
        // A custom template is not checked against a vendor (Firecracker does not either).
        config.set_custom_cpu_template(ferry_api::CpuTemplate::default());
        assert!(resolve(&config, &intel).unwrap().is_some());
        config.set_static_cpu_template(StaticCpuTemplate::None);
        assert_eq!(resolve(&config, &intel).unwrap(), None);
    }
}
