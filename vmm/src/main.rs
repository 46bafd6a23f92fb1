//! The `ferry` binary: parse the command line, drive the VM controller, exit with the guest's
//! status. Every VMM-side failure is one `error: …` line on stderr and status 1.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;

use ferry_vmm::cli::{Cli, Command, RunArgs};
use ferry_vmm::controller::VmController;
use ferry_vmm::event_loop::RawTerminal;
use ferry_vmm::VmmError;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => run(args),
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
    let mut controller = VmController::new(config, options);
    controller.start()?;
    let status = controller.wait_for_exit()?;
    drop(raw_terminal);
    // Statuses outside 0..=255 cannot come from the guest; clamp defensively.
    Ok(u8::try_from(status).unwrap_or(1))
}
