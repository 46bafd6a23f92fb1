#!/usr/bin/env python3
"""Summarise net_cpu.sh runs: medians per (direction, case) and the macvtap/bridge ratio.

Input: the TSV that net_cpu.sh writes (one row per run). CPU-seconds per Gbit use the
"kernel" CPU: our processes' system time (which, without IRQ time accounting, includes the
softirq work done in their context) plus ksoftirqd time. User time of the generators is the
same program in both cases and is left out, as is the unrelated load of the shared machine.
"""
import csv
import os
import statistics
import sys


def metrics(r):
    secs = float(r["secs"])
    gbit = int(r["bytes"]) * 8 / 1e9
    user = float(r["gen_u"]) + float(r["peer_u"])
    kern = float(r["gen_s"]) + float(r["peer_s"]) + float(r["ksoft_s"])
    ncpu = os.cpu_count() or 1
    return {
        "gbps": gbit / secs,
        "kern_pct": 100 * kern / (secs * ncpu),
        "path_pct": 100 * (kern + user) / (secs * ncpu),
        "busy_pct": 100 * float(r["busy_s"]) / float(r["all_s"]) if float(r["all_s"]) else 0.0,
        "kern_per_gbit": kern / gbit if gbit else float("inf"),
        "path_per_gbit": (kern + user) / gbit if gbit else float("inf"),
        "offered_gbps": int(r["offered"]) * 8 / 1e9 / secs,
    }


def main():
    rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
    groups = {}
    for r in rows:
        groups.setdefault((r["dir"], r["case"]), []).append(metrics(r))
    med = {k: {m: statistics.median(x[m] for x in v) for m in v[0]} for k, v in groups.items()}
    print(f"Medians of {max(int(r['rep']) for r in rows)} runs per row, "
          f"{rows[0]['secs']} s each, 1514-byte frames, {os.cpu_count()} CPUs.\n")
    print("| dir | case | Gbit/s | offered Gbit/s | kernel CPU % (all cores) | whole machine busy % "
          "| kernel CPU-s per Gbit | incl. generator user CPU-s per Gbit | ratio macvtap/this case "
          "| above raw floor, CPU-s per Gbit |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for d in ("tx", "rx"):
        for c in ("macvtap", "bridge", "bridge-nonf", "raw"):
            m = med.get((d, c))
            if not m:
                continue
            ratio = ""
            if c not in ("macvtap", "raw") and (d, "macvtap") in med:
                ratio = f"{med[(d, 'macvtap')]['kern_per_gbit'] / m['kern_per_gbit']:.2f}"
            floor = ""
            if c != "raw" and (d, "raw") in med:
                floor = f"{m['kern_per_gbit'] - med[(d, 'raw')]['kern_per_gbit']:.3f}"
            print(f"| {d} | {c} | {m['gbps']:.2f} | {m['offered_gbps']:.2f} | {m['kern_pct']:.1f} "
                  f"| {m['busy_pct']:.0f} | {m['kern_per_gbit']:.3f} | {m['path_per_gbit']:.3f} | {ratio} | {floor} |")
    print("\nPer-run kernel CPU-s per Gbit:")
    for (d, c), v in sorted(groups.items()):
        print(f"  {d} {c}: " + " ".join(f"{x['kern_per_gbit']:.3f}" for x in v))


if __name__ == "__main__":
    main()
