#!/usr/bin/env python3
"""Raw socket throughput on this host: one stream over loopback, sender and receiver in two
processes, 4 MiB buffers (the size of ferry's MEM_DATA chunks), for --seconds.

Usage: migration_blast.py [--transport tcp|unix] [--seconds S]
Prints {"tool": "python socket blast (...)", "mib_s": ...}: bytes received / receive time.
A fallback for iperf3, and the only raw figure for Unix sockets.
"""

import argparse
import json
import os
import socket
import tempfile
import time

CHUNK = 4 << 20


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--transport", choices=["tcp", "unix"], default="tcp")
    p.add_argument("--seconds", type=float, default=5.0)
    args = p.parse_args()

    tmp = tempfile.mkdtemp(prefix="ferry-blast-")
    if args.transport == "tcp":
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.bind(("127.0.0.1", 0))
        address, family = listener.getsockname(), socket.AF_INET
    else:
        address, family = os.path.join(tmp, "blast.sock"), socket.AF_UNIX
        listener = socket.socket(family, socket.SOCK_STREAM)
        listener.bind(address)
    listener.listen(1)

    pid = os.fork()
    if pid == 0:
        try:
            with socket.socket(family, socket.SOCK_STREAM) as s:
                s.connect(address)
                data = memoryview(os.urandom(CHUNK))
                end = time.monotonic() + args.seconds
                while time.monotonic() < end:
                    s.sendall(data)
        finally:
            os._exit(0)

    conn, _ = listener.accept()
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    total = 0
    first = None
    while True:
        n = conn.recv_into(view)
        if n == 0:
            break
        if first is None:
            first = time.monotonic()
        total += n
    elapsed = time.monotonic() - (first or time.monotonic())
    conn.close()
    listener.close()
    os.waitpid(pid, 0)
    if args.transport == "unix":
        os.unlink(address)
    os.rmdir(tmp)
    print(json.dumps({"tool": f"python socket blast ({args.transport}, 4 MiB writes)",
                      "mib_s": round(total / (1 << 20) / max(elapsed, 1e-9), 1)}))


if __name__ == "__main__":
    main()
