#!/usr/bin/env python3
"""Plots BENCHMARKS.md's sweeps: step time and peak extra memory against C and N.

Inputs: the CSV of `cargo run --release --example peak_memory -- --sweep --csv rust.csv` and
the JSON of `scripts/pytorch_bench.py --json torch.json`. Output: a PNG.

    /work/venv/torch/bin/python scripts/plot_benchmarks.py rust.csv torch.json benchmarks.png
"""

import csv
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

PATHS = [
    ("autodiff", "ours, autodiff", "tab:red", "o"),
    ("burn_ce", "Burn Linear + CE", "tab:orange", "s"),
    ("fused", "fused (default R)", "tab:blue", "D"),
    ("fused_r256", "fused (R = 256)", "tab:cyan", "d"),
    ("floor", "three-GEMM floor", "black", "x"),
    ("pytorch", "PyTorch 2 threads", "tab:green", "^"),
]


def main(rust_csv, torch_json, out_png, backend="NdArray"):
    rows = [r for r in csv.DictReader(open(rust_csv)) if r["backend"] == backend]
    torch_rows = [r for r in json.load(open(torch_json)) if r["path"] == "pytorch"]
    points = {}
    for r in rows:
        points[(r["path"], int(r["n"]), int(r["c"]))] = (float(r["best_s"]), float(r["peak_mib"]))
    for r in torch_rows:
        points[("pytorch", r["n"], r["c"])] = (r["best_s"], r["peak_mib"])

    fig, axes = plt.subplots(2, 2, figsize=(11, 8))
    sweeps = [
        ("C (N = 2048, D = 512)", [(2048, c) for c in (4096, 32768, 131072)], lambda nc: nc[1]),
        ("N (C = 32768, D = 512)", [(n, 32768) for n in (512, 2048, 8192)], lambda nc: nc[0]),
    ]
    for col, (label, shape_list, xof) in enumerate(sweeps):
        for row, (what, unit) in enumerate([("step time", "s"), ("peak extra memory", "MiB")]):
            ax = axes[row][col]
            for key, name, color, marker in PATHS:
                xs, ys = [], []
                for n, c in shape_list:
                    if (key, n, c) in points:
                        xs.append(xof((n, c)))
                        ys.append(points[(key, n, c)][row])
                if xs:
                    ax.plot(xs, ys, marker=marker, color=color, label=name)
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel(label)
            ax.set_ylabel(f"{what} ({unit})")
            ax.grid(True, which="both", alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.suptitle(f"One training step of the head, f32, {backend}, 2 cores (PyTorch: CPU eager)")
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    print(f"wrote {out_png}")


if __name__ == "__main__":
    main(*sys.argv[1:4], *(sys.argv[4:5]))
