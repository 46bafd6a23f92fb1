//! Serves the ferry API with the in-memory [`MockVmm`]: for the OpenAPI conformance run
//! (`api/tests/schemathesis.sh`) and for trying clients without a VM.
//!
//! `mock_server SOCKET [--tcp HOST:PORT]`: with `--tcp`, also forwards TCP connections to the
//! socket byte for byte, because schemathesis speaks only TCP. Prints `ready` once serving.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::Arc;

use ferry_api::mock::MockVmm;

fn pump(mut from: impl Read, mut to: impl Write, close: impl FnOnce()) {
    let _ = std::io::copy(&mut from, &mut to);
    close();
}

fn forward(tcp: TcpStream, socket: PathBuf) -> std::io::Result<()> {
    let unix = UnixStream::connect(socket)?;
    let (tcp_in, unix_out) = (tcp.try_clone()?, unix.try_clone()?);
    let upstream = std::thread::spawn(move || {
        pump(tcp_in, &unix_out, || {
            let _ = unix_out.shutdown(Shutdown::Write);
        })
    });
    pump(&unix, &tcp, || {
        let _ = tcp.shutdown(Shutdown::Write);
    });
    let _ = upstream.join();
    Ok(())
}

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
    let listener = match TcpListener::bind(&addr) {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!("mock_server: {addr}: {e}");
            server.shutdown();
            std::process::exit(1);
        }
    };
    println!("ready");
    for tcp in listener.incoming().flatten() {
        let socket = socket.clone();
        std::thread::spawn(move || {
            let _ = forward(tcp, socket);
        });
    }
}
