#!/usr/bin/env python3
"""Benchmark (not a test): exec -> API socket accepting, for ferry and (if given) another VMM.

For each run: spawn `ferry run --api-socket S`, poll connect() on S in a tight loop, and record the
wall time when the first connect succeeds; then stop the process (SIGSTOP) and read its CPU time
(all threads, ns) from /proc/PID/task/*/schedstat. Prints median and p90.

Usage: resources/bench/api_start.py [--runs N] [--ferry PATH] [--firecracker PATH]
"""
import argparse, os, signal, socket, statistics, subprocess, tempfile, time


def cpu_ns(pid):
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
        except OSError:
            pass
    return total


def one(cmd_for_socket):
    d = tempfile.mkdtemp(prefix="ferry-api-bench-")
    path = os.path.join(d, "api.sock")
    t0 = time.monotonic_ns()
    p = subprocess.Popen(cmd_for_socket(path), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    s = socket.socket(socket.AF_UNIX)
    while True:
        try:
            s.connect(path)
            break
        except OSError:
            if p.poll() is not None:
                raise SystemExit(f"VMM exited with {p.returncode}")
    wall = time.monotonic_ns() - t0
    os.kill(p.pid, signal.SIGSTOP)
    cpu = cpu_ns(p.pid)
    p.kill()
    p.wait()
    s.close()
    try:
        os.unlink(path)
        os.rmdir(d)
    except OSError:
        pass
    return wall / 1e6, cpu / 1e6


def report(name, samples):
    walls = sorted(w for w, _ in samples)
    cpus = sorted(c for _, c in samples)
    p90 = lambda xs: xs[min(len(xs) - 1, int(len(xs) * 0.9))]
    print(f"| {name} | {statistics.median(walls):.2f} | {p90(walls):.2f} | "
          f"{statistics.median(cpus):.2f} | {p90(cpus):.2f} |")


def main():
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--ferry", default=os.path.join(root, "target/release/ferry"))
    ap.add_argument("--firecracker", default=None)
    a = ap.parse_args()
    print("| VMM | wall median ms | wall p90 ms | CPU median ms | CPU p90 ms |")
    print("|---|---|---|---|---|")
    one(lambda s: [a.ferry, "run", "--api-socket", s])  # warm-up
    report("ferry", [one(lambda s: [a.ferry, "run", "--api-socket", s]) for _ in range(a.runs)])
    if a.firecracker:
        report("firecracker",
               [one(lambda s: [a.firecracker, "--api-sock", s]) for _ in range(a.runs)])


if __name__ == "__main__":
    main()
