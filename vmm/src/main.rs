//! The `ferry` binary: parse the command line, drive the VM controller, exit with the guest's
//! status. Every VMM-side failure is one `error: …` line on stderr and status 1.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;

use std::path::Path;
use std::sync::{Arc, Mutex};

use ferry_vmm::api_server::ApiService;
use ferry_vmm::builder::BuildOptions;
use ferry_vmm::cli::{serial_config, Cli, Command, ReceiveArgs, RunArgs};
use ferry_vmm::controller::VmController;
use ferry_vmm::event_loop::RawTerminal;
use ferry_vmm::firecracker_cli;
use ferry_vmm::migration::admission::Admission;
use ferry_vmm::migration::destination::{apply_maps, receive as receive_migration, ReceiveOptions};
use ferry_vmm::migration::Security;
use ferry_vmm::{seccomp, snapshot, VmmError};

fn main() -> ExitCode {
    // Started as `firecracker` (a symlink): Firecracker's command line.
    let mut argv = std::env::args();
    if argv
        .next()
        .is_some_and(|a| firecracker_cli::invoked_as_firecracker(&a))
    {
        return ExitCode::from(firecracker_cli::main(&argv.collect::<Vec<_>>()));
    }
    // Started as `jailer`: Firecracker's jailer command line.
    if std::env::args()
        .next()
        .is_some_and(|a| ferry_vmm::jail::invoked_as_jailer(&a))
    {
        let args: Vec<String> = std::env::args().skip(1).collect();
        return ExitCode::from(ferry_vmm::jail::main(&args, true));
    }
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => run(*args),
        Command::Receive(args) => receive(args),
        Command::Ctl(args) => ctl(args),
        Command::Firecracker(args) => return ExitCode::from(firecracker_cli::main(&args.args)),
        Command::Jail(args) => return ExitCode::from(ferry_vmm::jail::main(&args.args, false)),
    };
    match result {
        Ok(status) => ExitCode::from(status),
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}

fn init_logging(level: log::LevelFilter) {
    ferry_vmm::logger::init(level);
}

fn run(args: RunArgs) -> Result<u8, VmmError> {
    init_logging(args.log_level);
    // Before anything is opened or built: every thread from here on runs filtered.
    seccomp::init(args.seccomp.policy())?;
    let (config, options) = args.to_config(std::io::stdin().is_terminal());
    let raw_terminal = if config.serial.stdin {
        RawTerminal::enable()
    } else {
        None
    };
    let booting = args.kernel.is_some() || args.restore.is_some();
    let mut controller = match &args.restore {
        Some(dir) => {
            let dir = Path::new(dir);
            let mut saved = snapshot::read_state(&dir.join(snapshot::STATE_FILE))?;
            // This invocation's console, not the one the snapshot was taken with.
            saved.config.serial = config.serial.clone();
            // A snapshot is data: it opens only what this host maps or allows (or vouches for
            // with --trust-snapshot), as an incoming migration does.
            let maps = args.restore_maps();
            apply_maps(&mut saved.config, &maps)?;
            let admission = if args.trust_snapshot {
                Admission::trust_all()
            } else {
                Admission::new(&args.allow_paths)?
            };
            admission.admit(&mut saved.config, &maps)?;
            let mut controller =
                snapshot::restore(&dir.join(snapshot::MEMORY_FILE), &saved, options)?;
            controller.resume()?;
            controller
        }
        None => {
            let mut controller = VmController::new(config, options);
            if booting {
                controller.start()?;
            }
            controller
        }
    };
    let status = match &args.api_socket {
        Some(socket) => serve_api(socket, controller)?,
        None => exit_status(controller.wait_for_exit()?),
    };
    drop(raw_terminal);
    Ok(status)
}

/// Serves the API until the guest exits or migrates away.
fn serve_api(socket: &str, controller: VmController) -> Result<u8, VmmError> {
    let controller = Arc::new(Mutex::new(controller));
    let mut service = ApiService::start(Path::new(socket), controller)?;
    service.run()
}

fn ctl(args: ferry_api::CtlArgs) -> Result<u8, VmmError> {
    match ferry_api::run_ctl(&args.api_socket, args.command, args.json) {
        Ok(text) => {
            if !text.is_empty() {
                println!("{text}");
            }
            Ok(0)
        }
        Err(e) => {
            eprintln!("error: {e}");
            // 3 for a migration in doubt, 1 otherwise.
            std::process::exit(e.exit_code());
        }
    }
}

/// Statuses outside 0..=255 cannot come from the guest; clamp defensively.
fn exit_status(status: i32) -> u8 {
    u8::try_from(status).unwrap_or(1)
}

fn receive(args: ReceiveArgs) -> Result<u8, VmmError> {
    init_logging(args.log_level);
    // Before listening: the peer's bytes are parsed under the filter.
    seccomp::init(args.seccomp.policy())?;
    let serial = serial_config(args.serial.as_ref(), std::io::stdin().is_terminal());
    // Credentials and the allow-list are read before listening: a bad file fails at once.
    let security =
        Security::for_url(&args.security.options(), &args.listen).map_err(VmmError::Config)?;
    let options = ReceiveOptions {
        maps: args.receive_maps(),
        admission: Admission::new(&args.allow_paths)?,
        security,
        serial,
        build: BuildOptions::default(),
    };
    let mut controller = receive_migration(&args.listen, options)
        .map_err(|e| VmmError::Device(format!("incoming migration failed: {e}")))?;
    match &args.api_socket {
        Some(socket) => serve_api(socket, controller),
        None => Ok(exit_status(controller.wait_for_exit()?)),
    }
}
