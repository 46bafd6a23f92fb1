//! The jailer: Firecracker's `jailer` process interface (ferry started as `jailer`, or `ferry
//! jail`). It builds a chroot for one microVM, puts the process into the microVM's cgroups and
//! namespaces, sets resource limits, drops to an unprivileged user with no capabilities and
//! executes the VMM inside, so a VMM compromised by its guest holds only its own jail.
//!
//! Order matters, and follows Firecracker: everything that needs the host's file system (the
//! binary and its libraries, `/proc/mounts`, cgroups, the network namespace, device numbers,
//! `/dev/null`) is opened or done before `pivot_root`; everything written into the jail is
//! written after it, so nothing inside the jail can redirect a write onto the host.

pub mod args;
pub mod cgroup;
pub mod chroot;
pub mod libs;
pub mod populate;
pub mod process;

use std::ffi::OsString;
use std::fs::File;
use std::io;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use args::{Invocation, JailArgs};
use populate::DeviceNode;
use process::PidNsRole;

/// Why the jailer stopped. Firecracker's jailer exits 1 for every failure; `ferry jail` exits 2
/// for a usage error, as the rest of ferry's command line.
#[derive(Debug, thiserror::Error)]
pub enum JailError {
    #[error("{0} (see --help)")]
    Usage(String),
    #[error("{what}: {source}")]
    Io { what: String, source: io::Error },
    #[error("cgroup: {0}")]
    Cgroup(String),
    #[error("jail: {0}")]
    Jail(String),
    #[error("exec file: {0}")]
    Exec(String),
}

impl JailError {
    pub fn io(what: String, source: io::Error) -> Self {
        Self::Io { what, source }
    }

    /// The exit status: 1, or 2 for a usage error of `ferry jail`.
    pub fn exit_code(&self, as_jailer: bool) -> u8 {
        match self {
            Self::Usage(_) if !as_jailer => 2,
            _ => 1,
        }
    }
}

/// The jailer's own version line.
pub fn version_line() -> String {
    format!(
        "Jailer v{} (ferry {})",
        ferry_api::server::FIRECRACKER_API_VERSION,
        ferry_api::VERSION
    )
}

/// True when this process was started under a jailer's name (`jailer`, `jailer-v1.7.0-x86_64`).
pub fn invoked_as_jailer(argv0: &str) -> bool {
    Path::new(argv0)
        .file_name()
        .and_then(|name| name.to_str())
        .is_some_and(|name| name.contains("jailer"))
}

/// Runs the jailer on `args` (without the program name); returns only on failure or for
/// `--help`/`--version`, with the exit status. `as_jailer`: started as Firecracker's `jailer`.
pub fn main(args: &[String], as_jailer: bool) -> u8 {
    let start_us = process::clock_us(libc::CLOCK_MONOTONIC);
    let result = args::parse(args, as_jailer).and_then(|invocation| match invocation {
        Invocation::Help => {
            print!("{}\n\n{}", version_line(), args::HELP);
            Ok(())
        }
        Invocation::Version => {
            println!("{}", version_line());
            Ok(())
        }
        Invocation::Jail(jail) => run(&jail, start_us),
    });
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("error: {e}");
            e.exit_code(as_jailer)
        }
    }
}

/// `<base>/<exec file name>/<id>/root`.
pub fn jail_dir(base: &Path, exec_name: &str, id: &str) -> PathBuf {
    base.join(exec_name).join(id).join("root")
}

/// The exec file, and the name it has in the jail (and in the jail's path).
fn exec_file(args: &JailArgs) -> Result<(PathBuf, String), JailError> {
    let path = match &args.exec_file {
        Some(path) => path.clone(),
        None => std::fs::read_link("/proc/self/exe")
            .map_err(|e| JailError::io("finding ferry's own binary".into(), e))?,
    };
    let name = match &args.exec_file {
        Some(path) => path
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| {
                JailError::Usage(format!("--exec-file {}: names no file", path.display()))
            })?
            .to_string(),
        None => "ferry".to_string(),
    };
    if name.is_empty() || name.starts_with('.') || name.contains('/') {
        return Err(JailError::Usage(format!(
            "--exec-file: bad file name {name:?}"
        )));
    }
    Ok((path, name))
}

/// The VMM's arguments. Firecracker's convention (`--id ID --start-time-us … <extra>`) for any
/// exec file but ferry's own; for ferry (no `--exec-file`, or a file named `ferry…`), the same
/// flags go after its `firecracker` subcommand, which is also what runs when no arguments are
/// given; ferry's other subcommands (`run`, `receive`) get the extra arguments as they are.
pub fn vmm_args(exec_name: &str, args: &JailArgs, times: [u64; 3]) -> Vec<String> {
    let fc_flags = || {
        vec![
            "--id".to_string(),
            args.id.clone(),
            "--start-time-us".to_string(),
            times[0].to_string(),
            "--start-time-cpu-us".to_string(),
            times[1].to_string(),
            "--parent-cpu-time-us".to_string(),
            times[2].to_string(),
        ]
    };
    let ferry = exec_name.starts_with("ferry") && !exec_name.contains("firecracker");
    if !ferry {
        return [fc_flags(), args.extra.clone()].concat();
    }
    match args.extra.first().map(String::as_str) {
        None => [vec!["firecracker".to_string()], fc_flags()].concat(),
        Some("firecracker") => [
            vec!["firecracker".to_string()],
            fc_flags(),
            args.extra[1..].to_vec(),
        ]
        .concat(),
        Some(_) => args.extra.clone(),
    }
}

/// Builds the jail and executes the VMM in it; returns only on failure (or, in the parent, for
/// `--new-pid-ns`, after the VMM started).
fn run(args: &JailArgs, start_us: u64) -> Result<(), JailError> {
    process::close_inherited_fds()?;
    process::clear_environment();
    let (exec_path, exec_name) = exec_file(args)?;
    let jail = jail_dir(&args.chroot_base, &exec_name, &args.id);

    // Everything from the host, while it is still visible.
    let mut exec = File::open(&exec_path)
        .map_err(|e| JailError::io(format!("opening {}", exec_path.display()), e))?;
    let libraries = libs::needed(&exec_path, &mut exec)?;
    io::Seek::rewind(&mut exec)
        .map_err(|e| JailError::io(format!("reading {}", exec_path.display()), e))?;
    let proc_mounts = std::fs::read_to_string("/proc/mounts")
        .map_err(|e| JailError::io("reading /proc/mounts".into(), e))?;
    let devices: Vec<DeviceNode> = args
        .devices
        .iter()
        .map(|p| populate::host_device(p))
        .collect::<Result<_, _>>()?;
    if let Ok(meta) = std::fs::symlink_metadata(&jail) {
        if !meta.is_dir() {
            return Err(JailError::Jail(format!(
                "{} is not a directory",
                jail.display()
            )));
        }
    }
    std::fs::create_dir_all(&jail)
        .map_err(|e| JailError::io(format!("creating {}", jail.display()), e))?;
    if let Some(netns) = &args.netns {
        process::join_netns(netns)?;
    }
    cgroup::setup(args, &exec_name, &proc_mounts)?;
    let dev_null = if args.daemonize {
        Some(
            File::options()
                .read(true)
                .write(true)
                .open("/dev/null")
                .map_err(|e| JailError::io("opening /dev/null".into(), e))?,
        )
    } else {
        None
    };

    chroot::enter(&jail)?;

    populate::owned_dirs(args.uid, args.gid)?;
    let jailed_exec = PathBuf::from("/").join(&exec_name);
    populate::copy_in(&mut exec, &jailed_exec)?;
    drop(exec);
    for (path, mut file) in libraries {
        populate::copy_in(&mut file, &path)?;
    }
    for (node, required) in populate::standard_devices() {
        match populate::make_node(&node, args.uid, args.gid) {
            Ok(()) => {}
            Err(e) if !required => eprintln!("warning: {e}"),
            Err(e) => return Err(e),
        }
    }
    for node in &devices {
        populate::make_node(node, args.uid, args.gid)?;
    }

    // After the copies: an fsize limit below the binary's size would stop them.
    process::set_limits(args.fsize, args.no_file)?;

    if let Some(dev_null) = &dev_null {
        process::daemonize(dev_null)?;
    }
    drop(dev_null);
    if args.new_pid_ns {
        if let PidNsRole::Parent(pid) = process::new_pid_namespace()? {
            populate::write_pid_file(&exec_name, pid)?;
            return Ok(());
        }
    } else {
        // SAFETY: no arguments.
        populate::write_pid_file(&exec_name, unsafe { libc::getpid() })?;
    }

    let cpu_us = process::clock_us(libc::CLOCK_PROCESS_CPUTIME_ID);
    let argv = vmm_args(&exec_name, args, [start_us, cpu_us, cpu_us]);
    process::drop_privileges(args.uid, args.gid)?;
    let err = Command::new(&jailed_exec)
        .args(argv.iter().map(OsString::from))
        .env_clear()
        .exec();
    Err(JailError::Exec(format!(
        "executing {} in the jail: {err}",
        jailed_exec.display()
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(list: &[&str]) -> JailArgs {
        let args: Vec<String> = list.iter().map(|s| s.to_string()).collect();
        match args::parse(&args, false).unwrap() {
            Invocation::Jail(j) => *j,
            _ => unreachable!(),
        }
    }

    #[test]
    fn vmm_arguments_follow_the_exec_file() {
        let base = ["--id", "vm1", "--uid", "1", "--gid", "1"];
        let times = [10, 20, 30];
        let fc: Vec<&str> = [&base[..], &["--", "--api-sock", "/a"]].concat();
        let a = parsed(&fc);
        assert_eq!(
            vmm_args("firecracker", &a, times),
            [
                "--id",
                "vm1",
                "--start-time-us",
                "10",
                "--start-time-cpu-us",
                "20",
                "--parent-cpu-time-us",
                "30",
                "--api-sock",
                "/a"
            ]
        );
        let sub: Vec<&str> = [&base[..], &["--", "firecracker", "--api-sock", "/a"]].concat();
        let v = vmm_args("ferry", &parsed(&sub), times);
        assert_eq!(v[..3], ["firecracker", "--id", "vm1"]);
        assert_eq!(v[v.len() - 2..], ["--api-sock", "/a"]);
        assert_eq!(
            vmm_args("ferry", &parsed(&base), times)[..3],
            ["firecracker", "--id", "vm1"]
        );
        let run: Vec<&str> = [&base[..], &["--", "run", "--kernel", "/k"]].concat();
        assert_eq!(
            vmm_args("ferry", &parsed(&run), times),
            ["run", "--kernel", "/k"]
        );
    }

    #[test]
    fn jail_path_and_names() {
        assert_eq!(
            jail_dir(Path::new("/srv/jailer"), "firecracker", "a-1"),
            PathBuf::from("/srv/jailer/firecracker/a-1/root")
        );
        assert!(invoked_as_jailer("/usr/bin/jailer"));
        assert!(invoked_as_jailer("jailer-v1.7.0-x86_64"));
        assert!(!invoked_as_jailer("/usr/bin/ferry"));
    }
}
