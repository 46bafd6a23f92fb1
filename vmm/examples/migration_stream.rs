//! Migration stream throughput by protection (not a test): plain TCP, TLS 1.3 and the PSK channel
//! over loopback, through ferry's own `Stream` (the code the migration uses), without a guest, so
//! the figure is the cost of the protection alone. The sender writes 2 MiB buffers (the size the
//! page sender flushes) and 4 MiB runs (its longest MEM_DATA); the receiver reads into a 1 MiB
//! buffer (the destination's BufReader). Modes are interleaved round by round; medians printed.
//!
//! Usage: cargo run --release -p ferry-vmm --example migration_stream -- [GIB] [ROUNDS]

use std::io::{Read, Write};
use std::time::Instant;

use ferry_vmm::migration::tls::TlsFiles;
use ferry_vmm::migration::transport::{Listener, Stream};
use ferry_vmm::migration::{MigrationUrl, Security, SecurityOptions};

fn credentials(dir: &std::path::Path) -> (SecurityOptions, SecurityOptions, SecurityOptions) {
    let ca_key = rcgen::KeyPair::generate().expect("key");
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca.self_signed(&ca_key).expect("CA");
    std::fs::write(dir.join("ca.pem"), ca.pem()).expect("write");
    let mut tls = Vec::new();
    for name in ["dst", "src"] {
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()])
            .expect("params")
            .signed_by(&key, &ca, &ca_key)
            .expect("cert");
        std::fs::write(dir.join(format!("{name}.pem")), cert.pem()).expect("write");
        std::fs::write(dir.join(format!("{name}.key")), key.serialize_pem()).expect("write");
        tls.push(SecurityOptions {
            tls: Some(TlsFiles {
                cert: dir.join(format!("{name}.pem")),
                key: dir.join(format!("{name}.key")),
                ca: dir.join("ca.pem"),
            }),
            ..Default::default()
        });
    }
    let psk = dir.join("psk");
    std::fs::write(&psk, [7u8; 32]).expect("write");
    let psk = SecurityOptions {
        psk_file: Some(psk),
        ..Default::default()
    };
    (tls[0].clone(), tls[1].clone(), psk)
}

/// MiB/s of one transfer of `bytes` from a sender to a receiver thread.
fn transfer(dst: &SecurityOptions, src: &SecurityOptions, bytes: u64) -> f64 {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let url: MigrationUrl = format!("tcp:127.0.0.1:{port}").parse().expect("url");
    let listener = Listener::bind(&url).expect("bind");
    let server = Security::for_url(dst, &url).expect("destination credentials");
    let client = Security::for_url(src, &url).expect("source credentials");
    let receiver = std::thread::spawn(move || {
        let mut stream = listener.accept(&server).expect("accept");
        let mut buf = vec![0u8; 1 << 20];
        let mut got = 0u64;
        while got < bytes {
            match stream.read(&mut buf).expect("read") {
                0 => break,
                n => got += n as u64,
            }
        }
        stream.write_all(b"k").expect("ack");
        got
    });
    let mut stream = Stream::connect(&url, &client).expect("connect");
    let data: Vec<u8> = (0..(4usize << 20))
        .map(|i| (i * 7 + i / 4096) as u8)
        .collect();
    let start = Instant::now();
    let mut sent = 0u64;
    let mut big = false;
    while sent < bytes {
        let len = if big { 4 << 20 } else { 2 << 20 }.min((bytes - sent) as usize);
        stream.write_all(&data[..len]).expect("write");
        sent += len as u64;
        big = !big;
    }
    let mut ack = [0u8; 1];
    stream.read_exact(&mut ack).expect("ack");
    let secs = start.elapsed().as_secs_f64();
    assert_eq!(receiver.join().expect("receiver"), bytes);
    bytes as f64 / (1 << 20) as f64 / secs
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let mut args = std::env::args().skip(1);
    let gib: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(2);
    let rounds: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(5);
    let dir = std::env::temp_dir().join(format!("ferry-stream-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let (tls_dst, tls_src, psk) = credentials(&dir);
    let plain = SecurityOptions::default();
    let modes = [
        ("plain", plain.clone(), plain),
        ("tls", tls_dst, tls_src),
        ("psk", psk.clone(), psk),
    ];
    let mut results = vec![Vec::new(); modes.len()];
    for round in 1..=rounds {
        for (i, (name, dst, src)) in modes.iter().enumerate() {
            let mib_s = transfer(dst, src, gib << 30);
            eprintln!("round {round}: {name} {mib_s:.0} MiB/s");
            results[i].push(mib_s);
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    let plain = median(results[0].clone());
    println!("| stream ({gib} GiB over loopback, {rounds} rounds, medians) | MiB/s | × plain |");
    println!("|---|---|---|");
    for ((name, _, _), r) in modes.iter().zip(&results) {
        let m = median(r.clone());
        println!("| {name} | {m:.0} | {:.2}× |", m / plain);
    }
}
