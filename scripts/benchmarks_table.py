#!/usr/bin/env python3
"""Markdown tables for docs/BENCHMARKS_HISTORY.md from the sweep CSVs (crates/linear-softmax/examples/peak_memory/ --sweep --csv,
one per backend) and the PyTorch JSON (scripts/pytorch_bench.py --json).

    python3 scripts/benchmarks_table.py ndarray.csv [flex.csv ...] torch.json
"""

import csv
import json
import sys


def main(*paths):
    *rust_csvs, torch_json = paths
    rows = [row for path in rust_csvs for row in csv.DictReader(open(path))]
    torch = {(r["n"], r["d"], r["c"]): r for r in json.load(open(torch_json)) if r["path"] == "pytorch"}
    by = {}
    for r in rows:
        key = (r["backend"], int(r["n"]), int(r["d"]), int(r["c"]))
        by.setdefault(key, {})[r["path"]] = (float(r["best_s"]), float(r["peak_mib"]))
    print(
        "| backend | N | D | C | path | step (ms) | peak extra (MiB) |\n"
        "|---|---:|---:|---:|---|---:|---:|"
    )
    for (backend, n, d, c), paths in by.items():
        t = torch.get((n, d, c))
        items = list(paths.items())
        if t:
            items.append(("pytorch", (t["best_s"], t["peak_mib"])))
        for path, (s, m) in items:
            print(f"| {backend} | {n} | {d} | {c} | {path} | {s * 1e3:.2f} | {m:.1f} |")
    print()
    print(
        "| backend | N | D | C | fused (ms) | fused / our autodiff | fused / Burn CE | fused / floor "
        "| fused / PyTorch | manual / autodiff | fused peak (MiB) | fused R=256 peak (MiB) |\n"
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    )
    for (backend, n, d, c), p in by.items():
        f = p["fused"][0]
        t = torch.get((n, d, c))
        ratio = lambda k: f"{f / p[k][0]:.2f}" if k in p else "-"  # noqa: E731
        pt = f"{f / t['best_s']:.2f}" if t else "-"
        manual = f"{p['manual'][0] / p['autodiff'][0]:.2f}" if "manual" in p else "-"
        r256 = f"{p['fused_r256'][1]:.1f}" if "fused_r256" in p else "-"
        print(
            f"| {backend} | {n} | {d} | {c} | {f * 1e3:.2f} | {ratio('autodiff')} | {ratio('burn_ce')} "
            f"| {ratio('floor')} | {pt} | {manual} | {p['fused'][1]:.1f} | {r256} |"
        )


if __name__ == "__main__":
    main(*sys.argv[1:])
