//! Serves the ferry API with the in-memory [`MockVmm`]: for the OpenAPI conformance run
//! (`api/tests/schemathesis.sh`) and for trying clients without a VM.
//!
//! `mock_server SOCKET [--tcp HOST:PORT]`: with `--tcp`, also forwards TCP connections to the
//! socket byte for byte, because schemathesis speaks only TCP. Prints `ready` once serving.

use std::path::PathBuf;
use std::sync::Arc;

use ferry_api::mock::MockVmm;

#[path = "support/tcp_forward.rs"]
mod tcp_forward;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (socket, tcp) = match args.as_slice() {
        [socket] => (PathBuf::from(socket), None),
        [socket, flag, addr] if flag == "--tcp" => (PathBuf::from(socket), Some(addr.clone())),
        _ => {
            eprintln!("usage: mock_server SOCKET [--tcp HOST:PORT]");
            std::process::exit(2);
        }
    };
    let server = match ferry_api::serve(&socket, Arc::new(MockVmm::new())) {
        Ok(server) => server,
        Err(e) => {
            eprintln!("mock_server: {e}");
            std::process::exit(1);
        }
    };
    let Some(addr) = tcp else {
        println!("ready");
        loop {
            std::thread::park();
        }
    };
    let listener = match tcp_forward::bind(&addr) {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!("mock_server: {addr}: {e}");
            server.shutdown();
            std::process::exit(1);
        }
    };
    println!("ready");
    tcp_forward::serve(listener, socket)
}
