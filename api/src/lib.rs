//! Configuration model shared by ferry's command line and its HTTP API.
//!
//! One model, two front ends: `ferry run` flags and the Firecracker-compatible API both produce a
//! [`VmConfig`], and the VMM builds a VM only from that. Field names follow Firecracker's API so the
//! JSON forms are what Firecracker clients send.

pub mod config;

pub use config::*;
