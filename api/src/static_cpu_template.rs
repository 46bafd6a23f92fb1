//! Firecracker's static CPU templates (`machine-config.cpu_template`: `T2`, `T2S`, `T2CL`, `T2A`,
//! `C3`), kept as ferry data: each name stands for a fixed [`CpuTemplate`] of CPUID and MSR
//! modifiers, applied by the same code as a custom template (`PUT /cpu-config`).
//!
//! The bits are the ones Firecracker's templates set and clear, so a guest moved between
//! Firecracker and ferry hosts sees the same CPU. What they do, in short:
//! - every template makes leaf 1 EAX report a fixed family/model/stepping (`C3`: Ivy Bridge
//!   0x306e4; the others: Haswell 0x306f2), and hides host-only features (VMX, MONITOR, thermal
//!   and debug-store bits, DCA, …) in leaf 1;
//! - leaf 7 loses AVX-512, SGX, TSX (HLE/RTM), MPX, processor trace, the newer vector extensions
//!   and LA57; `T2*` set ERMS, `C3` leaves it as the host has it;
//! - leaf 0xd stops advertising the MPX, AVX-512 and PKRU save areas and XSAVEC/XSAVES;
//! - the extended leaves hide 1 GiB pages, PREFETCHW, MONITORX, WBNOINVD (and, for `T2CL`/`T2A`,
//!   a few more AMD-defined bits); `T2A` also sets AMD speculation hints in 0x8000_0008 EBX;
//! - `T2S` writes a fixed IA32_ARCH_CAPABILITIES (the mitigation-state bits of its Skylake/Cascade
//!   Lake fleet, so a guest can move between them); `T2CL` clears the bits of that MSR which
//!   Cascade Lake and Ice Lake do not share, keeping the rest from the host.

use serde::{Deserialize, Serialize};

use crate::cpu_template::{CpuTemplate, CpuidModifier, CpuidRegister, MsrModifier};

/// A static CPU template by name. `None` (the default) means no static template.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum StaticCpuTemplate {
    #[default]
    None,
    C3,
    T2,
    T2S,
    T2CL,
    T2A,
}

/// The CPU vendor a static template was written for: applying one to the other vendor's CPU
/// would describe a processor that cannot exist, so the VMM refuses it (as Firecracker does).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CpuVendor {
    Intel,
    Amd,
}

impl CpuVendor {
    /// The vendor of a CPUID leaf 0 (EBX, EDX, ECX spell the vendor string), if it is one of the
    /// two the templates know.
    pub fn from_leaf0(ebx: u32, ecx: u32, edx: u32) -> Option<CpuVendor> {
        let mut id = [0u8; 12];
        id[..4].copy_from_slice(&ebx.to_le_bytes());
        id[4..8].copy_from_slice(&edx.to_le_bytes());
        id[8..].copy_from_slice(&ecx.to_le_bytes());
        match &id {
            b"GenuineIntel" => Some(CpuVendor::Intel),
            b"AuthenticAMD" => Some(CpuVendor::Amd),
            _ => None,
        }
    }
}

impl std::fmt::Display for CpuVendor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            CpuVendor::Intel => "Intel",
            CpuVendor::Amd => "AMD",
        })
    }
}

impl std::fmt::Display for StaticCpuTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for StaticCpuTemplate {
    type Err = String;

    /// The names Firecracker accepts on x86_64; its aarch64 template gets a reason of its own.
    fn from_str(name: &str) -> Result<Self, String> {
        Ok(match name {
            "None" => StaticCpuTemplate::None,
            "C3" => StaticCpuTemplate::C3,
            "T2" => StaticCpuTemplate::T2,
            "T2S" => StaticCpuTemplate::T2S,
            "T2CL" => StaticCpuTemplate::T2CL,
            "T2A" => StaticCpuTemplate::T2A,
            "V1N1" => {
                return Err(
                    "cpu_template \"V1N1\" is an aarch64 (Graviton) template; ferry runs x86_64 \
                     guests only (x86_64 templates: C3, T2, T2S, T2CL, T2A, None)"
                        .into(),
                )
            }
            other => {
                return Err(format!(
                    "cpu_template {other:?} is unknown (x86_64 templates: C3, T2, T2S, T2CL, T2A, None)"
                ))
            }
        })
    }
}

/// Leaf 1 EAX: family, model, stepping and extended family/model (the processor type and the
/// reserved bits are kept).
const SIGNATURE: u32 = 0x0fff_3fff;
/// Haswell, the CPU `T2*` present (family 6, model 0x3f, stepping 2).
const HASWELL_SIGNATURE: u32 = 0x0003_06f2;
/// Ivy Bridge, the CPU `C3` presents (family 6, model 0x3e, stepping 4).
const IVY_BRIDGE_SIGNATURE: u32 = 0x0003_06e4;
/// IA32_ARCH_CAPABILITIES.
const MSR_ARCH_CAPABILITIES: u32 = 0x10a;

/// One CPUID register modifier: `(leaf, subleaf, register, mask, value)`.
type Cpuid = (u32, u32, CpuidRegister, u32, u32);

use CpuidRegister::{Eax, Ebx, Ecx, Edx};

/// The leaf 1, 7 and 0xd modifiers shared by `T2`, `T2S`, `T2CL` and `T2A`.
const T2_FAMILY_BASE: [Cpuid; 8] = [
    (0x1, 0, Eax, SIGNATURE, HASWELL_SIGNATURE),
    // DTES64, MONITOR, DS-CPL, VMX, SMX, EIST, TM2, CNXT-ID, SDBG, xTPR, PDCM, DCA: off.
    (0x1, 0, Ecx, 0x0004_cdfc, 0),
    // MCE and MTRR on; PSN, DS, ACPI, SS, TM, IA-64, PBE off.
    (0x1, 0, Edx, 0xe864_1080, 0x0000_1080),
    // SGX, HLE, RTM, RDT, MPX, AVX-512 (F/DQ/IFMA/PF/ER/CD/BW/VL), RDSEED, ADX, PCOMMIT,
    // CLFLUSHOPT, CLWB, PT, SHA off; ERMS on.
    (0x7, 0, Ebx, 0xffef_da14, 0x0000_0200),
    // AVX512_VBMI/VBMI2/VNNI/BITALG/VPOPCNTDQ, UMIP, PKU, OSPKE, GFNI, VAES, VPCLMULQDQ, LA57,
    // RDPID, SGX_LC off.
    (0x7, 0, Ecx, 0x4041_5f5e, 0),
    // AVX512_4VNNIW/4FMAPS, FSRM, AVX512_VP2INTERSECT off.
    (0x7, 0, Edx, 0x0000_011c, 0),
    // No MPX, AVX-512 or PKRU state components.
    (0xd, 0, Eax, 0x0000_02f8, 0),
    // No XSAVEC, XGETBV with ECX=1, XSAVES.
    (0xd, 1, Eax, 0x0000_000e, 0),
];

/// The extended leaves of `T2` and `T2S`: PREFETCHW, MONITORX, 1 GiB pages, WBNOINVD off.
const T2_EXTENDED: [Cpuid; 3] = [
    (0x8000_0001, 0, Ecx, 0x2000_0100, 0),
    (0x8000_0001, 0, Edx, 0x0400_0000, 0),
    (0x8000_0008, 0, Ebx, 0x0000_0200, 0),
];

/// `T2CL`: as `T2`, and also the AMD-defined SSE4A and misaligned-SSE bits (0x8000_0001 ECX
/// 6–7) and MmxExt, MMX, FXSR, FFXSR (EDX 22–25) cleared in the extended leaf.
const T2CL_EXTENDED: [Cpuid; 3] = [
    (0x8000_0001, 0, Ecx, 0x2000_01c0, 0),
    (0x8000_0001, 0, Edx, 0x07c0_0000, 0),
    (0x8000_0008, 0, Ebx, 0x0000_0200, 0),
];

/// `T2A` (AMD Milan): SVM, SSE4A, misaligned SSE, PREFETCHW, MONITORX, MmxExt, FFXSR and 1 GiB
/// pages hidden in 0x8000_0001; in 0x8000_0008 EBX, CLZERO and WBNOINVD hidden while
/// RstrFpErrPtrs (2), IbrsPreferred (18), IbrsSameMode (19) and EferLmsleUnsupported (20) are
/// set, the guest-visible behaviour of its hosts.
const T2A_EXTENDED: [Cpuid; 3] = [
    (0x8000_0001, 0, Ecx, 0x2000_01c4, 0),
    (0x8000_0001, 0, Edx, 0x0640_0000, 0),
    (0x8000_0008, 0, Ebx, 0x001c_0205, 0x001c_0004),
];

/// `C3`: the Ivy Bridge signature and a narrower feature set than `T2`: FMA and MOVBE (leaf 1
/// ECX), BMI1, AVX2, BMI2, INVPCID (leaf 7 EBX) and LZCNT (0x8000_0001 ECX) are hidden too, while
/// ERMS, EIST, SMX and the leaf 0x8000_0008 bits are left as the host has them.
const C3_CPUID: [Cpuid; 10] = [
    (0x1, 0, Eax, SIGNATURE, IVY_BRIDGE_SIGNATURE),
    (0x1, 0, Ecx, 0x0040_dd3c, 0),
    (0x1, 0, Edx, 0xa864_1080, 0x0000_1080),
    (0x7, 0, Ebx, 0xffaf_dd3c, 0),
    (0x7, 0, Ecx, 0x4041_481e, 0),
    (0x7, 0, Edx, 0x0000_000c, 0),
    (0xd, 0, Eax, 0x0000_02f8, 0),
    (0xd, 1, Eax, 0x0000_000e, 0),
    (0x8000_0001, 0, Ecx, 0x0000_0120, 0),
    (0x8000_0001, 0, Edx, 0x0400_0000, 0),
];

/// `T2S`: IA32_ARCH_CAPABILITIES replaced as a whole by [`T2S_ARCH_CAP`].
const T2S_MSRS: [MsrModifier; 1] = [MsrModifier {
    addr: MSR_ARCH_CAPABILITIES,
    mask: u64::MAX,
    value: T2S_ARCH_CAP,
}];

/// The IA32_ARCH_CAPABILITIES `T2S` gives every guest: RSBA (bit 2), SKIP_L1DFL_VMENTRY (3),
/// IF_PSCHANGE_MC_NO (6), MISC_PACKAGE_CTLS (10), ENERGY_FILTERING_CTL (11), FB_CLEAR (17),
/// RRSBA (19), GDS_NO (26), RFDS_NO (27), nothing else: one mitigation state for the Skylake
/// and Cascade Lake hosts it spans, so a guest that moves between them needs no new mitigation.
const T2S_ARCH_CAP: u64 = 0x0000_0000_0c0a_0c4c;

/// `T2CL`: IA32_ARCH_CAPABILITIES bits that Cascade Lake and Ice Lake do not share cleared —
/// MCU_CONTROL (9), MISC_PACKAGE_CTLS (10), ENERGY_FILTERING_CTL (11), DOITM (12),
/// FB_CLEAR_CTRL (18), BHI_NO (20), XAPIC_DISABLE_STATUS (21), OVERCLOCKING_STATUS (23) and the
/// reserved bits 16, 22, 25 and 29–63; the host's value is kept for the others.
const T2CL_MSRS: [MsrModifier; 1] = [MsrModifier {
    addr: MSR_ARCH_CAPABILITIES,
    mask: 0xffff_ffff_e2f5_1e00,
    value: 0,
}];

impl StaticCpuTemplate {
    /// Firecracker's spelling of the name (`GET /machine-config` echoes it).
    pub fn name(self) -> &'static str {
        match self {
            StaticCpuTemplate::None => "None",
            StaticCpuTemplate::C3 => "C3",
            StaticCpuTemplate::T2 => "T2",
            StaticCpuTemplate::T2S => "T2S",
            StaticCpuTemplate::T2CL => "T2CL",
            StaticCpuTemplate::T2A => "T2A",
        }
    }

    pub fn is_none(&self) -> bool {
        *self == StaticCpuTemplate::None
    }

    /// The vendor the template describes (`None` for no template).
    pub fn vendor(self) -> Option<CpuVendor> {
        match self {
            StaticCpuTemplate::None => None,
            StaticCpuTemplate::T2A => Some(CpuVendor::Amd),
            _ => Some(CpuVendor::Intel),
        }
    }

    /// The leaf 1 EAX signatures (stepping included) of the hosts Firecracker validated the
    /// template on; ferry applies it elsewhere too, with a warning (see docs/api.md).
    pub fn validated_signatures(self) -> &'static [u32] {
        const SKYLAKE: u32 = 0x0005_0654;
        const CASCADE_LAKE: u32 = 0x0005_0657;
        const ICE_LAKE: u32 = 0x0006_06a6;
        const MILAN: u32 = 0x00a0_0f11;
        match self {
            StaticCpuTemplate::None => &[],
            StaticCpuTemplate::C3 | StaticCpuTemplate::T2 => &[SKYLAKE, CASCADE_LAKE, ICE_LAKE],
            StaticCpuTemplate::T2S => &[SKYLAKE, CASCADE_LAKE],
            StaticCpuTemplate::T2CL => &[CASCADE_LAKE, ICE_LAKE],
            StaticCpuTemplate::T2A => &[MILAN],
        }
    }

    /// The modifiers the template stands for (empty for `None`).
    pub fn template(self) -> CpuTemplate {
        let (cpuid, msrs): (Vec<Cpuid>, &[MsrModifier]) = match self {
            StaticCpuTemplate::None => (Vec::new(), &[]),
            StaticCpuTemplate::C3 => (C3_CPUID.to_vec(), &[]),
            StaticCpuTemplate::T2 => ([&T2_FAMILY_BASE[..], &T2_EXTENDED].concat(), &[]),
            StaticCpuTemplate::T2S => ([&T2_FAMILY_BASE[..], &T2_EXTENDED].concat(), &T2S_MSRS),
            StaticCpuTemplate::T2CL => ([&T2_FAMILY_BASE[..], &T2CL_EXTENDED].concat(), &T2CL_MSRS),
            StaticCpuTemplate::T2A => ([&T2_FAMILY_BASE[..], &T2A_EXTENDED].concat(), &[]),
        };
        CpuTemplate {
            kvm_capabilities: Vec::new(),
            cpuid: cpuid
                .into_iter()
                .map(|(leaf, subleaf, register, mask, value)| CpuidModifier {
                    leaf,
                    subleaf,
                    register,
                    mask,
                    value,
                })
                .collect(),
            msrs: msrs.to_vec(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a template turns a register of a synthetic CPUID into: all ones shows the bits it
    /// clears (as zeros), all zeros the bits it sets.
    fn after(t: StaticCpuTemplate, leaf: u32, subleaf: u32, reg: CpuidRegister, from: u32) -> u32 {
        t.template()
            .cpuid
            .iter()
            .filter(|m| (m.leaf, m.subleaf, m.register) == (leaf, subleaf, reg))
            .fold(from, |r, m| (r & !m.mask) | (m.value & m.mask))
    }

    #[test]
    fn names_parse_and_print_as_firecracker_spells_them() {
        for t in [
            StaticCpuTemplate::None,
            StaticCpuTemplate::C3,
            StaticCpuTemplate::T2,
            StaticCpuTemplate::T2S,
            StaticCpuTemplate::T2CL,
            StaticCpuTemplate::T2A,
        ] {
            assert_eq!(t.name().parse::<StaticCpuTemplate>(), Ok(t));
            assert_eq!(
                serde_json::to_string(&t).unwrap(),
                format!("\"{}\"", t.name())
            );
        }
        assert!("V1N1"
            .parse::<StaticCpuTemplate>()
            .unwrap_err()
            .contains("aarch64"));
        assert!("t2"
            .parse::<StaticCpuTemplate>()
            .unwrap_err()
            .contains("unknown"));
        assert!(StaticCpuTemplate::None.template().cpuid.is_empty());
    }

    #[test]
    fn vendors_follow_firecracker() {
        assert_eq!(StaticCpuTemplate::T2A.vendor(), Some(CpuVendor::Amd));
        for t in [
            StaticCpuTemplate::C3,
            StaticCpuTemplate::T2,
            StaticCpuTemplate::T2S,
            StaticCpuTemplate::T2CL,
        ] {
            assert_eq!(t.vendor(), Some(CpuVendor::Intel), "{t}");
        }
        assert_eq!(StaticCpuTemplate::None.vendor(), None);
        // "GenuineIntel" / "AuthenticAMD" as CPUID leaf 0 spells them.
        assert_eq!(
            CpuVendor::from_leaf0(0x756e_6547, 0x6c65_746e, 0x4965_6e69),
            Some(CpuVendor::Intel)
        );
        assert_eq!(
            CpuVendor::from_leaf0(0x6874_7541, 0x444d_4163, 0x6974_6e65),
            Some(CpuVendor::Amd)
        );
        assert_eq!(CpuVendor::from_leaf0(0, 0, 0), None);
    }

    #[test]
    fn t2_presents_a_haswell_without_avx512_tsx_or_1g_pages() {
        let t = StaticCpuTemplate::T2;
        // Signature: family 6 model 0x3f stepping 2, processor type bits kept.
        assert_eq!(after(t, 1, 0, Eax, u32::MAX), 0xf000_c000 | 0x306f2);
        let ecx1 = after(t, 1, 0, Ecx, u32::MAX);
        assert_eq!(ecx1 & (1 << 5), 0, "VMX hidden");
        assert_eq!(ecx1 & (1 << 3), 0, "MONITOR hidden");
        assert_ne!(ecx1 & (1 << 28), 0, "AVX kept");
        // MCE and MTRR forced on even when the host lacks them; PBE off.
        let edx1 = after(t, 1, 0, Edx, 0);
        assert_eq!(edx1, (1 << 7) | (1 << 12));
        assert_eq!(after(t, 1, 0, Edx, u32::MAX) & (1 << 31), 0);
        let ebx7 = after(t, 7, 0, Ebx, u32::MAX);
        for (bit, what) in [
            (16, "AVX512F"),
            (4, "HLE"),
            (11, "RTM"),
            (29, "SHA"),
            (2, "SGX"),
        ] {
            assert_eq!(ebx7 & (1 << bit), 0, "{what} hidden");
        }
        assert_ne!(ebx7 & (1 << 5), 0, "AVX2 kept");
        assert_ne!(after(t, 7, 0, Ebx, 0) & (1 << 9), 0, "ERMS set");
        assert_eq!(after(t, 7, 0, Ecx, u32::MAX) & (1 << 16), 0, "LA57 hidden");
        assert_eq!(
            after(t, 0xd, 0, Eax, u32::MAX) & 0xe0,
            0,
            "no AVX-512 state"
        );
        assert_eq!(after(t, 0xd, 1, Eax, u32::MAX), !0xe, "XSAVEOPT only");
        assert_eq!(
            after(t, 0x8000_0001, 0, Edx, u32::MAX) & (1 << 26),
            0,
            "no 1 GiB pages"
        );
        assert!(t.template().msrs.is_empty());
    }

    #[test]
    fn t2s_is_t2_plus_a_fixed_arch_capabilities() {
        let (t2, t2s) = (
            StaticCpuTemplate::T2.template(),
            StaticCpuTemplate::T2S.template(),
        );
        assert_eq!(t2.cpuid, t2s.cpuid);
        assert_eq!(
            t2s.msrs,
            [MsrModifier {
                addr: 0x10a,
                mask: u64::MAX,
                value: 0x0c0a_0c4c
            }]
        );
    }

    #[test]
    fn t2cl_and_t2a_differ_from_t2_only_where_they_should() {
        let t2 = StaticCpuTemplate::T2.template();
        for t in [StaticCpuTemplate::T2CL, StaticCpuTemplate::T2A] {
            let other = t.template();
            let differ: Vec<_> = other
                .cpuid
                .iter()
                .filter(|m| !t2.cpuid.contains(m))
                .map(|m| (m.leaf, m.register))
                .collect();
            assert!(
                differ.iter().all(|(leaf, _)| *leaf >= 0x8000_0000),
                "{t}: {differ:?}"
            );
        }
        // T2CL keeps the host's ARCH_CAPABILITIES bits 0–8 (RDCL_NO … TAA_NO), clears MCU_CONTROL.
        let msr = StaticCpuTemplate::T2CL.template().msrs[0];
        assert_eq!(msr.addr, 0x10a);
        assert_eq!(msr.mask & 0x1ff, 0);
        assert_ne!(msr.mask & (1 << 9), 0);
        assert_eq!(msr.value, 0);
        // T2A sets the IbrsPreferred/IbrsSameMode/EferLmsleUnsupported hints, hides CLZERO.
        let ebx = after(StaticCpuTemplate::T2A, 0x8000_0008, 0, Ebx, 1);
        assert_eq!(ebx, 0x001c_0004);
        assert_eq!(
            after(StaticCpuTemplate::T2A, 0x8000_0001, 0, Ecx, u32::MAX) & 4,
            0,
            "no SVM"
        );
    }

    #[test]
    fn c3_presents_an_ivy_bridge_without_avx2_or_bmi() {
        let t = StaticCpuTemplate::C3;
        assert_eq!(after(t, 1, 0, Eax, 0), 0x306e4);
        let ebx7 = after(t, 7, 0, Ebx, u32::MAX);
        for (bit, what) in [
            (3, "BMI1"),
            (5, "AVX2"),
            (8, "BMI2"),
            (10, "INVPCID"),
            (16, "AVX512F"),
        ] {
            assert_eq!(ebx7 & (1 << bit), 0, "{what} hidden");
        }
        assert_ne!(ebx7 & (1 << 9), 0, "ERMS left as the host has it");
        assert_eq!(after(t, 1, 0, Ecx, u32::MAX) & (1 << 12), 0, "FMA hidden");
        assert!(t.template().msrs.is_empty());
    }

    #[test]
    fn no_template_modifies_a_register_twice() {
        for t in [
            StaticCpuTemplate::C3,
            StaticCpuTemplate::T2,
            StaticCpuTemplate::T2S,
            StaticCpuTemplate::T2CL,
            StaticCpuTemplate::T2A,
        ] {
            let cpuid = t.template().cpuid;
            for (i, m) in cpuid.iter().enumerate() {
                assert_eq!(m.value & !m.mask, 0, "{t}: value outside mask");
                assert!(
                    !cpuid[i + 1..]
                        .iter()
                        .any(|n| (n.leaf, n.subleaf, n.register) == (m.leaf, m.subleaf, m.register)),
                    "{t}: leaf {:#x} twice",
                    m.leaf
                );
            }
        }
    }
}
