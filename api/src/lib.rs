//! ferry's configuration model and its Firecracker-compatible HTTP API.
//!
//! One model, two front ends: `ferry run` flags and the API both produce a [`VmConfig`], and the
//! VMM builds a VM only from that. Field names follow Firecracker's API so the JSON forms are what
//! Firecracker clients send.
//!
//! - [`serve`] runs the API server on a Unix socket; the VMM implements [`ApiHandler`] (or uses
//!   [`ChannelHandler`]) and answers each validated [`ApiRequest`] with an [`ApiResponse`].
//! - [`run_ctl`] is `ferry ctl`: a client of that API ([`ctl::CtlArgs`] is its clap front end).

mod balloon;
pub mod client;
pub mod config;
pub mod cpu_template;
pub mod ctl;
pub mod handler;
pub mod migration;
pub mod mock;
pub mod models;
pub mod request;
pub mod server;
mod socket;
pub mod static_cpu_template;
pub mod thread_hook;
pub mod validate;

use std::path::PathBuf;

pub use balloon::*;
pub use config::*;
pub use cpu_template::{CpuTemplate, CpuidModifier, CpuidRegister, KvmCapability, MsrModifier};
pub use ctl::{run_ctl, CtlArgs, CtlCommand, CtlError, MigrationSecurityArgs};
pub use handler::{ApiHandler, ApiResponse, ChannelHandler, PendingRequest};
pub use migration::*;
pub use models::*;
pub use request::{parse_request, ApiRequest, RequestError};
pub use server::{
    serve, serve_with, ApiServerHandle, Oversize, ServerOptions, FIRECRACKER_MAX_PAYLOAD_BYTES,
    MAX_BODY_BYTES,
};
pub use static_cpu_template::{CpuVendor, StaticCpuTemplate};

/// ferry's version, reported by `GET /` and `GET /version`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Why the API server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("API socket {0}: {1}")]
    Socket(PathBuf, #[source] std::io::Error),
    #[error("API socket {0}: another process is serving it")]
    InUse(PathBuf),
    #[error("API socket {0}: the path exists and is not a socket; not replacing it")]
    NotASocket(PathBuf),
    #[error("API socket {0}: not usable as a Unix socket path (empty, NUL, or over 107 bytes)")]
    BadPath(PathBuf),
    #[error("cannot start the API thread: {0}")]
    Thread(#[source] std::io::Error),
}
