//! The `ferry` binary: parse the command line, drive the VM controller, exit with the guest's
//! status. Every VMM-side failure is one `error: …` line on stderr and status 1.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;

use std::path::Path;

use ferry_vmm::builder::BuildOptions;
use ferry_vmm::cli::{serial_config, Cli, Command, ReceiveArgs, RunArgs};
use ferry_vmm::controller::VmController;
use ferry_vmm::event_loop::RawTerminal;
use ferry_vmm::migration::destination::{receive as receive_migration, ReceiveOptions};
use ferry_vmm::{snapshot, VmmError};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => run(args),
        Command::Receive(args) => receive(args),
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
    env_logger::Builder::new()
        .filter_level(level)
        .format_target(false)
        .init();
}

fn run(args: RunArgs) -> Result<u8, VmmError> {
    init_logging(args.log_level);
    let (config, options) = args.to_config(std::io::stdin().is_terminal());
    let raw_terminal = if config.serial.stdin {
        RawTerminal::enable()
    } else {
        None
    };
    let mut controller = match &args.restore {
        Some(dir) => {
            let dir = Path::new(dir);
            let mut saved = snapshot::read_state(dir)?;
            // This invocation's console, not the one the snapshot was taken with.
            saved.config.serial = config.serial.clone();
            let mut controller = snapshot::restore(dir, &saved, options)?;
            controller.resume()?;
            controller
        }
        None => {
            let mut controller = VmController::new(config, options);
            controller.start()?;
            controller
        }
    };
    let status = controller.wait_for_exit()?;
    drop(raw_terminal);
    Ok(exit_status(status))
}

/// Statuses outside 0..=255 cannot come from the guest; clamp defensively.
fn exit_status(status: i32) -> u8 {
    u8::try_from(status).unwrap_or(1)
}

fn receive(args: ReceiveArgs) -> Result<u8, VmmError> {
    init_logging(args.log_level);
    let serial = serial_config(args.serial.as_ref(), std::io::stdin().is_terminal());
    let options = ReceiveOptions {
        maps: args.receive_maps(),
        serial,
        build: BuildOptions::default(),
    };
    let mut controller = receive_migration(&args.listen, options)
        .map_err(|e| VmmError::Device(format!("incoming migration failed: {e}")))?;
    let status = controller.wait_for_exit()?;
    Ok(exit_status(status))
}
