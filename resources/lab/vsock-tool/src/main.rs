//! The lab's vsock tool (see Cargo.toml). Every transfer sends a deterministic pseudo-random
//! stream and checks the echo byte for byte, so a lost, duplicated or reordered byte anywhere
//! between L2's socket and L1's is reported, with the CRC-32 of what came back.
//!
//! ```text
//! vsock-tool listen PORT                       # L2: echo every AF_VSOCK connection on PORT
//! vsock-tool connect CID PORT BYTES            # L2: connect out, send BYTES, check the echo
//! vsock-tool uds-listen PATH                   # L1: echo every connection on a Unix socket
//! vsock-tool uds-connect PATH PORT BYTES [N]   # L1: N connections through `CONNECT PORT`
//! ```
//! Output: one `key=value …` line per command; exit 0 only when every byte matched.

mod stream;
mod vsock;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::process::ExitCode;
use std::thread;

use stream::{echo, exchange, Outcome};

fn usage() -> ExitCode {
    eprintln!(
        "usage: vsock-tool listen PORT | connect CID PORT BYTES | uds-listen PATH | uds-connect PATH PORT BYTES [N]"
    );
    ExitCode::from(2)
}

fn number(s: &str) -> Option<u64> {
    s.parse().ok()
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match args.as_slice() {
        ["listen", port] => match number(port).and_then(|p| u32::try_from(p).ok()) {
            Some(port) => listen_vsock(port),
            None => usage(),
        },
        ["connect", cid, port, bytes] => {
            let (Some(cid), Some(port), Some(bytes)) = (number(cid), number(port), number(bytes))
            else {
                return usage();
            };
            let (Ok(cid), Ok(port)) = (u32::try_from(cid), u32::try_from(port)) else {
                return usage();
            };
            match vsock::connect(cid, port) {
                Ok(s) => report(&exchange(s, bytes, 1), "connect"),
                Err(e) => {
                    println!(
                        "connect=error errno={} error={e}",
                        e.raw_os_error().unwrap_or(0)
                    );
                    ExitCode::from(1)
                }
            }
        }
        ["uds-listen", path] => listen_uds(path),
        ["uds-connect", path, port, bytes] => uds_connect(path, port, bytes, "1"),
        ["uds-connect", path, port, bytes, n] => uds_connect(path, port, bytes, n),
        _ => usage(),
    }
}

fn report(outcome: &Outcome, what: &str) -> ExitCode {
    println!(
        "{what}={} sent={} received={} crc={:08x}",
        if outcome.ok { "ok" } else { "mismatch" },
        outcome.sent,
        outcome.received,
        outcome.crc
    );
    if outcome.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

fn listen_vsock(port: u32) -> ExitCode {
    let listener = match vsock::listen(port) {
        Ok(l) => l,
        Err(e) => {
            println!("listen=error error={e}");
            return ExitCode::from(1);
        }
    };
    println!("listen=ok port={port}");
    loop {
        match vsock::accept(&listener) {
            Ok(s) => {
                thread::spawn(move || echo(s));
            }
            Err(e) => eprintln!("vsock-tool: accept: {e}"),
        }
    }
}

fn listen_uds(path: &str) -> ExitCode {
    let _ = std::fs::remove_file(path);
    let listener = match UnixListener::bind(path) {
        Ok(l) => l,
        Err(e) => {
            println!("uds-listen=error error={e}");
            return ExitCode::from(1);
        }
    };
    println!("uds-listen=ok path={path}");
    for s in listener.incoming() {
        match s {
            Ok(s) => {
                thread::spawn(move || echo(s));
            }
            Err(e) => eprintln!("vsock-tool: accept: {e}"),
        }
    }
    ExitCode::SUCCESS
}

/// One host-initiated connection: Firecracker's `CONNECT <port>\n`, its `OK <host port>\n`, then
/// the echo exchange. `Err` carries what the device answered instead of OK.
fn uds_one(path: &str, port: u64, bytes: u64, seed: u64) -> Result<Outcome, String> {
    let mut s = UnixStream::connect(path).map_err(|e| format!("connect {path}: {e}"))?;
    s.write_all(format!("CONNECT {port}\n").as_bytes())
        .map_err(|e| format!("write CONNECT: {e}"))?;
    // Read the answer byte by byte: whatever follows the line is the guest's data.
    let mut line = Vec::new();
    let mut reader = BufReader::with_capacity(1, &s);
    match reader.read_until(b'\n', &mut line) {
        Ok(0) => return Err("closed".into()),
        Ok(_) => {}
        Err(e) => return Err(format!("read: {e}")),
    }
    let line = String::from_utf8_lossy(&line).trim_end().to_string();
    if !line.starts_with("OK ") {
        return Err(format!("answer {line:?}"));
    }
    Ok(exchange(s, bytes, seed))
}

fn uds_connect(path: &str, port: &str, bytes: &str, n: &str) -> ExitCode {
    let (Some(port), Some(bytes), Some(n)) = (number(port), number(bytes), number(n)) else {
        return usage();
    };
    let handles: Vec<_> = (0..n)
        .map(|i| {
            let path = path.to_string();
            thread::spawn(move || uds_one(&path, port, bytes, i + 1))
        })
        .collect();
    let (mut ok, mut refused, mut bad, mut total) = (0u64, 0u64, 0u64, 0u64);
    let mut crc = 0u32;
    let mut why = String::new();
    for h in handles {
        match h.join() {
            Ok(Ok(o)) if o.ok => {
                ok += 1;
                total += o.received;
                crc ^= o.crc;
            }
            Ok(Ok(_)) => bad += 1,
            Ok(Err(e)) => {
                refused += 1;
                why = e;
            }
            Err(_) => bad += 1,
        }
    }
    println!(
        "uds-connect connections={n} ok={ok} refused={refused} mismatched={bad} bytes={total} crc-xor={crc:08x}{}",
        if why.is_empty() { String::new() } else { format!(" last-refusal={why:?}") }
    );
    if ok == n {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
