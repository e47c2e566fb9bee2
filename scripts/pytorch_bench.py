#!/usr/bin/env python3
"""PyTorch CPU eager baseline for BENCHMARKS.md (not run by CI).

The same workloads and step as `crates/linear-softmax/benches/head.rs` and `crates/linear-softmax/examples/peak_memory/`: a Linear layer
(weight [D, C] used as x @ W + b) and `F.cross_entropy` (mean), x, W and b all requiring grad,
one step = forward + backward + reading the three gradients. Also the three-GEMM floor
(`S = X W`, `X^T S`, `S W^T`). Threads: `torch.set_num_threads(2)` (this machine's cores).

Peak extra memory: PyTorch's CPU allocator goes straight to the system allocator, so the step's
peak above its start is measured with `torch.profiler` (profile_memory=True): the largest
running total of the CPU allocations and frees recorded during the step, gradients included
(as the counting allocator of crates/linear-softmax/examples/peak_memory/ does).

    python3 scripts/pytorch_bench.py [--repeats 3] [--json out.json] [--dtypes f32,bf16,autocast]
    python3 scripts/pytorch_bench.py --rss linear_ce --shape 2048,512,32768 --dtypes bf16

Paths: `pytorch` (eager: `F.cross_entropy(x @ W + b, y)`), `linear_ce` (PyTorch's own chunked
fused head, `F.linear_cross_entropy(x, W^T, y, linear_bias=b,
options=torch.nn.LinearCrossEntropyOptions())`, the weight in PyTorch's `[C, D]` layout made
contiguous beforehand) and `floor`.

`--rss PATH`: that path alone, on one shape and dtype, measured as
`crates/linear-softmax/examples/peak_memory --rss` measures ours (one instrument for both
sides): in this fresh process, after a warm-up step on a small batch, the first step's peak
resident-memory growth (`VmHWM` after the step minus `VmRSS` before it, the high-water mark
reset by writing 5 to /proc/self/clear_refs), then the best of `--repeats` steps; one JSON
line, for `scripts/head_to_head.py`.

`--dtypes`: `f32` (the default), `bf16` (x, W and b as bfloat16 tensors: a bf16 model) and
`autocast` (f32 tensors under `torch.autocast("cpu", dtype=torch.bfloat16)`: the matmuls in bf16,
the loss in f32, f32 gradients), each in the same run.
"""

import contextlib

import argparse
import json
import time

import torch
import torch.nn.functional as F

WORKLOADS = [
    ("classifier", 256, 784, 10),
    ("lm_head", 2048, 512, 32768),
    ("sweep_c", 2048, 512, 4096),
    ("sweep_c", 2048, 512, 131072),
    ("sweep_n", 512, 512, 32768),
    ("sweep_n", 8192, 512, 32768),
]
MIB = 1024.0 * 1024.0


def problem(n, d, c):
    g = torch.Generator().manual_seed(7)
    x = torch.rand(n, d, generator=g) * 2 - 1
    scale = 1.0 / d**0.5
    w = (torch.rand(d, c, generator=g) * 2 - 1) * scale
    b = (torch.rand(c, generator=g) * 2 - 1) * scale
    labels = torch.tensor([(i * 7919) % c for i in range(n)], dtype=torch.long)
    return x, w, b, labels


def ce_step(x, w, b, labels, autocast=False):
    x = x.detach().requires_grad_()
    w = w.detach().requires_grad_()
    b = b.detach().requires_grad_()
    context = torch.autocast("cpu", dtype=torch.bfloat16) if autocast else contextlib.nullcontext()
    with context:
        loss = F.cross_entropy(x @ w + b, labels)
    loss.backward()
    return float(loss.detach()) + float(w.grad[0, 0]) + float(x.grad[0, 0]) + float(b.grad[0])


def linear_ce_step(x, w_t, b, labels):
    """PyTorch's chunked fused head; `w_t` is the weight as `[C, D]` (PyTorch's layout)."""
    x = x.detach().requires_grad_()
    w_t = w_t.detach().requires_grad_()
    b = b.detach().requires_grad_()
    loss = F.linear_cross_entropy(
        x, w_t, labels, linear_bias=b, options=torch.nn.LinearCrossEntropyOptions()
    )
    loss.backward()
    return float(loss.detach()) + float(w_t.grad[0, 0]) + float(x.grad[0, 0]) + float(b.grad[0])


def floor_step(x, w, x_t, w_t, autocast=False):
    context = torch.autocast("cpu", dtype=torch.bfloat16) if autocast else contextlib.nullcontext()
    with context:
        s = x @ w
        dw = x_t @ s
        dx = s @ w_t
    return float(dw[0, 0]) + float(dx[0, 0])


def peak_extra(fn):
    """Largest running total of CPU bytes allocated during `fn()`, per torch.profiler."""
    with torch.profiler.profile(
        activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True
    ) as prof:
        fn()
    # Memory events: each `[memory]` entry carries the signed bytes of one alloc/free.
    running, peak = 0, 0
    records = sorted(
        (
            (e.start_ns(), e.nbytes())
            for e in prof.profiler.kineto_results.events()
            if e.name() == "[memory]"
        ),
        key=lambda t: t[0],
    )
    for _, nbytes in records:
        running += nbytes
        peak = max(peak, running)
    return peak


def status_bytes(field):
    """A kB field of /proc/self/status, in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def step_for(path, x, w, b, labels, autocast=False):
    x_t, w_t = x.t().contiguous(), w.t().contiguous()
    return {
        "pytorch": lambda: ce_step(x, w, b, labels, autocast),
        "linear_ce": lambda: linear_ce_step(x, w_t, b, labels),
        "floor": lambda: floor_step(x, w, x_t, w_t, autocast),
    }[path]


def measure_rss(path, shape, dtype, repeats):
    """One path in this fresh process: see `--rss` above. Prints one JSON line."""
    def made(n, d, c):
        x, w, b, labels = problem(n, d, c)
        if dtype == "bf16":
            x, w, b = x.bfloat16(), w.bfloat16(), b.bfloat16()
        return step_for(path, x, w, b, labels)

    made(64, 64, 256)()
    fn = made(*shape)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = status_bytes("VmRSS:")
    start = time.perf_counter()
    fn()
    first = time.perf_counter() - start
    after = status_bytes("VmHWM:")
    best = min([first] + [timed(fn) for _ in range(repeats)])
    n, d, c = shape
    print(json.dumps(dict(side="pytorch", backend=f"torch {torch.__version__}", dtype=dtype, n=n, d=d,
                          c=c, path=path, best_s=best, rss_peak_mib=(after - before) / MIB)))


def timed(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def best_time(fn, repeats):
    fn()  # warm-up
    times = sorted(timed(fn) for _ in range(repeats))
    return times[0], times[len(times) // 2]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", help="write the results here too")
    parser.add_argument("--only", help="run only workloads whose name contains this")
    parser.add_argument("--dtypes", default="f32", help="comma-separated: f32, bf16, autocast")
    parser.add_argument("--rss", choices=["pytorch", "linear_ce", "floor"],
                        help="measure this path alone by resident memory (see above)")
    parser.add_argument("--shape", default="2048,512,32768", help="N,D,C for --rss")
    args = parser.parse_args()
    dtypes = args.dtypes.split(",")
    torch.set_num_threads(2)
    if args.rss:
        if dtypes[0] not in ("f32", "bf16"):
            parser.error("--rss measures f32 or bf16 (--dtypes f32 or bf16)")
        shape = tuple(int(v) for v in args.shape.split(","))
        measure_rss(args.rss, shape, dtypes[0], args.repeats)
        return
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    print(f"{'workload':<12} {'N':>6} {'D':>5} {'C':>7} {'dtype':<8} {'path':<8} {'best (s)':>9} {'median':>9} {'peak MiB':>9}")
    results = []
    for name, n, d, c in WORKLOADS:
        if args.only and args.only not in name:
            continue
        for dtype in dtypes:
            x, w, b, labels = problem(n, d, c)
            if dtype == "bf16":
                x, w, b = x.bfloat16(), w.bfloat16(), b.bfloat16()
            autocast = dtype == "autocast"
            paths = ["pytorch", "floor"] + ([] if autocast else ["linear_ce"])
            for path in paths:
                fn = step_for(path, x, w, b, labels, autocast)
                best, median = best_time(fn, args.repeats)
                peak = peak_extra(fn)
                print(f"{name:<12} {n:>6} {d:>5} {c:>7} {dtype:<8} {path:<8} {best:>9.4f} {median:>9.4f} {peak / MIB:>9.1f}")
                result = dict(workload=name, n=n, d=d, c=c, path=path, best_s=best, median_s=median,
                              peak_mib=peak / MIB)
                if dtype != "f32":
                    result["dtype"] = dtype
                results.append(result)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
