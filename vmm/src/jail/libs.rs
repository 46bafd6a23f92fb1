//! The shared libraries a dynamically linked VMM needs inside its jail.
//!
//! Firecracker's jailer expects a static (musl) binary; ferry is usually built against glibc.
//! Rather than bind-mounting host library directories into the jail (which would show the VMM
//! host files), the jailer copies exactly the files the dynamic loader would map: the ELF's
//! interpreter (`PT_INTERP`) and what `<interpreter> --list <binary>` resolves, each to the same
//! path inside the jail. A static binary (no `PT_INTERP`) needs nothing.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::Command;

use super::JailError;

const PT_INTERP: u32 = 3;

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}
fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}
fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// The `PT_INTERP` path of a 64-bit little-endian ELF file, `None` for a static binary.
pub fn interpreter(file: &mut File) -> Result<Option<PathBuf>, String> {
    let mut header = [0u8; 64];
    file.seek(SeekFrom::Start(0)).map_err(|e| e.to_string())?;
    file.read_exact(&mut header)
        .map_err(|_| "not an ELF file (too short)".to_string())?;
    if &header[..4] != b"\x7fELF" || header[4] != 2 || header[5] != 1 {
        return Err("not a 64-bit little-endian ELF file".into());
    }
    let bad = || "malformed ELF header".to_string();
    let phoff = u64_at(&header, 0x20).ok_or_else(bad)?;
    let phentsize = usize::from(u16_at(&header, 0x36).ok_or_else(bad)?);
    let phnum = usize::from(u16_at(&header, 0x38).ok_or_else(bad)?);
    if phentsize < 56 || phnum > 256 {
        return Err(bad());
    }
    let mut table = vec![0u8; phentsize * phnum];
    file.seek(SeekFrom::Start(phoff))
        .map_err(|e| e.to_string())?;
    file.read_exact(&mut table).map_err(|_| bad())?;
    for entry in table.chunks(phentsize) {
        if u32_at(entry, 0) != Some(PT_INTERP) {
            continue;
        }
        let offset = u64_at(entry, 8).ok_or_else(bad)?;
        let size = u64_at(entry, 32).ok_or_else(bad)?;
        if size == 0 || size > 4096 {
            return Err(bad());
        }
        let mut path = vec![0u8; size as usize];
        file.seek(SeekFrom::Start(offset))
            .map_err(|e| e.to_string())?;
        file.read_exact(&mut path).map_err(|_| bad())?;
        let end = path.iter().position(|b| *b == 0).unwrap_or(path.len());
        let text = std::str::from_utf8(&path[..end]).map_err(|_| bad())?;
        if !text.starts_with('/') {
            return Err(bad());
        }
        return Ok(Some(PathBuf::from(text)));
    }
    Ok(None)
}

/// The absolute paths in the dynamic loader's `--list` output (`name => /path (0x…)` or
/// `/path (0x…)`); the vDSO has no path and is skipped; a library it could not find is an error.
pub fn parse_list(output: &str) -> Result<Vec<PathBuf>, String> {
    let mut paths = Vec::new();
    for line in output.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let target = match line.split_once(" => ") {
            Some((name, rest)) => {
                if rest.starts_with("not found") {
                    return Err(format!("the dynamic loader cannot find {name}"));
                }
                rest
            }
            None => line,
        };
        let path = target.split(" (").next().unwrap_or(target).trim();
        if path.starts_with('/') {
            paths.push(PathBuf::from(path));
        }
    }
    Ok(paths)
}

/// The files (interpreter first) that `exec` needs in its jail, each opened on the host.
pub fn needed(exec: &Path, exec_file: &mut File) -> Result<Vec<(PathBuf, File)>, JailError> {
    let what = |e: String| JailError::Exec(format!("{}: {e}", exec.display()));
    let Some(interp) = interpreter(exec_file).map_err(what)? else {
        return Ok(Vec::new());
    };
    let output = Command::new(&interp)
        .arg("--list")
        .arg(exec)
        .env_clear()
        .output()
        .map_err(|e| what(format!("running {} --list: {e}", interp.display())))?;
    if !output.status.success() {
        return Err(what(format!(
            "{} --list failed: {}",
            interp.display(),
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    let mut paths = vec![interp];
    for path in parse_list(&String::from_utf8_lossy(&output.stdout)).map_err(what)? {
        if !paths.contains(&path) {
            paths.push(path);
        }
    }
    paths
        .into_iter()
        .map(|path| {
            let file = File::open(&path)
                .map_err(|e| JailError::io(format!("opening {}", path.display()), e))?;
            Ok((path, file))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loader_list_output_is_parsed() {
        let out = "\tlinux-vdso.so.1 (0x00007ffd)\n\
                   \tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007f31)\n\
                   \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f31)\n\
                   \t/lib64/ld-linux-x86-64.so.2 (0x00007f32)\n";
        assert_eq!(
            parse_list(out).unwrap(),
            vec![
                PathBuf::from("/lib/x86_64-linux-gnu/libgcc_s.so.1"),
                PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2"),
            ]
        );
        assert!(parse_list("\tlibfoo.so => not found\n").is_err());
    }

    /// A minimal ELF64 file: header, `phnum` program headers, then `interp` (when given) as the
    /// `PT_INTERP` segment's bytes.
    fn elf(interp: Option<&[u8]>) -> File {
        let phnum: u16 = if interp.is_some() { 1 } else { 0 };
        let mut bytes = vec![0u8; 64];
        bytes[..6].copy_from_slice(b"\x7fELF\x02\x01");
        bytes[0x20..0x28].copy_from_slice(&64u64.to_le_bytes());
        bytes[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
        bytes[0x38..0x3a].copy_from_slice(&phnum.to_le_bytes());
        if let Some(path) = interp {
            let mut ph = vec![0u8; 56];
            ph[..4].copy_from_slice(&PT_INTERP.to_le_bytes());
            ph[8..16].copy_from_slice(&120u64.to_le_bytes());
            ph[32..40].copy_from_slice(&(path.len() as u64).to_le_bytes());
            bytes.extend_from_slice(&ph);
            bytes.extend_from_slice(path);
        }
        let dir = std::env::temp_dir().join(format!("ferry-libs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("elf-{}", interp.map_or(0, <[u8]>::len)));
        std::fs::write(&path, &bytes).unwrap();
        let file = File::open(&path).unwrap();
        let _ = std::fs::remove_file(&path);
        file
    }

    #[test]
    fn static_and_dynamic_headers() {
        assert_eq!(interpreter(&mut elf(None)).unwrap(), None);
        assert_eq!(
            interpreter(&mut elf(Some(b"/lib64/ld.so\0"))).unwrap(),
            Some(PathBuf::from("/lib64/ld.so"))
        );
        // A relative interpreter is not something the jail can reproduce.
        assert!(interpreter(&mut elf(Some(b"ld.so\0"))).is_err());
    }

    #[test]
    fn interpreter_of_this_test_binary() {
        // The test binary is linked like ferry: dynamic on glibc hosts, static on musl.
        let mut me = File::open("/proc/self/exe").unwrap();
        if let Some(interp) = interpreter(&mut me).unwrap() {
            assert!(interp.is_absolute());
            assert!(interp.exists(), "{}", interp.display());
        }
        let mut not_elf = File::open("/proc/self/status").unwrap();
        assert!(interpreter(&mut not_elf).is_err());
    }
}
