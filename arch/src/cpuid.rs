//! CPUID for each vCPU: KVM's supported list, with topology, APIC ids and the hypervisor bit set,
//! and any features the configuration hides removed.

use kvm_bindings::{kvm_cpuid_entry2, CpuId};

/// A CPUID feature bit that can be hidden from the guest by name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CpuFeature {
    pub name: &'static str,
    pub leaf: u32,
    pub subleaf: u32,
    pub register: Register,
    pub bit: u8,
}

/// A CPUID output register.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Register {
    Eax,
    Ebx,
    Ecx,
    Edx,
}

const fn feature(name: &'static str, leaf: u32, register: Register, bit: u8) -> CpuFeature {
    CpuFeature {
        name,
        leaf,
        subleaf: 0,
        register,
        bit,
    }
}

/// Features `--cpu-hide` understands (Linux `/proc/cpuinfo` names).
pub const HIDEABLE_FEATURES: &[CpuFeature] = &[
    feature("sse3", 1, Register::Ecx, 0),
    feature("pclmulqdq", 1, Register::Ecx, 1),
    feature("vmx", 1, Register::Ecx, 5),
    feature("ssse3", 1, Register::Ecx, 9),
    feature("fma", 1, Register::Ecx, 12),
    feature("cx16", 1, Register::Ecx, 13),
    feature("pcid", 1, Register::Ecx, 17),
    feature("sse4_1", 1, Register::Ecx, 19),
    feature("sse4_2", 1, Register::Ecx, 20),
    feature("x2apic", 1, Register::Ecx, 21),
    feature("movbe", 1, Register::Ecx, 22),
    feature("popcnt", 1, Register::Ecx, 23),
    feature("aes", 1, Register::Ecx, 25),
    feature("xsave", 1, Register::Ecx, 26),
    feature("avx", 1, Register::Ecx, 28),
    feature("f16c", 1, Register::Ecx, 29),
    feature("rdrand", 1, Register::Ecx, 30),
    feature("bmi1", 7, Register::Ebx, 3),
    feature("avx2", 7, Register::Ebx, 5),
    feature("bmi2", 7, Register::Ebx, 8),
    feature("erms", 7, Register::Ebx, 9),
    feature("avx512f", 7, Register::Ebx, 16),
    feature("rdseed", 7, Register::Ebx, 18),
    feature("adx", 7, Register::Ebx, 19),
    feature("sha_ni", 7, Register::Ebx, 29),
    feature("pdpe1gb", 0x8000_0001, Register::Edx, 26),
    feature("rdtscp", 0x8000_0001, Register::Edx, 27),
];

/// Looks up a hideable feature by name.
pub fn feature_by_name(name: &str) -> Option<&'static CpuFeature> {
    HIDEABLE_FEATURES.iter().find(|f| f.name == name)
}

const LEAF_FEATURES: u32 = 1;
const LEAF_CACHE: u32 = 4;
const LEAF_TOPOLOGY: u32 = 0xb;
const ECX_HYPERVISOR: u32 = 1 << 31;
const EDX_HTT: u32 = 1 << 28;
const TOPOLOGY_LEVEL_SMT: u32 = 1;
const TOPOLOGY_LEVEL_CORE: u32 = 2;

/// Bits of the APIC id that number the cores in one package of `cpus` single-thread cores.
fn core_id_bits(cpus: u8) -> u32 {
    (u32::from(cpus).max(1))
        .next_power_of_two()
        .trailing_zeros()
}

/// Adjusts `cpuid` (a copy of KVM's supported list) for vCPU `cpu_index` of `cpu_count`.
pub fn filter_cpuid(cpuid: &mut CpuId, cpu_index: u8, cpu_count: u8, hidden: &[CpuFeature]) {
    for entry in cpuid.as_mut_slice() {
        adjust_entry(entry, cpu_index, cpu_count);
        for feature in hidden {
            if entry.function == feature.leaf && entry.index == feature.subleaf {
                *register_mut(entry, feature.register) &= !(1 << feature.bit);
            }
        }
    }
}

fn register_mut(entry: &mut kvm_cpuid_entry2, register: Register) -> &mut u32 {
    match register {
        Register::Eax => &mut entry.eax,
        Register::Ebx => &mut entry.ebx,
        Register::Ecx => &mut entry.ecx,
        Register::Edx => &mut entry.edx,
    }
}

fn adjust_entry(entry: &mut kvm_cpuid_entry2, cpu_index: u8, cpu_count: u8) {
    let apic_id = u32::from(cpu_index);
    match entry.function {
        LEAF_FEATURES => {
            // EBX: initial APIC id in 31..24, logical processors per package in 23..16, CLFLUSH
            // line size (8 × 8 bytes) in 15..8.
            entry.ebx = (apic_id << 24) | (u32::from(cpu_count) << 16) | (8 << 8);
            entry.ecx |= ECX_HYPERVISOR;
            if cpu_count > 1 {
                entry.edx |= EDX_HTT;
            } else {
                entry.edx &= !EDX_HTT;
            }
        }
        LEAF_CACHE => {
            // EAX 31..26: cores per package - 1; 25..14: threads sharing this cache - 1.
            let cores = u32::from(cpu_count.max(1)) - 1;
            let cache_level = (entry.eax >> 5) & 0x7;
            let sharing = if cache_level >= 3 { cores } else { 0 };
            entry.eax = (entry.eax & 0x3fff) | (cores << 26) | (sharing << 14);
        }
        LEAF_TOPOLOGY => {
            entry.edx = apic_id;
            match entry.index {
                0 => {
                    entry.eax = 0;
                    entry.ebx = 1;
                    entry.ecx = (TOPOLOGY_LEVEL_SMT << 8) | entry.index;
                }
                1 => {
                    entry.eax = core_id_bits(cpu_count);
                    entry.ebx = u32::from(cpu_count);
                    entry.ecx = (TOPOLOGY_LEVEL_CORE << 8) | entry.index;
                }
                _ => {
                    entry.eax = 0;
                    entry.ebx = 0;
                    entry.ecx = entry.index;
                }
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(function: u32, index: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            ..Default::default()
        }
    }

    fn sample() -> CpuId {
        let mut leaf1 = entry(1, 0);
        leaf1.ecx = (1 << 28) | (1 << 21);
        let mut leaf4 = entry(4, 3);
        leaf4.eax = (3 << 5) | 0x1;
        let mut leaf7 = entry(7, 0);
        leaf7.ebx = 1 << 5;
        CpuId::from_entries(&[
            leaf1,
            leaf4,
            leaf7,
            entry(0xb, 0),
            entry(0xb, 1),
            entry(0xb, 2),
        ])
        .unwrap()
    }

    fn find(cpuid: &CpuId, function: u32, index: u32) -> kvm_cpuid_entry2 {
        *cpuid
            .as_slice()
            .iter()
            .find(|e| e.function == function && e.index == index)
            .unwrap()
    }

    #[test]
    fn sets_apic_ids_and_topology() {
        let mut cpuid = sample();
        filter_cpuid(&mut cpuid, 2, 3, &[]);
        let leaf1 = find(&cpuid, 1, 0);
        assert_eq!(leaf1.ebx >> 24, 2);
        assert_eq!((leaf1.ebx >> 16) & 0xff, 3);
        assert_ne!(leaf1.ecx & ECX_HYPERVISOR, 0);
        assert_ne!(leaf1.edx & EDX_HTT, 0);
        let core = find(&cpuid, 0xb, 1);
        assert_eq!((core.eax, core.ebx, core.ecx >> 8, core.edx), (2, 3, 2, 2));
        let smt = find(&cpuid, 0xb, 0);
        assert_eq!((smt.ebx, smt.ecx >> 8), (1, 1));
        let l3 = find(&cpuid, 4, 3);
        assert_eq!(l3.eax >> 26, 2);
        assert_eq!((l3.eax >> 14) & 0xfff, 2);
    }

    #[test]
    fn hides_requested_features() {
        let mut cpuid = sample();
        let hidden = [
            *feature_by_name("avx").unwrap(),
            *feature_by_name("avx2").unwrap(),
        ];
        filter_cpuid(&mut cpuid, 0, 1, &hidden);
        assert_eq!(find(&cpuid, 1, 0).ecx & (1 << 28), 0);
        assert_ne!(find(&cpuid, 1, 0).ecx & (1 << 21), 0, "x2apic untouched");
        assert_eq!(find(&cpuid, 7, 0).ebx & (1 << 5), 0);
        assert_eq!(find(&cpuid, 1, 0).edx & EDX_HTT, 0);
    }

    #[test]
    fn unknown_feature_names_are_not_found() {
        assert!(feature_by_name("warp_drive").is_none());
        assert_eq!(core_id_bits(1), 0);
        assert_eq!(core_id_bits(4), 2);
        assert_eq!(core_id_bits(5), 3);
    }
}
