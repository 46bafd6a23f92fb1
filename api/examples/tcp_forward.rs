//! `tcp_forward HOST:PORT SOCKET`: forwards a loopback TCP port to a Unix socket byte for byte,
//! so schemathesis (TCP only) can test a real `ferry firecracker --api-sock SOCKET`
//! (`api/tests/schemathesis.sh`). Prints `ready` once listening; the socket may appear later
//! (each connection opens it anew).

#[path = "support/tcp_forward.rs"]
mod tcp_forward;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [addr, socket] = args.as_slice() else {
        eprintln!("usage: tcp_forward HOST:PORT SOCKET");
        std::process::exit(2);
    };
    let listener = match tcp_forward::bind(addr) {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!("tcp_forward: {addr}: {e}");
            std::process::exit(1);
        }
    };
    println!("ready");
    tcp_forward::serve(listener, socket.into())
}
