//! The ferry virtual machine monitor.
//!
//! * [`builder`] turns a [`ferry_api::VmConfig`] into a VM: KVM objects, memory, devices, kernel.
//! * [`controller`] owns the VM and its state machine; the CLI and the API drive it.
//! * [`vcpu`] runs one thread per vCPU; [`event_loop`] runs the device thread.
//! * [`cli`] is the `ferry` command line.

pub mod api_server;
pub mod balloon;
pub mod builder;
pub mod cli;
pub mod controller;
pub mod cpu_template;
pub mod error;
pub mod event_loop;
pub mod firecracker_cli;
pub mod jail;
pub mod kvm;
pub mod legacy;
pub mod logger;
pub mod memory;
pub mod metrics;
pub mod migration;
pub mod rate_limit;
pub mod seccomp;
pub mod sink;
pub mod snapshot;
pub mod vcpu;
pub mod virtio_devices;
pub mod vm_snapshot;
pub mod vm_state;

pub use error::VmmError;
