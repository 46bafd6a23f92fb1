//! The jailer's command line: Firecracker's `jailer` flags plus ferry's `--dev`, parsed by hand
//! (as `firecracker_cli` does) so that the form and the errors match Firecracker's, and validated
//! completely before anything on the host is touched.

use std::path::{Path, PathBuf};

use super::JailError;

/// Where jails are built unless `--chroot-base-dir` says otherwise (Firecracker's default).
pub const DEFAULT_CHROOT_BASE: &str = "/srv/jailer";
/// `RLIMIT_NOFILE` when no `no-file` limit is given (Firecracker's default).
pub const DEFAULT_NO_FILE: u64 = 2048;

/// Which cgroup hierarchy `--cgroup` values go to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupVersion {
    V1,
    V2,
}

/// One `--cgroup FILE=VALUE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupSetting {
    /// The controller, the part of the file name before the first dot (`cpu`, `memory`, …).
    pub controller: String,
    pub file: String,
    pub value: String,
}

/// Everything the jailer was asked to do, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JailArgs {
    pub id: String,
    /// The binary to copy into the jail and execute; `None`: ferry itself.
    pub exec_file: Option<PathBuf>,
    pub uid: u32,
    pub gid: u32,
    pub chroot_base: PathBuf,
    pub netns: Option<PathBuf>,
    pub daemonize: bool,
    pub new_pid_ns: bool,
    pub cgroup_version: CgroupVersion,
    pub cgroups: Vec<CgroupSetting>,
    pub parent_cgroup: Option<String>,
    /// `RLIMIT_FSIZE`, bytes.
    pub fsize: Option<u64>,
    /// `RLIMIT_NOFILE`.
    pub no_file: u64,
    /// Host device nodes to recreate, same path and numbers, inside the jail (ferry's `--dev`).
    pub devices: Vec<PathBuf>,
    /// Everything after `--`, for the executed VMM.
    pub extra: Vec<String>,
}

/// What the command line asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Invocation {
    Help,
    Version,
    Jail(Box<JailArgs>),
}

const VALUE_FLAGS: &[&str] = &[
    "id",
    "exec-file",
    "uid",
    "gid",
    "chroot-base-dir",
    "netns",
    "cgroup-version",
    "cgroup",
    "parent-cgroup",
    "resource-limit",
    "dev",
];
/// Flags that may be given more than once.
const REPEATABLE: &[&str] = &["cgroup", "resource-limit", "dev"];
const SWITCHES: &[&str] = &["daemonize", "new-pid-ns", "help", "version"];

/// Cgroup v1 files the jailer may write, by controller.
const V1_FILES: &[&str] = &[
    "cpu.shares",
    "cpu.cfs_quota_us",
    "cpu.cfs_period_us",
    "cpu.cfs_burst_us",
    "cpu.rt_runtime_us",
    "cpu.rt_period_us",
    "cpuset.cpus",
    "cpuset.mems",
    "cpuset.cpu_exclusive",
    "cpuset.mem_exclusive",
    "memory.limit_in_bytes",
    "memory.soft_limit_in_bytes",
    "memory.memsw.limit_in_bytes",
    "memory.kmem.limit_in_bytes",
    "memory.swappiness",
    "memory.oom_control",
    "pids.max",
    "blkio.weight",
    "blkio.throttle.read_bps_device",
    "blkio.throttle.write_bps_device",
    "blkio.throttle.read_iops_device",
    "blkio.throttle.write_iops_device",
    "net_cls.classid",
    "net_prio.ifpriomap",
];

/// Cgroup v2 files the jailer may write.
const V2_FILES: &[&str] = &[
    "cpu.max",
    "cpu.max.burst",
    "cpu.weight",
    "cpu.weight.nice",
    "cpu.idle",
    "cpuset.cpus",
    "cpuset.mems",
    "cpuset.cpus.partition",
    "memory.max",
    "memory.high",
    "memory.low",
    "memory.min",
    "memory.swap.max",
    "memory.swap.high",
    "memory.zswap.max",
    "memory.oom.group",
    "io.max",
    "io.weight",
    "io.latency",
    "pids.max",
];

/// True for a hugetlb limit file of either version (`hugetlb.2MB.limit_in_bytes`,
/// `hugetlb.1GB.max`, `hugetlb.2MB.rsvd.max`): the page size is part of the name.
fn is_hugetlb_file(file: &str, version: CgroupVersion) -> bool {
    let Some(rest) = file.strip_prefix("hugetlb.") else {
        return false;
    };
    let Some((size, limit)) = rest.split_once('.') else {
        return false;
    };
    let size_ok = size.len() >= 3
        && (size.ends_with("KB") || size.ends_with("MB") || size.ends_with("GB"))
        && size[..size.len() - 2].bytes().all(|b| b.is_ascii_digit());
    let limits: &[&str] = match version {
        CgroupVersion::V1 => &["limit_in_bytes", "rsvd.limit_in_bytes"],
        CgroupVersion::V2 => &["max", "rsvd.max"],
    };
    size_ok && limits.contains(&limit)
}

fn usage(msg: String) -> JailError {
    JailError::Usage(msg)
}

/// Firecracker's instance id rule: 1 to 64 letters, digits and `-`. The id names a directory
/// and a cgroup, so nothing else (no `/`, no `.`) may reach a path.
pub fn check_id(id: &str) -> Result<(), JailError> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
    if ok {
        Ok(())
    } else {
        Err(usage(format!(
            "--id {id:?}: use 1 to 64 letters, digits or '-'"
        )))
    }
}

/// An absolute path without `..`: the jailer runs as root, so a path never climbs out of where
/// its writer meant it to point.
fn absolute_path(flag: &str, value: &str) -> Result<PathBuf, JailError> {
    let path = Path::new(value);
    if !path.is_absolute() {
        return Err(usage(format!("--{flag} {value}: must be an absolute path")));
    }
    if path
        .components()
        .any(|c| matches!(c, std::path::Component::ParentDir))
    {
        return Err(usage(format!("--{flag} {value}: must not contain '..'")));
    }
    Ok(path.to_path_buf())
}

fn parse_id_number(flag: &str, value: &str) -> Result<u32, JailError> {
    value
        .parse::<u32>()
        .ok()
        .filter(|n| *n != u32::MAX)
        .ok_or_else(|| {
            usage(format!(
                "--{flag} {value}: expected a number below 4294967295"
            ))
        })
}

/// `--cgroup FILE=VALUE`, checked against the known files of `version`.
fn parse_cgroup(arg: &str, version: CgroupVersion) -> Result<CgroupSetting, JailError> {
    let (file, value) = arg
        .split_once('=')
        .ok_or_else(|| usage(format!("--cgroup {arg}: expected FILE=VALUE")))?;
    let known = match version {
        CgroupVersion::V1 => V1_FILES,
        CgroupVersion::V2 => V2_FILES,
    };
    if !known.contains(&file) && !is_hugetlb_file(file, version) {
        let (v, other, other_files) = match version {
            CgroupVersion::V1 => (1, 2, V2_FILES),
            CgroupVersion::V2 => (2, 1, V1_FILES),
        };
        if other_files.contains(&file) {
            return Err(usage(format!(
                "--cgroup {arg}: {file} is a cgroup v{other} file; add --cgroup-version {other}"
            )));
        }
        return Err(usage(format!(
            "--cgroup {arg}: {file} is not a cgroup v{v} file the jailer sets (known: {}, \
             hugetlb.<size>.…)",
            known.join(", ")
        )));
    }
    // One line of printable text: the value is written as is into a kernel file.
    if value.is_empty() || value.len() > 4096 || !value.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        return Err(usage(format!(
            "--cgroup {arg}: the value must be 1 to 4096 printable characters"
        )));
    }
    let controller = file.split('.').next().unwrap_or(file).to_string();
    Ok(CgroupSetting {
        controller,
        file: file.to_string(),
        value: value.to_string(),
    })
}

/// `--parent-cgroup`: a relative path inside the hierarchy, no `..`, no empty parts.
fn parse_parent_cgroup(value: &str) -> Result<String, JailError> {
    let trimmed = value.trim_matches('/');
    let ok = !trimmed.is_empty()
        && trimmed.split('/').all(|part| {
            !part.is_empty()
                && part != "."
                && part != ".."
                && part
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.:@".contains(&b))
        });
    if ok {
        Ok(trimmed.to_string())
    } else {
        Err(usage(format!(
            "--parent-cgroup {value}: expected a relative cgroup path (letters, digits, '-', '_', \
             '.', ':', '@' between '/'; no '..')"
        )))
    }
}

/// `--resource-limit RESOURCE=VALUE[,RESOURCE=VALUE]`: `fsize` (bytes) and `no-file`.
fn parse_resource_limits(
    arg: &str,
    fsize: &mut Option<u64>,
    no_file: &mut Option<u64>,
) -> Result<(), JailError> {
    for item in arg.split(',') {
        let (name, value) = item
            .split_once('=')
            .ok_or_else(|| usage(format!("--resource-limit {item}: expected RESOURCE=VALUE")))?;
        let number: u64 = value.parse().map_err(|_| {
            usage(format!(
                "--resource-limit {item}: expected a non-negative whole number"
            ))
        })?;
        match name {
            "fsize" => *fsize = Some(number),
            "no-file" => {
                if number == 0 {
                    return Err(usage(format!(
                        "--resource-limit {item}: no-file must be at least 1"
                    )));
                }
                *no_file = Some(number)
            }
            _ => {
                return Err(usage(format!(
                    "--resource-limit {item}: unknown resource {name:?} (fsize, no-file)"
                )))
            }
        }
    }
    Ok(())
}

/// Parses the jailer's arguments (without the program name). `require_exec_file`: Firecracker's
/// `jailer` requires `--exec-file`; `ferry jail` runs ferry itself without it.
pub fn parse(args: &[String], require_exec_file: bool) -> Result<Invocation, JailError> {
    let (own, extra) = match args.iter().position(|a| a == "--") {
        Some(i) => (&args[..i], args[i + 1..].to_vec()),
        None => (args, Vec::new()),
    };
    let mut values: Vec<(&str, String)> = Vec::new();
    let mut switches: Vec<&str> = Vec::new();
    let mut iter = own.iter();
    while let Some(arg) = iter.next() {
        let Some(flag) = arg.strip_prefix("--") else {
            return Err(usage(format!(
                "unexpected argument '{arg}': the VMM's arguments go after '--'"
            )));
        };
        let (name, inline) = match flag.split_once('=') {
            Some((name, value)) => (name, Some(value.to_string())),
            None => (flag, None),
        };
        let seen = values.iter().any(|(n, _)| *n == name) || switches.contains(&name);
        if seen && !REPEATABLE.contains(&name) {
            return Err(usage(format!("--{name} is given more than once")));
        }
        if let Some(&known) = VALUE_FLAGS.iter().find(|f| **f == name) {
            let value = match inline {
                Some(value) => value,
                None => iter
                    .next()
                    .filter(|v| !v.starts_with("--"))
                    .cloned()
                    .ok_or_else(|| usage(format!("--{name} needs a value")))?,
            };
            values.push((known, value));
        } else if let Some(&known) = SWITCHES.iter().find(|f| **f == name) {
            if inline.is_some() {
                return Err(usage(format!("--{name} takes no value")));
            }
            switches.push(known);
        } else {
            return Err(usage(format!("unknown argument '--{name}' (see --help)")));
        }
    }
    if switches.contains(&"help") {
        return Ok(Invocation::Help);
    }
    if switches.contains(&"version") {
        return Ok(Invocation::Version);
    }
    let value = |name: &str| {
        values
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    };
    let all = |name: &str| -> Vec<&str> {
        values
            .iter()
            .filter(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    };
    let required = |name: &str| value(name).ok_or_else(|| usage(format!("--{name} is required")));
    let id = required("id")?.to_string();
    check_id(&id)?;
    let exec_file = match value("exec-file") {
        Some(path) => Some(absolute_path("exec-file", path)?),
        None if require_exec_file => return Err(usage("--exec-file is required".into())),
        None => None,
    };
    if let Some(path) = &exec_file {
        if path.file_name().is_none() {
            return Err(usage(format!(
                "--exec-file {}: names no file",
                path.display()
            )));
        }
    }
    let uid = parse_id_number("uid", required("uid")?)?;
    let gid = parse_id_number("gid", required("gid")?)?;
    let chroot_base = absolute_path(
        "chroot-base-dir",
        value("chroot-base-dir").unwrap_or(DEFAULT_CHROOT_BASE),
    )?;
    let netns = value("netns")
        .map(|p| absolute_path("netns", p))
        .transpose()?;
    let cgroup_version = match value("cgroup-version").unwrap_or("1") {
        "1" => CgroupVersion::V1,
        "2" => CgroupVersion::V2,
        other => return Err(usage(format!("--cgroup-version {other}: expected 1 or 2"))),
    };
    let cgroups = all("cgroup")
        .into_iter()
        .map(|c| parse_cgroup(c, cgroup_version))
        .collect::<Result<Vec<_>, _>>()?;
    for (i, c) in cgroups.iter().enumerate() {
        if cgroups[..i].iter().any(|d| d.file == c.file) {
            return Err(usage(format!(
                "--cgroup {} is given more than once",
                c.file
            )));
        }
    }
    let parent_cgroup = value("parent-cgroup")
        .map(parse_parent_cgroup)
        .transpose()?;
    let (mut fsize, mut no_file) = (None, None);
    for limit in all("resource-limit") {
        parse_resource_limits(limit, &mut fsize, &mut no_file)?;
    }
    let devices = all("dev")
        .into_iter()
        .map(|p| absolute_path("dev", p))
        .collect::<Result<Vec<_>, _>>()?;
    for dev in &devices {
        if !dev.starts_with("/dev/") {
            return Err(usage(format!(
                "--dev {}: must be a device node under /dev",
                dev.display()
            )));
        }
    }
    Ok(Invocation::Jail(Box::new(JailArgs {
        id,
        exec_file,
        uid,
        gid,
        chroot_base,
        netns,
        daemonize: switches.contains(&"daemonize"),
        new_pid_ns: switches.contains(&"new-pid-ns"),
        cgroup_version,
        cgroups,
        parent_cgroup,
        fsize,
        no_file: no_file.unwrap_or(DEFAULT_NO_FILE),
        devices,
        extra,
    })))
}

pub const HELP: &str = "\
ferry's jailer (started as `jailer` or `ferry jail`): builds a chroot for one microVM, puts the
process in its cgroups and namespaces, drops to an unprivileged user and executes the VMM.

  --id ID                     microVM id: 1 to 64 letters, digits or '-' (required)
  --exec-file PATH            the VMM binary to copy into the jail and run (required as
                              `jailer`; `ferry jail` runs ferry itself by default)
  --uid UID, --gid GID        the user and group the VMM runs as (required)
  --chroot-base-dir DIR       where jails are built (default /srv/jailer): the jail is
                              DIR/<exec file name>/<id>/root
  --netns PATH                join this network namespace (e.g. /var/run/netns/NAME)
  --daemonize                 new session, standard input and output on /dev/null
  --new-pid-ns                run the VMM as PID 1 of a new PID namespace (the jailer exits;
                              the VMM's PID is in <jail>/<exec file name>.pid)
  --cgroup-version 1|2        the cgroup hierarchy for --cgroup (default 1)
  --cgroup FILE=VALUE         write VALUE to FILE of the microVM's cgroup before the VMM runs
                              (repeatable; e.g. cpu.max=50000 100000, memory.max=512M,
                              pids.max=64; v1: cpu.cfs_quota_us, memory.limit_in_bytes, …)
  --parent-cgroup PATH        the microVM's cgroup is <cgroup root>/PATH/<id> (default PATH:
                              the exec file's name)
  --resource-limit R=N[,R=N]  fsize=BYTES, no-file=N (default no-file=2048)
  --dev PATH                  (ferry) also create this host device node (e.g. a macvtap's
                              /dev/tapN) inside the jail, owned by UID:GID
  --version, --help
  -- ARGS                     the VMM's arguments (after --id and start-time flags)
";

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    fn jail(list: &[&str]) -> Result<JailArgs, JailError> {
        match parse(&args(list), false)? {
            Invocation::Jail(j) => Ok(*j),
            other => panic!("unexpected {other:?}"),
        }
    }

    const BASE: &[&str] = &["--id", "vm-1", "--uid", "1000", "--gid", "1000"];

    fn with(extra: &[&str]) -> Vec<&'static str> {
        let mut v: Vec<&str> = BASE.to_vec();
        // Leaking is fine in a test: it keeps the helper signature simple.
        for e in extra {
            v.push(Box::leak(e.to_string().into_boxed_str()));
        }
        v
    }

    #[test]
    fn defaults_follow_firecracker() {
        let j = jail(BASE).unwrap();
        assert_eq!(j.chroot_base, PathBuf::from("/srv/jailer"));
        assert_eq!(j.cgroup_version, CgroupVersion::V1);
        assert_eq!(j.no_file, DEFAULT_NO_FILE);
        assert_eq!(j.exec_file, None);
        assert!(j.extra.is_empty());
    }

    #[test]
    fn everything_parses() {
        let j = jail(&with(&[
            "--exec-file=/usr/bin/firecracker",
            "--cgroup-version",
            "2",
            "--cgroup",
            "cpu.max=50000 100000",
            "--cgroup",
            "memory.max=64M",
            "--cgroup",
            "hugetlb.2MB.max=0",
            "--parent-cgroup",
            "/uvms/ext/",
            "--resource-limit",
            "fsize=1000,no-file=64",
            "--netns",
            "/var/run/netns/a",
            "--daemonize",
            "--new-pid-ns",
            "--dev",
            "/dev/tap7",
            "--",
            "--api-sock",
            "/run/api.sock",
        ]))
        .unwrap();
        assert_eq!(j.exec_file, Some(PathBuf::from("/usr/bin/firecracker")));
        assert_eq!(j.cgroup_version, CgroupVersion::V2);
        assert_eq!(j.cgroups.len(), 3);
        assert_eq!(j.cgroups[0].controller, "cpu");
        assert_eq!(j.cgroups[0].value, "50000 100000");
        assert_eq!(j.parent_cgroup.as_deref(), Some("uvms/ext"));
        assert_eq!((j.fsize, j.no_file), (Some(1000), 64));
        assert!(j.daemonize && j.new_pid_ns);
        assert_eq!(j.devices, vec![PathBuf::from("/dev/tap7")]);
        assert_eq!(j.extra, args(&["--api-sock", "/run/api.sock"]));
    }

    #[test]
    fn bad_inputs_are_refused_with_a_reason() {
        let cases: &[(&[&str], &str)] = &[
            (&["--uid", "1", "--gid", "1"], "--id is required"),
            (&["--id", "a/b", "--uid", "1", "--gid", "1"], "letters"),
            (&["--id", "", "--uid", "1", "--gid", "1"], "letters"),
            (&["--id", "a", "--gid", "1"], "--uid is required"),
            (&["--id", "a", "--uid", "x", "--gid", "1"], "number"),
            (&["--id", "a", "--uid", "-1", "--gid", "1"], "number"),
        ];
        for (list, want) in cases {
            let err = jail(list).unwrap_err().to_string();
            assert!(err.contains(want), "{list:?}: {err}");
        }
        let long = "a".repeat(65);
        assert!(jail(&["--id", &long, "--uid", "1", "--gid", "1"]).is_err());
        assert!(jail(&["--id", &"a".repeat(64), "--uid", "1", "--gid", "1"]).is_ok());
        let refused: &[&[&str]] = &[
            &["--exec-file", "ferry"],
            &["--exec-file", "/usr/../bin/ferry"],
            &["--chroot-base-dir", "srv"],
            &["--netns", "netns/a"],
            &["--cgroup", "memory.max=1G"],
            &["--cgroup", "memory.limit_in_bytes"],
            &["--cgroup", "../../release_agent=/x"],
            &["--cgroup", "cpu.shares=1\n2"],
            &["--cgroup", "cpu.shares=1", "--cgroup", "cpu.shares=2"],
            &["--cgroup-version", "3"],
            &["--parent-cgroup", "../x"],
            &["--parent-cgroup", "a//b"],
            &["--resource-limit", "nproc=1"],
            &["--resource-limit", "fsize=-1"],
            &["--resource-limit", "no-file=0"],
            &["--dev", "/etc/passwd"],
            &["--dev", "dev/kvm"],
            &["--daemonize", "--daemonize"],
            &["--unknown"],
            &["stray"],
        ];
        for extra in refused {
            assert!(
                matches!(jail(&with(extra)), Err(JailError::Usage(_))),
                "{extra:?} was accepted"
            );
        }
        let v2: &[&str] = &[
            "--cgroup-version",
            "2",
            "--cgroup",
            "memory.limit_in_bytes=1",
        ];
        assert!(jail(&with(v2)).is_err());
    }

    #[test]
    fn jailer_form_requires_the_exec_file() {
        let err = parse(&args(BASE), true).unwrap_err().to_string();
        assert!(err.contains("--exec-file is required"), "{err}");
    }

    #[test]
    fn help_and_version_win() {
        assert_eq!(parse(&args(&["--help"]), true).unwrap(), Invocation::Help);
        assert_eq!(
            parse(&args(&["--version"]), true).unwrap(),
            Invocation::Version
        );
    }
}
