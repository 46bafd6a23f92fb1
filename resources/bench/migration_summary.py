#!/usr/bin/env python3
"""Turns migration samples into the markdown tables migration.sh prints.

Usage: migration_summary.py SAMPLES.jsonl [RAW.json]
SAMPLES.jsonl: one migration_run.py object per line, plus "scenario" (name) and "label" (its
description), in the order the scenarios ran. RAW.json: {"tool": ..., "mib_s": ...} of the raw
loopback socket measurement (optional).

Every figure is the median over the successful samples of its scenario and VMM (each metric's
median on its own); ratios are ferry / QEMU on those medians (< 1: ferry is faster or smaller).
Failed samples are counted and their first error is quoted under the table.
"""

import json
import sys

# Scenarios that moved less than this are left out of the throughput table.
STREAM_MIN_BYTES = 64 << 20


def median(values):
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def fmt(value, spec="{:.0f}"):
    return "–" if value is None else spec.format(value)


def ratio(a, b):
    if a is None or b is None or b == 0:
        return "–"
    return f"{a / b:.2f}×"


def gbit(mib_s):
    return None if mib_s is None else mib_s * (1 << 20) * 8 / 1e9


def main():
    if len(sys.argv) not in (2, 3):
        sys.exit(__doc__)
    samples = []
    with open(sys.argv[1]) as f:
        samples = [json.loads(line) for line in f if line.strip()]
    raw = None
    if len(sys.argv) == 3:
        try:
            with open(sys.argv[2]) as f:
                raw = json.load(f)
        except (OSError, ValueError):
            raw = None

    scenarios = []
    labels = {}
    for s in samples:
        if s["scenario"] not in labels:
            scenarios.append(s["scenario"])
            labels[s["scenario"]] = s.get("label", s["scenario"])

    def stats(scenario, vmm):
        ok = [s for s in samples if s["scenario"] == scenario and s["vmm"] == vmm
              and "error" not in s]
        bad = [s for s in samples if s["scenario"] == scenario and s["vmm"] == vmm
               and "error" in s]
        out = {"n": len(ok), "failed": len(bad), "errors": [s["error"] for s in bad]}
        for key in ("total_ms", "downtime_ms", "bytes", "rounds", "stream_mib_s",
                    "last_round_mib_s"):
            values = [s[key] for s in ok if s.get(key) is not None]
            out[key] = median(values) if values else None
        out["dest_not_running"] = sum(1 for s in ok if not s.get("dest_running"))
        return out

    print("| scenario | ferry total ms | ferry downtime ms | ferry MiB sent | ferry rounds "
          "| QEMU total ms | QEMU downtime ms | QEMU MiB sent | QEMU rounds "
          "| total ferry/QEMU | downtime ferry/QEMU | runs ok ferry, QEMU |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    notes = []
    table = {}
    for sc in scenarios:
        f, q = stats(sc, "ferry"), stats(sc, "qemu")
        table[sc] = (f, q)

        def mib(st):
            return None if st["bytes"] is None else st["bytes"] / (1 << 20)

        print(f"| {labels[sc]} | {fmt(f['total_ms'])} | {fmt(f['downtime_ms'])} | "
              f"{fmt(mib(f))} | {fmt(f['rounds'], '{:g}')} | {fmt(q['total_ms'])} | "
              f"{fmt(q['downtime_ms'])} | {fmt(mib(q))} | {fmt(q['rounds'], '{:g}')} | "
              f"{ratio(f['total_ms'], q['total_ms'])} | "
              f"{ratio(f['downtime_ms'], q['downtime_ms'])} | "
              f"{f['n']}/{f['n'] + f['failed']}, {q['n']}/{q['n'] + q['failed']} |")
        for name, st in (("ferry", f), ("QEMU", q)):
            if st["failed"]:
                notes.append(f"- {labels[sc]}, {name}: {st['failed']} run(s) failed; first "
                             f"error: {st['errors'][0]}")
            if st["dest_not_running"]:
                notes.append(f"- {labels[sc]}, {name}: the destination was not running the "
                             f"guest after {st['dest_not_running']} successful run(s)")
    if notes:
        print()
        print("\n".join(notes))

    print()
    print("| stream throughput (median per scenario; bytes / total time) | ferry MiB/s (Gbit/s) | QEMU MiB/s (Gbit/s) "
          "| ferry last round MiB/s | QEMU last round MiB/s | ferry/QEMU | ferry/raw "
          "| ferry last round/raw |")
    print("|---|---|---|---|---|---|---|---|")
    raw_mib = raw.get("mib_s") if raw else None
    for sc in scenarios:
        f, q = table[sc]
        if (f["bytes"] or 0) < STREAM_MIN_BYTES and (q["bytes"] or 0) < STREAM_MIN_BYTES:
            continue  # an idle guest's few MiB say nothing about the stream
        print(f"| {labels[sc]} | {fmt(f['stream_mib_s'])} ({fmt(gbit(f['stream_mib_s']), '{:.2f}')}) "
              f"| {fmt(q['stream_mib_s'])} ({fmt(gbit(q['stream_mib_s']), '{:.2f}')}) "
              f"| {fmt(f['last_round_mib_s'])} | {fmt(q['last_round_mib_s'])} "
              f"| {ratio(f['stream_mib_s'], q['stream_mib_s'])} "
              f"| {ratio(f['stream_mib_s'], raw_mib)} "
              f"| {ratio(f['last_round_mib_s'], raw_mib)} |")
    if raw:
        print()
        print(f"Raw loopback socket ({raw.get('tool')}): {fmt(raw_mib)} MiB/s "
              f"({fmt(gbit(raw_mib), '{:.2f}')} Gbit/s)")


if __name__ == "__main__":
    main()
