//! Custom CPU templates (`PUT /cpu-config`, the config file's `cpu-config`): Firecracker's JSON
//! form, parsed once into masks the VMM applies to every vCPU's CPUID and MSRs.
//!
//! A bitmap is `0b` followed by up to 32 (CPUID) or 64 (MSR) characters, most significant bit
//! first: `0` clears the bit, `1` sets it, `x` keeps what KVM reports; `_` separates groups. A
//! shorter bitmap covers the low bits; the bits above it are kept.

use serde::{Deserialize, Serialize};

/// One CPUID register of one leaf/subleaf: `reg = (reg & !mask) | value`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpuidModifier {
    pub leaf: u32,
    pub subleaf: u32,
    pub register: CpuidRegister,
    pub mask: u32,
    pub value: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CpuidRegister {
    Eax,
    Ebx,
    Ecx,
    Edx,
}

/// One MSR: `msr = (msr & !mask) | value`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MsrModifier {
    pub addr: u32,
    pub mask: u64,
    pub value: u64,
}

/// A KVM capability the template requires (`"N"`), or one it says need not be checked (`"!N"`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvmCapability {
    pub cap: u32,
    pub required: bool,
}

/// A parsed custom CPU template; part of the VM configuration (snapshots and migrations carry it,
/// so a restored guest sees the same CPU).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpuTemplate {
    pub kvm_capabilities: Vec<KvmCapability>,
    pub cpuid: Vec<CpuidModifier>,
    pub msrs: Vec<MsrModifier>,
}

/// Most modifiers a template may hold (a guard against absurd bodies; real ones have dozens).
const MAX_MODIFIERS: usize = 1024;

/// A number as Firecracker's templates write it: a JSON number, or a string in hex (`0x…`) or
/// decimal.
#[derive(Deserialize)]
#[serde(untagged)]
enum Number {
    Int(u64),
    Text(String),
}

impl Number {
    fn value(&self, what: &str) -> Result<u64, String> {
        match self {
            Number::Int(n) => Ok(*n),
            Number::Text(t) => {
                let bad = || format!("{what}: {t:?} is not a number (hex 0x… or decimal)");
                // Digits only: no sign, no blanks (Rust's parsers would take a leading `+`).
                let (digits, radix) = match t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
                    Some(hex) => (hex, 16),
                    None => (t.as_str(), 10),
                };
                if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
                    return Err(bad());
                }
                u64::from_str_radix(digits, radix).map_err(|_| bad())
            }
        }
    }

    fn value_u32(&self, what: &str) -> Result<u32, String> {
        u32::try_from(self.value(what)?).map_err(|_| format!("{what}: out of range (32 bits)"))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RegisterBody {
    register: CpuidRegister,
    bitmap: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LeafBody {
    leaf: Number,
    subleaf: Number,
    #[serde(default)]
    flags: u32,
    modifiers: Vec<RegisterBody>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MsrBody {
    addr: Number,
    bitmap: String,
}

/// `PUT /cpu-config` as sent on the wire: the x86_64 fields (aarch64's `reg_modifiers` and
/// `vcpu_features` are unknown fields here, refused as such).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CpuConfigBody {
    #[serde(default)]
    kvm_capabilities: Vec<String>,
    #[serde(default)]
    cpuid_modifiers: Vec<LeafBody>,
    #[serde(default)]
    msr_modifiers: Vec<MsrBody>,
}

/// `(mask, value)` of a bitmap at most `width` bits wide.
fn parse_bitmap(what: &str, text: &str, width: u32) -> Result<(u64, u64), String> {
    let digits = text
        .strip_prefix("0b")
        .ok_or_else(|| format!("{what}: a bitmap starts with 0b (got {text:?})"))?;
    let (mut mask, mut value, mut bits) = (0u64, 0u64, 0u32);
    for c in digits.chars().filter(|&c| c != '_') {
        bits += 1;
        if bits > width {
            return Err(format!("{what}: more than {width} bits in {text:?}"));
        }
        mask <<= 1;
        value <<= 1;
        match c {
            '0' => mask |= 1,
            '1' => {
                mask |= 1;
                value |= 1;
            }
            'x' | 'X' => {}
            other => return Err(format!("{what}: {other:?} in {text:?} (use 0, 1 or x)")),
        }
    }
    if bits == 0 {
        return Err(format!("{what}: empty bitmap"));
    }
    Ok((mask, value))
}

/// Parses a template file in Firecracker's custom CPU template format (`ferry run
/// --cpu-template FILE`).
pub fn parse_template_json(text: &str) -> Result<CpuTemplate, String> {
    serde_json::from_str::<CpuConfigBody>(text)
        .map_err(|e| format!("not a CPU template: {e}"))?
        .into_template()
}

impl CpuConfigBody {
    pub(crate) fn into_template(self) -> Result<CpuTemplate, String> {
        let count = self
            .cpuid_modifiers
            .iter()
            .map(|l| l.modifiers.len())
            .sum::<usize>()
            + self.msr_modifiers.len()
            + self.kvm_capabilities.len();
        if count > MAX_MODIFIERS {
            return Err(format!("{count} modifiers; at most {MAX_MODIFIERS}"));
        }
        let mut template = CpuTemplate::default();
        for cap in &self.kvm_capabilities {
            let (required, number) = match cap.strip_prefix('!') {
                Some(n) => (false, n),
                None => (true, cap.as_str()),
            };
            let cap = Some(number)
                .filter(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()))
                .and_then(|n| n.parse().ok())
                .ok_or_else(|| format!("kvm_capabilities: {cap:?} is not N or !N"))?;
            template
                .kvm_capabilities
                .push(KvmCapability { cap, required });
        }
        for leaf in &self.cpuid_modifiers {
            let leaf_n = leaf.leaf.value_u32("cpuid_modifiers[].leaf")?;
            let subleaf = leaf.subleaf.value_u32("cpuid_modifiers[].subleaf")?;
            if leaf.flags > 1 {
                return Err(format!(
                    "cpuid_modifiers leaf {leaf_n:#x}: flags may be 0 or 1 (significant index)"
                ));
            }
            for m in &leaf.modifiers {
                let what = format!(
                    "cpuid leaf {leaf_n:#x} subleaf {subleaf:#x} {:?}",
                    m.register
                );
                let (mask, value) = parse_bitmap(&what, &m.bitmap, 32)?;
                if template
                    .cpuid
                    .iter()
                    .any(|c| (c.leaf, c.subleaf, c.register) == (leaf_n, subleaf, m.register))
                {
                    return Err(format!("{what}: modified twice"));
                }
                template.cpuid.push(CpuidModifier {
                    leaf: leaf_n,
                    subleaf,
                    register: m.register,
                    mask: mask as u32,
                    value: value as u32,
                });
            }
        }
        for msr in &self.msr_modifiers {
            let addr = msr.addr.value_u32("msr_modifiers[].addr")?;
            let what = format!("msr {addr:#x}");
            let (mask, value) = parse_bitmap(&what, &msr.bitmap, 64)?;
            if template.msrs.iter().any(|m| m.addr == addr) {
                return Err(format!("{what}: modified twice"));
            }
            template.msrs.push(MsrModifier { addr, mask, value });
        }
        Ok(template)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<CpuTemplate, String> {
        serde_json::from_str::<CpuConfigBody>(json)
            .map_err(|e| e.to_string())?
            .into_template()
    }

    #[test]
    fn bitmaps_set_clear_and_keep_bits() {
        assert_eq!(parse_bitmap("t", "0b1x0", 32), Ok((0b101, 0b100)));
        assert_eq!(
            parse_bitmap("t", "0b0000_0000_0000_0000_0000_0000_0010_000x", 32),
            Ok((0xffff_fffe, 0b10_0000))
        );
        assert!(parse_bitmap("t", "1010", 32).unwrap_err().contains("0b"));
        assert!(parse_bitmap("t", "0b102", 32).unwrap_err().contains("'2'"));
        assert!(parse_bitmap("t", "0b", 32).unwrap_err().contains("empty"));
        assert!(parse_bitmap("t", &format!("0b{}", "1".repeat(33)), 32)
            .unwrap_err()
            .contains("more than 32"));
        assert_eq!(
            parse_bitmap("t", &format!("0b{}", "1".repeat(64)), 64),
            Ok((u64::MAX, u64::MAX))
        );
    }

    #[test]
    fn a_firecracker_style_template_parses() {
        let t = parse(
            r#"{
              "kvm_capabilities": ["!56", "93"],
              "cpuid_modifiers": [
                {"leaf": "0x7", "subleaf": "0x0", "flags": 1,
                 "modifiers": [{"register": "ebx", "bitmap": "0bxxxxxxxxxxxxxxxxxxxxxxxxxx0xxxxx"}]},
                {"leaf": 1, "subleaf": 0, "flags": 0,
                 "modifiers": [{"register": "ecx", "bitmap": "0b1xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}]}
              ],
              "msr_modifiers": [{"addr": "0x10a", "bitmap": "0b1_0000"}]
            }"#,
        )
        .unwrap();
        assert_eq!(
            t.kvm_capabilities,
            [
                KvmCapability {
                    cap: 56,
                    required: false
                },
                KvmCapability {
                    cap: 93,
                    required: true
                }
            ]
        );
        assert_eq!(
            t.cpuid,
            [
                CpuidModifier {
                    leaf: 7,
                    subleaf: 0,
                    register: CpuidRegister::Ebx,
                    mask: 1 << 5,
                    value: 0
                },
                CpuidModifier {
                    leaf: 1,
                    subleaf: 0,
                    register: CpuidRegister::Ecx,
                    mask: 1 << 31,
                    value: 1 << 31
                }
            ]
        );
        assert_eq!(
            t.msrs,
            [MsrModifier {
                addr: 0x10a,
                mask: 0b1_1111,
                value: 0b1_0000
            }]
        );
    }

    #[test]
    fn bad_templates_are_refused_with_the_reason() {
        for (json, needle) in [
            (r#"{"reg_modifiers": []}"#, "reg_modifiers"),
            (r#"{"kvm_capabilities": ["x"]}"#, "N or !N"),
            (r#"{"kvm_capabilities": ["+5"]}"#, "N or !N"),
            (
                r#"{"cpuid_modifiers": [{"leaf": "+1", "subleaf": 0, "modifiers": []}]}"#,
                "not a number",
            ),
            (
                r#"{"cpuid_modifiers": [{"leaf": 1, "subleaf": 0, "flags": null, "modifiers": []}]}"#,
                "null",
            ),
            (
                r#"{"cpuid_modifiers": [{"leaf": "0xzz", "subleaf": 0, "modifiers": []}]}"#,
                "not a number",
            ),
            (
                r#"{"cpuid_modifiers": [{"leaf": "0x100000000", "subleaf": 0, "modifiers": []}]}"#,
                "out of range",
            ),
            (
                r#"{"cpuid_modifiers": [{"leaf": 1, "subleaf": 0, "flags": 7, "modifiers": []}]}"#,
                "flags",
            ),
            (
                r#"{"cpuid_modifiers": [{"leaf": 1, "subleaf": 0, "modifiers": [{"register": "eax", "bitmap": "0b1"}, {"register": "eax", "bitmap": "0b0"}]}]}"#,
                "twice",
            ),
            (
                r#"{"cpuid_modifiers": [{"leaf": 1, "subleaf": 0, "modifiers": [{"register": "esi", "bitmap": "0b1"}]}]}"#,
                "esi",
            ),
            (
                r#"{"msr_modifiers": [{"addr": 16, "bitmap": "0b1"}, {"addr": "0x10", "bitmap": "0b0"}]}"#,
                "twice",
            ),
        ] {
            let err = parse(json).unwrap_err();
            assert!(err.contains(needle), "{json}: {err}");
        }
        assert_eq!(parse("{}"), Ok(CpuTemplate::default()));
    }
}
