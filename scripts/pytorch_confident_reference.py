"""Writes crates/linear-softmax/tests/fixtures/confident/*.json: confident rows (the target's
probability near 1, losses from 1e-3 down to 1e-7) with large logits, and PyTorch's per-row
losses of them in float64 (the reference) and in float32 (what PyTorch's own f32 reaches).

Run by hand (never by the tests or CI), in a virtual environment with torch from pip:

    python3 -m venv /tmp/torch-env && /tmp/torch-env/bin/pip install torch
    /tmp/torch-env/bin/python scripts/pytorch_confident_reference.py

A confident row's loss is tiny next to its logits: formed as `lse_i - S_iy` after the row
maximum has been added back into `lse_i`, it keeps only the f32 resolution of the maximum
(2^-24 |max|, 2.4e-6 at a maximum of 40). The fixture holds the logits themselves (the head's
`x`, with `W` the identity and no bias, so `S = x` exactly), f32-representable.
"""

import json
import math
import pathlib

import torch
import torch.nn.functional as F

OUT = (pathlib.Path(__file__).resolve().parent.parent / "crates" / "linear-softmax" / "tests"
       / "fixtures" / "confident")
# What the tests allow an f32 row loss l, as F32_ROW * (1 + l): a few roundings of an f32 sum
# near 1 (2^-24 each), and of S_iy - m_i (relative to itself) where the target is not the maximum.
F32_ROW = 4 * 2.0 ** -24


def rows(c, seed):
    """Logit rows [N, C] and labels [N]: confident rows with maxima from -40 to 60, one or two
    close competitors and a far tail, the row of the issue that asked for this, and two rows
    where the target is not the maximum."""
    g = torch.Generator().manual_seed(seed)
    out, labels = [], []
    for i in range(24):
        peak = -40.0 + 100.0 * torch.rand(1, generator=g, dtype=torch.float64).item()
        margin = 7.0 + 9.0 * torch.rand(1, generator=g, dtype=torch.float64).item()
        row = peak - 30.0 - 40.0 * torch.rand(c, generator=g, dtype=torch.float64)
        label = int(torch.randint(0, c, (1,), generator=g))
        row[label] = peak
        rival = (label + 1 + i % (c - 1)) % c
        row[rival] = peak - margin
        if i % 3 == 0:
            row[(rival + 1) % c if (rival + 1) % c != label else (rival + 2) % c] = peak - margin - 2.0
        out.append(row)
        labels.append(label)
    issue = torch.full((c,), -60.0, dtype=torch.float64)
    issue[0], issue[1] = 8.73, -1.00
    out.append(issue)
    labels.append(0)
    for label in (1, c - 1):
        row = 4.0 * torch.rand(c, generator=g, dtype=torch.float64) - 2.0
        row[(label + 1) % c] = 30.0
        out.append(row)
        labels.append(label)
    logits = torch.stack(out).float().double()
    return logits, torch.tensor(labels)


def case(name, c, seed):
    logits, labels = rows(c, seed)
    exact = F.cross_entropy(logits, labels, reduction="none")
    in_f32 = F.cross_entropy(logits.float(), labels, reduction="none").double()
    # The bound the tests hold us to, checked on PyTorch's own f32 (its log_softmax forms the
    # loss from the shifted logits).
    excess = ((in_f32 - exact).abs() - F32_ROW * (1 + exact)).max().item()
    assert excess <= 0, (name, excess, (in_f32 - exact).abs().tolist(), exact.tolist())
    n = logits.shape[0]
    return {
        "name": name,
        "torch_version": torch.__version__,
        "shape": [n, c],
        "logits": logits.reshape(-1).tolist(),
        "labels": labels.tolist(),
        "loss": exact.tolist(),
        "loss_f32": in_f32.tolist(),
    }


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    # C = 6: the few-classes pass; C = 40: the raw kernel's chunked GEMMs.
    for seed, (name, c) in enumerate([("few_classes", 6), ("wide", 40)]):
        fixture = case(name, c, seed)
        (OUT / f"{name}.json").write_text(json.dumps(fixture) + "\n")
        errors = [abs(a - b) / b for a, b in zip(fixture["loss_f32"], fixture["loss"])]
        smallest = min(fixture["loss"])
        print(f"{name}: {len(errors)} rows, smallest loss {smallest:.3e}, PyTorch f32's worst "
              f"relative error {max(errors):.2e}, absolute "
              f"{max(abs(a - b) for a, b in zip(fixture['loss_f32'], fixture['loss'])):.2e}")
    print(f"wrote 2 cases with torch {torch.__version__} to {OUT}")


if __name__ == "__main__":
    main()
