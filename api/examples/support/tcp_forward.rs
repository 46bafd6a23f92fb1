//! A loopback TCP port forwarded byte for byte to a Unix socket: schemathesis speaks only TCP,
//! ferry's API only Unix sockets. Shared by the `mock_server` and `tcp_forward` examples.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

fn pump(mut from: impl Read, mut to: impl Write, close: impl FnOnce()) {
    let _ = std::io::copy(&mut from, &mut to);
    close();
}

/// One connection: both directions until each side closes its half.
fn forward(tcp: TcpStream, socket: &Path) -> std::io::Result<()> {
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

/// Binds `addr` (the caller prints its readiness after this returns `Ok`).
pub fn bind(addr: &str) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr)
}

/// Forwards every connection on `listener` to `socket`, a thread each; never returns.
pub fn serve(listener: TcpListener, socket: PathBuf) -> ! {
    for tcp in listener.incoming().flatten() {
        let socket = socket.clone();
        std::thread::spawn(move || {
            let _ = forward(tcp, &socket);
        });
    }
    unreachable!("TcpListener::incoming never ends")
}
