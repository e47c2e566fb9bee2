"""Writes crates/linear-softmax/tests/fixtures/bf16/*.json: bf16 inputs, options, and PyTorch's
loss, dW, db and dX twice: computed in float64 on the same (bf16-representable) values, and
computed by PyTorch in bfloat16 (bf16 tensors throughout, as a bf16 model runs).

Run by hand (never by the tests or CI), in a virtual environment with torch from pip:

    python3 -m venv /tmp/torch-env && /tmp/torch-env/bin/pip install torch
    /tmp/torch-env/bin/python scripts/pytorch_bf16_reference.py

The file format is that of scripts/pytorch_reference.py (its float64 results under `loss`,
`d_weight`, `d_bias`, `d_input`), with the bf16 results under `bf16`.
"""

import json
import pathlib

import torch
import torch.nn.functional as F

OUT = (pathlib.Path(__file__).resolve().parent.parent / "crates" / "linear-softmax" / "tests"
       / "fixtures" / "bf16")
IGNORE = -100


def bf16_exact(t):
    # Values representable in bf16: the f64 and bf16 computations start from the same numbers.
    return t.bfloat16().double()


def short(value):
    # Nine significant digits: the bf16 inputs round back to themselves, and the results keep
    # far more precision than any tolerance of the tests (>= 1e-4).
    return float(f"{value:.9g}")


def step(x, w, b, labels, class_weights, reduction, ignore_index, smoothing):
    """The loss and the gradients of x, w, b (leaves of the caller's dtype)."""
    x, w, b = (t.detach().clone().requires_grad_() for t in (x, w, b))
    logits = x @ w + b
    loss = F.cross_entropy(logits, labels, weight=class_weights, reduction=reduction,
                           ignore_index=ignore_index, label_smoothing=smoothing)
    loss.sum().backward()
    flat = lambda t: [short(v) for v in t.detach().double().reshape(-1).tolist()]
    return {"loss": flat(loss.reshape(-1)), "d_weight": flat(w.grad), "d_bias": flat(b.grad),
            "d_input": flat(x.grad)}


def make_case(name, n, d, c, seed, reduction="mean", ignore_index=None, ignored_rows=(),
              weights=False, smoothing=0.0):
    g = torch.Generator().manual_seed(seed)
    x = bf16_exact(torch.rand(n, d, generator=g, dtype=torch.float64) * 4 - 2)
    w = bf16_exact((torch.rand(d, c, generator=g, dtype=torch.float64) * 2 - 1) / d ** 0.5)
    b = bf16_exact(torch.rand(c, generator=g, dtype=torch.float64) - 0.5)
    labels = torch.randint(0, c, (n,), generator=g)
    class_weights = bf16_exact(0.25 + torch.rand(c, generator=g, dtype=torch.float64) * 2) if weights else None
    for row in ignored_rows:
        labels[row] = ignore_index
    torch_ignore = ignore_index if ignore_index is not None else IGNORE
    exact = step(x, w, b, labels, class_weights, reduction, torch_ignore, smoothing)
    half = lambda t: t.bfloat16() if t is not None else None
    in_bf16 = step(half(x), half(w), half(b), labels, half(class_weights), reduction, torch_ignore,
                   smoothing)
    flat = lambda t: [short(v) for v in t.reshape(-1).tolist()]
    return {
        "name": name,
        "torch_version": torch.__version__,
        "shape": [n, d, c],
        "x": flat(x),
        "weight": flat(w),
        "bias": flat(b),
        "labels": labels.tolist(),
        "probabilities": None,
        "multi_hot": None,
        "options": {
            "reduction": reduction,
            "ignore_index": ignore_index,
            "pad_tokens": None,
            "weights": flat(class_weights) if class_weights is not None else None,
            "label_smoothing": smoothing,
            "z_loss": 0.0,
            "softcap": None,
            "l2": 0.0,
        },
        **exact,
        "bf16": in_bf16,
    }


CASES = [
    # Many classes (the raw kernel's bf16 GEMMs), several chunks.
    dict(name="plain", n=64, d=16, c=200),
    dict(name="weights_ignore_smoothing_sum", n=48, d=24, c=100, reduction="sum", ignore_index=-1,
         ignored_rows=(3, 17, 40), weights=True, smoothing=0.1),
    dict(name="none", n=40, d=20, c=50, reduction="none"),
    # Few classes (bf16 widened to f32 for the streaming pass).
    dict(name="few_classes", n=50, d=30, c=10),
    # Large enough that each GEMM is split over threads (by columns, and by ranges of k).
    dict(name="large", n=128, d=16, c=600),
]


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    for seed, spec in enumerate(CASES, start=1000):
        case = make_case(seed=seed, **spec)
        (OUT / f"{case['name']}.json").write_text(json.dumps(case) + "\n")
    print(f"wrote {len(CASES)} bf16 cases with torch {torch.__version__} to {OUT}")


if __name__ == "__main__":
    main()
