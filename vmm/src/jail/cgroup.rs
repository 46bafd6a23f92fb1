//! The microVM's cgroup: `<cgroup root>/<parent>/<id>`, created, given the `--cgroup` limits and
//! then joined by the jailer before it executes the VMM, so the limits hold from the VMM's first
//! instruction and every thread and child it makes inherits them.
//!
//! Cgroup roots come from `/proc/mounts` (as Firecracker's jailer finds them): for v1 the
//! hierarchy that carries each named controller, for v2 the `cgroup2` mount.

use std::fs;
use std::path::{Path, PathBuf};

use super::args::{CgroupSetting, CgroupVersion, JailArgs};
use super::JailError;

/// `(mount point, filesystem type, options)` of each mount in a `/proc/mounts` text.
fn mounts(text: &str) -> impl Iterator<Item = (&str, &str, &str)> {
    text.lines().filter_map(|line| {
        let mut fields = line.split_whitespace();
        let _source = fields.next()?;
        let point = fields.next()?;
        let fstype = fields.next()?;
        let options = fields.next()?;
        Some((point, fstype, options))
    })
}

/// The v1 hierarchy that carries `controller` (its mount options name it).
pub fn v1_root(proc_mounts: &str, controller: &str) -> Option<PathBuf> {
    mounts(proc_mounts)
        .find(|(_, fstype, options)| {
            *fstype == "cgroup" && options.split(',').any(|o| o == controller)
        })
        .map(|(point, _, _)| PathBuf::from(point))
}

/// The cgroup v2 (unified) hierarchy.
pub fn v2_root(proc_mounts: &str) -> Option<PathBuf> {
    mounts(proc_mounts)
        .find(|(_, fstype, _)| *fstype == "cgroup2")
        .map(|(point, _, _)| PathBuf::from(point))
}

fn write(path: &Path, value: &str) -> Result<(), JailError> {
    fs::write(path, format!("{value}\n"))
        .map_err(|e| JailError::io(format!("writing {value:?} to {}", path.display()), e))
}

fn read(path: &Path) -> Result<String, JailError> {
    fs::read_to_string(path).map_err(|e| JailError::io(format!("reading {}", path.display()), e))
}

fn create(dir: &Path) -> Result<(), JailError> {
    fs::create_dir_all(dir).map_err(|e| JailError::io(format!("creating {}", dir.display()), e))
}

/// A new v1 cpuset group starts with no CPUs and no memory nodes and refuses tasks; give each
/// level from `root` down to `dir` its parent's sets unless it has its own.
fn inherit_cpuset(root: &Path, dir: &Path) -> Result<(), JailError> {
    let Ok(relative) = dir.strip_prefix(root) else {
        return Ok(());
    };
    let mut parent = root.to_path_buf();
    for part in relative.components() {
        let child = parent.join(part);
        for file in ["cpuset.cpus", "cpuset.mems"] {
            if read(&child.join(file))?.trim().is_empty() {
                let inherited = read(&parent.join(file))?;
                write(&child.join(file), inherited.trim())?;
            }
        }
        parent = child;
    }
    Ok(())
}

/// The group's relative path: `<parent-cgroup or exec file name>/<id>`.
fn group_path(args: &JailArgs, exec_name: &str) -> PathBuf {
    Path::new(args.parent_cgroup.as_deref().unwrap_or(exec_name)).join(&args.id)
}

/// Creates the microVM's cgroups, writes the limits, and moves this process into them.
/// Returns the cgroup directories the process joined.
pub fn setup(
    args: &JailArgs,
    exec_name: &str,
    proc_mounts: &str,
) -> Result<Vec<PathBuf>, JailError> {
    let pid = std::process::id().to_string();
    match args.cgroup_version {
        CgroupVersion::V1 => setup_v1(args, exec_name, proc_mounts, &pid),
        CgroupVersion::V2 => setup_v2(args, exec_name, proc_mounts, &pid),
    }
}

fn setup_v1(
    args: &JailArgs,
    exec_name: &str,
    proc_mounts: &str,
    pid: &str,
) -> Result<Vec<PathBuf>, JailError> {
    // One directory per hierarchy: controllers mounted together (cpu,cpuacct) share it.
    let mut groups: Vec<(PathBuf, Vec<&CgroupSetting>)> = Vec::new();
    for setting in &args.cgroups {
        let root = v1_root(proc_mounts, &setting.controller).ok_or_else(|| {
            JailError::Cgroup(format!(
                "--cgroup {}: no cgroup v1 hierarchy with the {} controller is mounted (see \
                 /proc/mounts; --cgroup-version 2 for the unified hierarchy)",
                setting.file, setting.controller
            ))
        })?;
        match groups.iter_mut().find(|(r, _)| *r == root) {
            Some((_, list)) => list.push(setting),
            None => groups.push((root, vec![setting])),
        }
    }
    let relative = group_path(args, exec_name);
    let mut joined = Vec::new();
    for (root, settings) in groups {
        let dir = root.join(&relative);
        create(&dir)?;
        if settings.iter().any(|s| s.controller == "cpuset") {
            inherit_cpuset(&root, &dir)?;
        }
        for s in settings {
            write(&dir.join(&s.file), &s.value)?;
        }
        write(&dir.join("cgroup.procs"), pid)?;
        joined.push(dir);
    }
    Ok(joined)
}

fn setup_v2(
    args: &JailArgs,
    exec_name: &str,
    proc_mounts: &str,
    pid: &str,
) -> Result<Vec<PathBuf>, JailError> {
    let root = v2_root(proc_mounts).ok_or_else(|| {
        JailError::Cgroup("--cgroup-version 2: no cgroup2 hierarchy is mounted".into())
    })?;
    if args.cgroups.is_empty() {
        // Firecracker's rule: without limits, join an existing --parent-cgroup (set up by the
        // operator) and create nothing.
        let Some(parent) = &args.parent_cgroup else {
            return Ok(Vec::new());
        };
        let dir = root.join(parent);
        if !dir.is_dir() {
            return Ok(Vec::new());
        }
        write(&dir.join("cgroup.procs"), pid)?;
        return Ok(vec![dir]);
    }
    let available = read(&root.join("cgroup.controllers"))?;
    let mut controllers: Vec<&str> = Vec::new();
    for s in &args.cgroups {
        if !available.split_whitespace().any(|c| c == s.controller) {
            return Err(JailError::Cgroup(format!(
                "--cgroup {}: the {} controller is not available in the cgroup v2 hierarchy at \
                 {} (its cgroup.controllers: {:?}; a controller bound to a v1 hierarchy is not \
                 available in v2)",
                s.file,
                s.controller,
                root.display(),
                available.trim()
            )));
        }
        if !controllers.contains(&s.controller.as_str()) {
            controllers.push(&s.controller);
        }
    }
    let relative = group_path(args, exec_name);
    let dir = root.join(&relative);
    create(&dir)?;
    // Each level above the group must delegate the controllers to its children.
    let mut level = root.clone();
    for part in relative.components() {
        for c in &controllers {
            let control = level.join("cgroup.subtree_control");
            if !read(&control)?.split_whitespace().any(|e| e == *c) {
                write(&control, &format!("+{c}"))?;
            }
        }
        level = level.join(part);
    }
    for s in &args.cgroups {
        write(&dir.join(&s.file), &s.value)?;
    }
    write(&dir.join("cgroup.procs"), pid)?;
    Ok(vec![dir])
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTS: &str = "\
tmpfs /sys/fs/cgroup tmpfs rw,relatime,mode=755 0 0
cgroup /sys/fs/cgroup/cpu,cpuacct cgroup rw,relatime,cpu,cpuacct 0 0
cgroup /sys/fs/cgroup/memory cgroup rw,relatime,memory 0 0
cgroup /sys/fs/cgroup/systemd cgroup rw,relatime,name=systemd 0 0
cgroup2 /sys/fs/cgroup/unified cgroup2 rw,relatime 0 0
";

    #[test]
    fn roots_come_from_the_mount_table() {
        assert_eq!(
            v1_root(MOUNTS, "cpu"),
            Some(PathBuf::from("/sys/fs/cgroup/cpu,cpuacct"))
        );
        assert_eq!(
            v1_root(MOUNTS, "cpuacct"),
            Some(PathBuf::from("/sys/fs/cgroup/cpu,cpuacct"))
        );
        assert_eq!(
            v1_root(MOUNTS, "memory"),
            Some(PathBuf::from("/sys/fs/cgroup/memory"))
        );
        assert_eq!(v1_root(MOUNTS, "pids"), None);
        // "systemd" is not a controller option, "name=systemd" is.
        assert_eq!(v1_root(MOUNTS, "systemd"), None);
        assert_eq!(
            v2_root(MOUNTS),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        assert_eq!(v2_root("cgroup /x cgroup rw,cpu 0 0\n"), None);
    }
}
