//! Firecracker's `--seccomp-filter FILE`: filters compiled by Firecracker's `seccompiler-bin`.
//!
//! The file is a bincode serialisation (little-endian, fixed-width integers) of a map from
//! thread category to BPF program: a `u64` entry count, then per entry a `u64` name length, the
//! UTF-8 name, a `u64` instruction count and the instructions, 8 bytes each (`code: u16`,
//! `jt: u8`, `jf: u8`, `k: u32`, the kernel's `sock_filter`). Firecracker reads at most
//! 100 000 bytes and needs the categories `vmm`, `api` and `vcpu`; an empty program means no
//! filter for that category. ferry applies `vcpu` to its vCPU threads, `api` to its API thread
//! and `vmm` to every other thread, the main thread included.

use std::collections::HashMap;
use std::sync::Arc;

use seccompiler::{sock_filter, BpfProgram};

use super::SeccompError;

/// The largest file accepted, as Firecracker.
pub const MAX_BYTES: usize = 100_000;
/// The kernel's limit on one program (BPF_MAXINSNS).
const MAX_INSTRUCTIONS: u64 = 4096;
/// The categories Firecracker requires, and the only ones ferry knows how to apply.
pub const CATEGORIES: [&str; 3] = ["vmm", "api", "vcpu"];

/// Reads a filter file.
pub fn load(path: &str) -> Result<HashMap<String, Arc<BpfProgram>>, SeccompError> {
    let bytes = std::fs::read(path)
        .map_err(|e| SeccompError::FilterFile(format!("reading --seccomp-filter {path}: {e}")))?;
    parse(&bytes).map_err(|e| {
        SeccompError::FilterFile(format!(
            "--seccomp-filter {path}: {e} (expected a file compiled by Firecracker's \
             seccompiler-bin: a bincode map of thread category vmm/api/vcpu to BPF)"
        ))
    })
}

/// Parses the bytes of a filter file.
pub fn parse(bytes: &[u8]) -> Result<HashMap<String, Arc<BpfProgram>>, String> {
    if bytes.len() > MAX_BYTES {
        return Err(format!("{} bytes, more than {MAX_BYTES}", bytes.len()));
    }
    let mut r = Reader { bytes, at: 0 };
    let count = r.u64()?;
    if count > CATEGORIES.len() as u64 {
        return Err(format!(
            "{count} thread categories, expected vmm, api and vcpu"
        ));
    }
    let mut map = HashMap::new();
    for _ in 0..count {
        let len = r.u64()?;
        let name = std::str::from_utf8(r.take(len)?)
            .map_err(|_| "a thread category name is not UTF-8".to_string())?
            .to_string();
        if !CATEGORIES.contains(&name.as_str()) {
            return Err(format!(
                "unknown thread category '{name}' (expected vmm, api, vcpu)"
            ));
        }
        let n = r.u64()?;
        if n > MAX_INSTRUCTIONS {
            return Err(format!(
                "the {name} filter has {n} instructions, more than {MAX_INSTRUCTIONS}"
            ));
        }
        let mut program = Vec::with_capacity(n as usize);
        for _ in 0..n {
            let raw = r.take(8)?;
            program.push(sock_filter {
                code: u16::from_le_bytes([raw[0], raw[1]]),
                jt: raw[2],
                jf: raw[3],
                k: u32::from_le_bytes([raw[4], raw[5], raw[6], raw[7]]),
            });
        }
        if map.insert(name.clone(), Arc::new(program)).is_some() {
            return Err(format!("thread category '{name}' appears twice"));
        }
    }
    if r.at != bytes.len() {
        return Err(format!("{} bytes after the map", bytes.len() - r.at));
    }
    if let Some(missing) = CATEGORIES.iter().find(|c| !map.contains_key(**c)) {
        return Err(format!("missing thread category '{missing}'"));
    }
    Ok(map)
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, len: u64) -> Result<&'a [u8], String> {
        let len = usize::try_from(len).map_err(|_| "a length does not fit".to_string())?;
        let end = self
            .at
            .checked_add(len)
            .filter(|end| *end <= self.bytes.len())
            .ok_or_else(|| "the file ends early".to_string())?;
        let s = &self.bytes[self.at..end];
        self.at = end;
        Ok(s)
    }

    fn u64(&mut self) -> Result<u64, String> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }
}

/// Serialises a map in the same format (tests, and `ferry`'s own filters for comparison).
pub fn serialize(map: &[(&str, &BpfProgram)]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&(map.len() as u64).to_le_bytes());
    for (name, program) in map {
        out.extend_from_slice(&(name.len() as u64).to_le_bytes());
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(&(program.len() as u64).to_le_bytes());
        for i in program.iter() {
            out.extend_from_slice(&i.code.to_le_bytes());
            out.push(i.jt);
            out.push(i.jf);
            out.extend_from_slice(&i.k.to_le_bytes());
        }
    }
    out
}
