#!/usr/bin/env python3
"""One boot-time sample: exec a VMM, wait for the guest's first serial line, measure, kill.

Usage: first_line.py [--match TEXT] [--guest-mib N] [--timeout S] [--attempts N] -- COMMAND [ARGS...]

Prints one JSON object on stdout:
  wall_ms     time from just before the VMM is spawned to the moment a chunk of its stdout that
              completes a line containing TEXT (default "probe:") has been read;
  cpu_ms      the VMM's CPU time (user + system, all threads, exited ones included, guest time
              included) at that moment: the VMM is stopped with SIGSTOP as soon as the line is
              read, then its CPU time is read from the process CPU clock
              (clock_gettime on the pid's CPUCLOCK_SCHED clock: nanosecond-precise, unlike the
              10 ms ticks of /proc/PID/stat);
  rss_kib     VmRSS from /proc/PID/status;
  rss_anon_kib, rss_file_kib, rss_shmem_kib: its breakdown from the same file;
  guest_rss_kib  the resident part of guest RAM: the Rss of every read-write mapping in
              /proc/PID/smaps whose size is the guest RAM size (--guest-mib, rounded up to 2 MiB,
              up to 4 MiB larger for alignment and guard pages);
  vmm_rss_kib rss_kib - guest_rss_kib: the VMM's own footprint;
  line        the matched line; error (instead of the figures) if the run failed;
  attempts    runs needed: the VMM is stopped with SIGSTOP as soon as the line is read, but one
              that exits within that window is run again (up to --attempts times).

The VMM is killed with SIGKILL after sampling; its stderr goes to the file named by
$FIRST_LINE_STDERR (default: discarded).
"""

import argparse
import json
import os
import re
import select
import signal
import subprocess
import sys
import time

CPUCLOCK_SCHED = 2


def process_cpu_ns(pid):
    """CPU time of the whole thread group of `pid`, as clock_getcpuclockid(pid) would give."""
    clock_id = ((~pid) << 3) | CPUCLOCK_SCHED
    return time.clock_gettime_ns(clock_id)


def read_status(pid):
    fields = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "RssAnon", "RssFile", "RssShmem"):
                fields[key] = int(value.split()[0])
    return fields


def guest_rss_kib(pid, guest_kib):
    """Summed Rss of the mappings that hold guest RAM.

    They are recognised by size (the guest RAM size, up to 4 MiB more) and by being readable
    and writable: glibc reserves 128 MiB per malloc arena too, but as PROT_NONE, and only the
    small part it uses becomes a separate read-write mapping.
    """
    low, high = guest_kib, guest_kib + 4096
    total = 0
    is_guest = False
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            if re.match(r"^[0-9a-f]+-[0-9a-f]+ ", line):
                span, perms = line.split()[:2]
                start, end = (int(x, 16) for x in span.split("-"))
                is_guest = low <= (end - start) // 1024 <= high and perms.startswith("rw")
            elif line.startswith("Rss:") and is_guest:
                total += int(line.split()[1])
    return total


def wait_for_line(proc, needle, deadline):
    """Reads stdout until a complete line containing `needle`.

    Returns (line, t_ns), or (None, why) on timeout or end of output.
    """
    fd = proc.stdout.fileno()
    buf = b""
    while True:
        left = deadline - time.monotonic()
        ready, _, _ = select.select([fd], [], [], max(left, 0))
        if not ready:
            return None, "timed out"
        chunk = os.read(fd, 65536)
        if not chunk:
            try:
                code = proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                code = "none yet"
            return None, f"its output ended (exit status {code}; output: {buf[-200:]!r})"
        now = time.monotonic_ns()
        buf += chunk
        for line in buf.split(b"\n")[:-1]:
            if needle in line:
                return line.decode(errors="replace").rstrip("\r"), now


def measure(cmd, needle, guest_kib, timeout, stderr):
    t0 = time.monotonic_ns()
    try:
        proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=stderr
        )
    except OSError as e:
        return {"error": f"starting {cmd[0]}: {e}"}
    try:
        line, t1 = wait_for_line(proc, needle, time.monotonic() + timeout)
        if line is None:
            return {"error": f"no line containing {needle.decode()!r} within {timeout}s: {t1}"}
        # Freeze the process first, so the figures describe the moment the line arrived and a
        # guest that exits right after its first line cannot take its /proc entries away.
        os.kill(proc.pid, signal.SIGSTOP)
        try:
            cpu = process_cpu_ns(proc.pid)
            status = read_status(proc.pid)
            guest = guest_rss_kib(proc.pid, guest_kib)
        except (OSError, ValueError) as e:
            return {"error": f"reading /proc/{proc.pid}: {e}", "exited": True}
        if "VmRSS" not in status:
            return {"error": "the VMM exited before it could be sampled", "exited": True}
        rss = status["VmRSS"]
        return {
            "wall_ms": (t1 - t0) / 1e6,
            "cpu_ms": cpu / 1e6,
            "rss_kib": rss,
            "rss_anon_kib": status.get("RssAnon", 0),
            "rss_file_kib": status.get("RssFile", 0),
            "rss_shmem_kib": status.get("RssShmem", 0),
            "guest_rss_kib": guest,
            "vmm_rss_kib": rss - guest,
            "line": line,
        }
    finally:
        proc.kill()
        proc.wait()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--match", default="probe:")
    parser.add_argument("--guest-mib", type=int, default=128)
    parser.add_argument("--timeout", type=float, default=30.0)
    parser.add_argument("--attempts", type=int, default=3)
    parser.add_argument("cmd", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not cmd:
        parser.error("no command given")
    guest_kib = -(-args.guest_mib // 2) * 2 * 1024
    err_path = os.environ.get("FIRST_LINE_STDERR")
    stderr = open(err_path, "ab") if err_path else subprocess.DEVNULL
    try:
        # A VMM that exits within microseconds of the line is sampled again (rarely needed).
        for attempt in range(max(1, args.attempts)):
            result = measure(cmd, args.match.encode(), guest_kib, args.timeout, stderr)
            if not result.get("exited"):
                break
        result["attempts"] = attempt + 1
    finally:
        if err_path:
            stderr.close()
    print(json.dumps(result))
    return 1 if "error" in result else 0


if __name__ == "__main__":
    sys.exit(main())
