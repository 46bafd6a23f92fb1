#!/usr/bin/env python3
"""Turns first_line.py samples into the markdown table boot.sh prints.

Usage: summarize.py NAME=SAMPLES.jsonl [NAME=SAMPLES.jsonl ...]
The first NAME is the subject (ferry); ratios are subject / each other NAME, on medians.
Failed samples (with "error") are counted and left out of the statistics.
"""

import json
import math
import sys

METRICS = [
    ("wall_ms", "exec → first serial line, wall (ms)", "{:.1f}"),
    ("cpu_ms", "exec → first serial line, CPU user+sys (ms)", "{:.1f}"),
    ("vmm_rss_kib", "RSS excluding guest RAM (MiB)", "{:.1f}"),
    ("rss_kib", "RSS total, VmRSS (MiB)", "{:.1f}"),
    ("guest_rss_kib", "guest RAM resident (MiB)", "{:.1f}"),
]


def percentile(values, p):
    """Nearest-rank percentile (p in 0..100) of a non-empty list."""
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


def median(values):
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def load(path):
    ok, failed = [], []
    with open(path) as f:
        for line in f:
            if line.strip():
                sample = json.loads(line)
                (failed if "error" in sample else ok).append(sample)
    return ok, failed


def scaled(key, value):
    return value / 1024 if key.endswith("_kib") else value


def main():
    runs = []
    for arg in sys.argv[1:]:
        name, _, path = arg.partition("=")
        if not path:
            sys.exit(__doc__)
        runs.append((name, *load(path)))
    if not runs:
        sys.exit(__doc__)

    header = ["metric"]
    for name, ok, _ in runs:
        header += [f"{name} median", f"{name} p90"]
    header += [f"{runs[0][0]}/{name}" for name, _, _ in runs[1:]]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for key, label, fmt in METRICS:
        row = [label]
        medians = []
        for _, ok, _ in runs:
            values = [scaled(key, s[key]) for s in ok]
            if values:
                med = median(values)
                row += [fmt.format(med), fmt.format(percentile(values, 90))]
            else:
                med = None
                row += ["n/a", "n/a"]
            medians.append(med)
        for other in medians[1:]:
            ok = medians[0] is not None and other
            row.append(f"{medians[0] / other:.2f}×" if ok else "n/a")
        print("| " + " | ".join(row) + " |")
    print()
    for name, ok, failed in runs:
        print(f"- {name}: {len(ok)} samples", end="")
        if failed:
            print(f", {len(failed)} failed (first: {failed[0]['error']})", end="")
        print()


if __name__ == "__main__":
    main()
