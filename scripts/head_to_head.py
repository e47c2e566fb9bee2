#!/usr/bin/env python3
"""Ours and PyTorch side by side, one instrument for both (not run by CI).

Runs every measurement in a fresh process: ours through
`target/release/examples/peak_memory --rss PATH` (build it first:
`cargo build --release --example peak_memory`), PyTorch through
`scripts/pytorch_bench.py --rss PATH` (needs torch). Each process takes a warm-up step on a
small batch, then measures the first full-size step's peak resident-memory growth and the best
of `--repeats` steps. Writes the JSON lines to `--json` and prints the table of BENCHMARKS.md:
each step's time, its ratio to the machine's limit (`6 N D C` FLOP at the peak our process
measured for that dtype: f32 FMAs, or bf16 dot products) and to both PyTorch forms, and its
peak resident growth.

    python3 scripts/head_to_head.py [--python /path/to/python-with-torch] [--json out.json]
    python3 scripts/head_to_head.py --table scripts/head_to_head.json     # the table again
"""

import argparse
import json
import os
import pathlib
import subprocess
import sys

LM = (2048, 512, 32768)
OTHER = [(256, 784, 10), (2048, 512, 4096), (2048, 512, 131072), (512, 512, 32768), (8192, 512, 32768)]
OURS = "target/release/examples/peak_memory"


def runs():
    """(side, backend, dtype, shape, path) of every measurement."""
    for backend in ["flex", "ndarray"]:
        for path in ["fused", "autodiff", "burn_ce", "floor"]:
            yield "ours", backend, "f32", LM, path
    for path in ["pytorch", "linear_ce", "floor"]:
        yield "pytorch", None, "f32", LM, path
    for path in ["fused", "burn_ce", "floor"]:
        yield "ours", "flex", "bf16", LM, path
    for path in ["pytorch", "linear_ce", "floor"]:
        yield "pytorch", None, "bf16", LM, path
    for shape in OTHER:
        for backend in ["flex", "ndarray"]:
            yield "ours", backend, "f32", shape, "fused"
        for path in ["pytorch", "linear_ce"]:
            yield "pytorch", None, "f32", shape, path


def measure(side, backend, dtype, shape, path, python, repeats):
    n, d, c = shape
    # Millisecond steps get more repeats than the LM-sized ones.
    repeats = repeats if n * c >= 1 << 20 else max(repeats, 30)
    shape_arg = f"{n},{d},{c}"
    if side == "ours":
        command = [OURS, "--rss", path, "--backend", backend, "--dtype", dtype, "--shape", shape_arg,
                   "--repeats", str(repeats)]
    else:
        command = [python, "scripts/pytorch_bench.py", "--rss", path, "--dtypes", dtype, "--shape",
                   shape_arg, "--repeats", str(repeats)]
    out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def table(results):
    # The machine's peak is the best any of our processes measured for the dtype (a process
    # that shared the cores with something else measures less).
    peaks = {}
    for r in results:
        if r["side"] == "ours":
            peaks[r["dtype"]] = max(peaks.get(r["dtype"], 0.0), r["peak_gflops"])
    lines = ["| N, D, C | dtype | step | backend | time (ms) | x limit | x PyTorch eager | x PyTorch linear_ce | peak RSS growth (MiB) |",
             "|---|---|---|---|---:|---:|---:|---:|---:|"]
    key = lambda r: (r["n"], r["d"], r["c"], r["dtype"])
    for r in results:
        same = [o for o in results if key(o) == key(r) and o["side"] == "pytorch"]
        ref = {o["path"]: o["best_s"] for o in same}
        limit = 6 * r["n"] * r["d"] * r["c"] / (peaks[r["dtype"]] * 1e9)
        ratio = lambda path: f"{r['best_s'] / ref[path]:.2f}" if path in ref else "-"
        name = {"pytorch": "PyTorch eager", "linear_ce": "PyTorch linear_ce"}.get(r["path"], r["path"])
        backend = r["backend"] if r["side"] == "ours" else "torch"
        lines.append(f"| {r['n']}, {r['d']}, {r['c']} | {r['dtype']} | {name} | {backend} | "
                     f"{r['best_s'] * 1e3:.1f} | {r['best_s'] / limit:.2f} | {ratio('pytorch')} | "
                     f"{ratio('linear_ce')} | {r['rss_peak_mib']:.1f} |")
    lines.append("")
    lines.append("limits: " + ", ".join(f"{dtype} peak {gflops:.1f} GFLOP/s" for dtype, gflops in peaks.items()))
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--python", default=sys.executable, help="a Python with torch")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--json", help="write the measurements here")
    parser.add_argument("--table", help="only print the table of measurements written earlier")
    args = parser.parse_args()
    # The binary and the script are named from the repository root.
    os.chdir(pathlib.Path(__file__).resolve().parent.parent)
    if args.table:
        with open(args.table) as f:
            print(table(json.load(f)))
        return
    results = []
    for run in runs():
        result = measure(*run, args.python, args.repeats)
        print(json.dumps(result), file=sys.stderr, flush=True)
        results.append(result)
        # Written after every measurement: a failed one keeps those before it.
        if args.json:
            with open(args.json, "w") as f:
                json.dump(results, f, indent=1)
    print(table(results))


if __name__ == "__main__":
    main()
