#!/usr/bin/env python3
"""One live-migration sample: boot the probe's `dirty` test on a source VMM, start a destination,
let the dirtier warm up, migrate over loopback, read the VMM's own figures, kill everything.

Usage: migration_run.py --vmm ferry|qemu --memory MIB --dirty-mib N [--rate R] [--settle S]
                        [--transport tcp|unix] [--downtime-ms MS] [--max-iterations N]
                        [--timeout S] [--ferry PATH] [--qemu PATH] [--probe PATH] [--workdir DIR]
                        [--security plain|tls|psk]

Prints one JSON object on stdout (always, exit status 0 unless the arguments are wrong):
  vmm, total_ms, downtime_ms, bytes, rounds   the VMM's own figures:
      ferry: the source's `{"event":"migration-completed",...}` stderr line (total: `migrate`
             request → COMMITTED received; downtime: vCPUs paused → COMMITTED received, i.e. the
             destination has restored and resumed the guest; rounds: pre-copy rounds including
             the full first pass);
      QEMU:  `query-migrate` on the source (total-time; downtime: source VM stop → last byte sent
             and the completion handshake; ram.transferred; ram.dirty-sync-count);
  wall_ms        migrate command/QMP `migrate` issued → completion seen by this script;
  stream_mib_s   bytes / total (ferry) or bytes / (total - setup) (QEMU): whole-migration
                 stream throughput, handshake and dirty-log syncs included;
  last_round_mib_s  the VMM's own bandwidth estimate (ferry: last round over 1 MiB; QEMU:
                 ram.mbps, of the last iteration);
  dest_running   the destination reported the guest running afterwards;
  error          (instead of figures) what went wrong, with the tail of the VMM's stderr.

The dirtier is warmed up for --settle seconds (default: long enough for one full pass over the
region, plus 1 s) so the hot pages have all been written once before the migration starts.
Every process started here is killed (SIGKILL) before the script exits.
"""

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

MiB = 1 << 20


class Failure(Exception):
    """A sample that could not be taken; its message goes into the JSON's `error`."""


class Procs:
    """Every child started for this sample, killed on exit whatever happens."""

    def __init__(self):
        self.children = []

    def spawn(self, argv, stdout_path, stderr_path):
        out = open(stdout_path, "wb")
        err = open(stderr_path, "wb")
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                start_new_session=True)
        out.close()
        err.close()
        self.children.append(proc)
        return proc

    def kill_all(self):
        for proc in self.children:
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass


def read(path):
    try:
        with open(path, "rb") as f:
            return f.read().decode("utf-8", "replace")
    except FileNotFoundError:
        return ""


def tail(path, lines=6):
    return " | ".join(read(path).strip().splitlines()[-lines:])


def wait_until(predicate, timeout, what, proc=None, err_path=None):
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc is not None and proc.poll() is not None:
            raise Failure(f"{what}: process exited with {proc.returncode}: {tail(err_path)}")
        if time.monotonic() > deadline:
            raise Failure(f"timeout ({timeout:.0f} s) waiting for {what}")
        time.sleep(0.01)


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def listening(url):
    """Whether something listens on `url` (tcp:HOST:PORT or unix:PATH), without connecting:
    a connection would be taken as the incoming migration."""
    if url.startswith("unix:"):
        path = url[len("unix:"):]
        return any(line.endswith(path) and line.split()[3] == "00010000"
                   for line in read("/proc/net/unix").splitlines()[1:])
    port = int(url.rsplit(":", 1)[1])
    for line in read("/proc/net/tcp").splitlines()[1:]:
        fields = line.split()
        if len(fields) > 3 and fields[3] == "0A" and fields[1].endswith(f":{port:04X}"):
            return True
    return False


def connects(path):
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        try:
            s.connect(path)
            return True
        except OSError:
            return False


def json_events(text):
    events = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("{") and "migration-completed" in line:
            try:
                events.append(json.loads(line))
            except ValueError:
                pass
    return events


def security_flags(args, work):
    """(destination flags, source flags) for --security: plain, tls (a throwaway CA and two
    certificates made with openssl in the work directory) or psk (32 random bytes)."""
    if args.security == "plain":
        return [], []
    if args.security == "psk":
        key = os.path.join(work, "psk")
        with open(key, "wb") as f:
            f.write(os.urandom(32))
        return ["--psk-file", key], ["--psk-file", key]
    def ssl(*argv):
        subprocess.run(["openssl", *argv], check=True, capture_output=True, cwd=work)
    ssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-keyout", "ca.key", "-out", "ca.pem", "-subj", "/CN=bench CA", "-days", "1")
    for name in ("dst", "src"):
        ssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}")
        with open(os.path.join(work, "san.ext"), "w") as f:
            f.write("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
        ssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", f"{name}.pem", "-days", "1", "-extfile", "san.ext")
    def tls(name):
        return ["--tls-cert", os.path.join(work, f"{name}.pem"),
                "--tls-key", os.path.join(work, f"{name}.key"),
                "--tls-ca", os.path.join(work, "ca.pem")]
    return tls("dst"), tls("src")


def run_ferry(args, work, procs):
    src_sock = os.path.join(work, "src.sock")
    dst_sock = os.path.join(work, "dst.sock")
    src_out, src_err = os.path.join(work, "src.out"), os.path.join(work, "src.err")
    dst_out, dst_err = os.path.join(work, "dst.out"), os.path.join(work, "dst.err")
    url = migration_url(args, work)
    src = procs.spawn([args.ferry, "run", "--kernel", args.probe, "--cmdline", cmdline(args),
                       "--memory", f"{args.memory}M", "--exit-device", "--api-socket", src_sock,
                       "--log-level", args.ferry_log_level],
                      src_out, src_err)
    wait_until(lambda: "probe: dirty: running" in read(src_out), 60, "the source probe",
               src, src_err)
    if "FAIL" in read(src_out):
        raise Failure(f"probe failed: {read(src_out).strip()}")
    wait_until(lambda: connects(src_sock), 30, "the source API socket", src, src_err)
    dst_security, src_security = security_flags(args, work)
    dst = procs.spawn([args.ferry, "receive", "--listen", url, "--api-socket", dst_sock,
                       "--serial", "none", "--log-level", args.ferry_log_level, *dst_security],
                      dst_out, dst_err)
    wait_until(lambda: listening(url), 30, "ferry receive to listen", dst, dst_err)
    time.sleep(settle(args))

    ctl = [args.ferry, "ctl", "--api-socket", src_sock, "--json", "migrate", "--to", url,
           "--downtime-ms", str(args.downtime_ms), "--max-iterations", str(args.max_iterations),
           *src_security]
    started = time.monotonic()
    try:
        out = subprocess.run(ctl, capture_output=True, timeout=args.timeout)
    except subprocess.TimeoutExpired:
        raise Failure(f"`ferry ctl migrate` did not return within {args.timeout} s; "
                      f"source: {tail(src_err)}; destination: {tail(dst_err)}")
    wall_ms = (time.monotonic() - started) * 1000
    stdout = out.stdout.decode("utf-8", "replace")
    if out.returncode != 0:
        raise Failure(f"`ferry ctl migrate` exited {out.returncode}: "
                      f"{stdout.strip()} {out.stderr.decode('utf-8', 'replace').strip()}; "
                      f"source: {tail(src_err)}; destination: {tail(dst_err)}")
    try:
        result = json.loads(stdout)
    except ValueError:
        raise Failure(f"`ferry ctl migrate --json` printed no JSON: {stdout!r}")
    try:
        src.wait(timeout=15)
    except subprocess.TimeoutExpired:
        raise Failure("the source did not exit within 15 s after `migrated`")
    events = [e for e in json_events(read(src_err)) if e.get("side") == "source"]
    if not events:
        raise Failure(f"no migration-completed line from the source: {tail(src_err)}")
    ev = events[-1]
    wait_until(lambda: connects(dst_sock), 15, "the destination API socket", dst, dst_err)
    info = subprocess.run([args.ferry, "ctl", "--api-socket", dst_sock, "info"],
                          capture_output=True, timeout=15)
    dest_running = "Running" in info.stdout.decode("utf-8", "replace") and dst.poll() is None
    total = ev["total_ms"]
    return {
        "total_ms": total,
        "downtime_ms": ev["downtime_ms"],
        "bytes": ev["bytes"],
        "rounds": ev["rounds"],
        "wall_ms": round(wall_ms, 1),
        "stream_mib_s": round(ev["bytes"] / MiB / max(total, 1) * 1000, 1),
        "last_round_mib_s": round(result.get("bandwidth_mib_s") or 0.0, 1),
        "ctl_total_ms": result.get("total_ms"),
        "source_exit": src.returncode,
        "dest_running": dest_running,
    }


class Qmp:
    """A minimal QMP client (JSON lines over a Unix socket), events skipped."""

    def __init__(self, path, timeout):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(path)
        self.buf = b""
        self.recv()  # greeting
        self.cmd("qmp_capabilities")

    def recv(self):
        while b"\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise Failure("QMP connection closed")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return json.loads(line)

    def cmd(self, name, **arguments):
        msg = {"execute": name}
        if arguments:
            msg["arguments"] = arguments
        self.sock.sendall(json.dumps(msg).encode() + b"\n")
        while True:
            reply = self.recv()
            if "event" in reply:
                continue
            if "error" in reply:
                raise Failure(f"QMP {name}: {reply['error']}")
            return reply.get("return")

    def close(self):
        self.sock.close()


def run_qemu(args, work, procs):
    url = migration_url(args, work)
    src_qmp, dst_qmp = os.path.join(work, "src.qmp"), os.path.join(work, "dst.qmp")
    src_ser, dst_ser = os.path.join(work, "src.serial"), os.path.join(work, "dst.serial")
    src_err, dst_err = os.path.join(work, "src.err"), os.path.join(work, "dst.err")

    def qemu(qmp, serial, extra):
        return [args.qemu, "-M", "microvm", "-accel", "kvm", "-m", f"{args.memory}M",
                "-nodefaults", "-no-user-config", "-nographic", "-serial", f"file:{serial}",
                "-qmp", f"unix:{qmp},server=on,wait=off", "-kernel", args.probe,
                "-append", cmdline(args)] + extra

    src = procs.spawn(qemu(src_qmp, src_ser, []), os.devnull, src_err)
    wait_until(lambda: "probe: dirty: running" in read(src_ser), 60, "the source probe",
               src, src_err)
    if "FAIL" in read(src_ser):
        raise Failure(f"probe failed: {read(src_ser).strip()}")
    dst = procs.spawn(qemu(dst_qmp, dst_ser, ["-incoming", url]), os.devnull, dst_err)
    wait_until(lambda: connects(src_qmp), 30, "the source QMP socket", src, src_err)
    wait_until(lambda: connects(dst_qmp) and listening(url), 30, "the destination to listen",
               dst, dst_err)
    sq = Qmp(src_qmp, 30)
    dq = Qmp(dst_qmp, 30)
    # "Bandwidth unlimited": QEMU's default max-bandwidth (128 MiB/s) is a throttle, not a limit
    # of the link; 1 TiB/s never binds. downtime-limit is QEMU's equivalent of --downtime-ms.
    sq.cmd("migrate-set-parameters", **{"max-bandwidth": 1 << 40,
                                        "downtime-limit": args.downtime_ms})
    time.sleep(settle(args))

    started = time.monotonic()
    sq.cmd("migrate", uri=url)
    deadline = started + args.timeout
    while True:
        info = sq.cmd("query-migrate")
        status = info.get("status")
        if status == "completed":
            break
        if status in ("failed", "cancelled"):
            raise Failure(f"QEMU migration {status}: {info.get('error-desc', info)}")
        if time.monotonic() > deadline:
            ram = info.get("ram", {})
            try:
                sq.cmd("migrate_cancel")
            except Failure:
                pass
            raise Failure(f"QEMU migration did not complete within {args.timeout} s "
                          f"(status {status}, dirty-sync-count {ram.get('dirty-sync-count')}, "
                          f"dirty-pages-rate {ram.get('dirty-pages-rate')}, "
                          f"mbps {ram.get('mbps')})")
        time.sleep(0.02)
    wall_ms = (time.monotonic() - started) * 1000
    dest_running = False
    dl = time.monotonic() + 15
    while time.monotonic() < dl:
        if dq.cmd("query-status").get("status") == "running":
            dest_running = True
            break
        time.sleep(0.02)
    sq.close()
    dq.close()
    ram = info.get("ram", {})
    total = info.get("total-time", 0)
    setup = info.get("setup-time", 0)
    return {
        "total_ms": total,
        "downtime_ms": info.get("downtime"),
        "bytes": ram.get("transferred"),
        "rounds": ram.get("dirty-sync-count"),
        "wall_ms": round(wall_ms, 1),
        "stream_mib_s": round(ram.get("transferred", 0) / MiB / max(total - setup, 1) * 1000, 1),
        "last_round_mib_s": round(ram.get("mbps", 0.0) * 1e6 / 8 / MiB, 1),
        "setup_ms": setup,
        "dest_running": dest_running,
    }


def cmdline(args):
    line = f"probe.test=dirty probe.dirty_mib={args.dirty_mib}"
    if args.rate:
        line += f" probe.dirty_rate_mib={args.rate}"
    return line


def settle(args):
    if args.settle is not None:
        return args.settle
    return (args.dirty_mib / args.rate if args.rate else 0.0) + 1.0


def migration_url(args, work):
    if args.transport == "unix":
        return f"unix:{os.path.join(work, 'migration.sock')}"
    return f"tcp:127.0.0.1:{free_port()}"


def on_signal(signum, _frame):
    """Unwinds through main's `finally` (which kills the VMMs). Later signals are ignored: a
    second SIGTERM (timeout(1) forwards the one the caller sends it) would otherwise interrupt
    the cleanup and leave a VMM behind."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sys.exit(128 + signum)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--vmm", choices=["ferry", "qemu"], required=True)
    p.add_argument("--memory", type=int, required=True, help="guest MiB")
    p.add_argument("--dirty-mib", type=int, required=True)
    p.add_argument("--rate", type=int, default=0, help="MiB/s; 0 = unpaced")
    p.add_argument("--settle", type=float, default=None)
    p.add_argument("--transport", choices=["tcp", "unix"], default="tcp")
    p.add_argument("--downtime-ms", type=int, default=300)
    p.add_argument("--max-iterations", type=int, default=30)
    p.add_argument("--timeout", type=float, default=120.0)
    p.add_argument("--ferry", default="target/release/ferry")
    p.add_argument("--qemu", default="qemu-system-x86_64")
    p.add_argument("--probe", default="target/release/probe")
    p.add_argument("--ferry-log-level", default="warn",
                   help="ferry's --log-level (info shows the switchover phases)")
    p.add_argument("--workdir", default=None, help="keep the logs here instead of a temp dir")
    p.add_argument("--security", choices=["plain", "tls", "psk"], default="plain",
                   help="ferry's stream protection (tcp only)")
    args = p.parse_args()

    work = args.workdir or tempfile.mkdtemp(prefix="ferry-migbench-")
    os.makedirs(work, exist_ok=True)
    procs = Procs()
    sample = {"vmm": args.vmm}
    try:
        runner = run_ferry if args.vmm == "ferry" else run_qemu
        sample.update(runner(args, work, procs))
    except (Failure, OSError, ValueError, KeyError, subprocess.SubprocessError) as e:
        sample["error"] = f"{type(e).__name__}: {e}" if not isinstance(e, Failure) else str(e)
    finally:
        procs.kill_all()
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(sample), flush=True)


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    main()
