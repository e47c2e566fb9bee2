"""Writes crates/linear-softmax/tests/fixtures/*.json: inputs, options and PyTorch's loss, dW, db and dX in float64.

Run by hand (never by the tests or CI), in a virtual environment with torch from pip:

    python3 -m venv /tmp/torch-env && /tmp/torch-env/bin/pip install torch
    /tmp/torch-env/bin/python scripts/pytorch_reference.py

Every case goes through torch.nn.functional.cross_entropy with the PyTorch arguments that
match LossOptions; the options PyTorch lacks are written as torch expressions of their
formula: z-loss `beta * logsumexp(S)^2` averaged with the main loss's denominator, softcap
`c * tanh(S / c)` applied to the logits, temperature as F.cross_entropy of the (capped) logits
divided by tau, the entropy bonus as -alpha times -(softmax * log_softmax).sum() of each counted row,
the next-token shift as F.cross_entropy(logits[:, :-s], labels[:, s:]), L2 `lambda * sum(W^2)`, row weights as the per-row
losses times the weights over the weighted count. Burn's pad_tokens is
PyTorch's ignore_index with that class.
"""

import json
import pathlib

import torch
import torch.nn.functional as F

OUT = pathlib.Path(__file__).resolve().parent.parent / "crates" / "linear-softmax" / "tests" / "fixtures"
IGNORE = -100


def f32_exact(t):
    # Values representable in f32, so the f32 tests start from the same numbers.
    return t.float().double()


def make_case(name, n, d, c, seed, bias=True, reduction="mean", ignore_index=None,
              ignored_rows=(), pad_tokens=None, weights=False, smoothing=0.0, targets="classes",
              z_loss=0.0, softcap=None, l2=0.0, scale=1.0, row_weights=False, temperature=1.0,
              entropy_bonus=0.0):
    g = torch.Generator().manual_seed(seed)
    x = f32_exact(torch.rand(n, d, generator=g, dtype=torch.float64) * 4 - 2).requires_grad_()
    w = f32_exact((torch.rand(d, c, generator=g, dtype=torch.float64) * 2 - 1) * scale).requires_grad_()
    b = f32_exact(torch.rand(c, generator=g, dtype=torch.float64) - 0.5).requires_grad_() if bias else None
    labels = torch.randint(0, c, (n,), generator=g)
    class_weights = f32_exact(0.25 + torch.rand(c, generator=g, dtype=torch.float64) * 2) if weights else None
    probabilities = None
    if targets == "probabilities":
        p = torch.rand(n, c, generator=g, dtype=torch.float64)
        probabilities = p / p.sum(1, keepdim=True)
    elif targets == "multi_hot":
        hot = torch.rand(n, c, generator=g) < 0.3
        hot[torch.arange(n), labels] = True
        probabilities = hot.double() / hot.double().sum(1, keepdim=True)
    for row in ignored_rows:
        labels[row] = ignore_index
    # Per-row loss weights in [0, 2), two of them 0 (drawn last: the other values stay those
    # of the same case without them).
    rho = None
    if row_weights:
        rho = f32_exact(torch.rand(n, generator=g, dtype=torch.float64) * 2)
        rho[torch.tensor([0, n - 2])] = 0.0

    logits = x @ w + (b if b is not None else 0.0)
    if softcap is not None:
        logits = softcap * torch.tanh(logits / softcap)
    # The temperature divides the capped logits: F.cross_entropy(S' / tau, ..).
    logits = logits / temperature
    # PyTorch's ignore_index; Burn's pad_tokens (one class) maps onto it.
    torch_ignore = ignore_index if ignore_index is not None else (pad_tokens[0] if pad_tokens else -100)
    if probabilities is not None:
        rows = F.cross_entropy(logits, probabilities, weight=class_weights, reduction="none",
                               label_smoothing=smoothing)
        valid = torch.ones(n, dtype=torch.float64)
        denominator = (rho if rho is not None else valid).sum()
    else:
        rows = F.cross_entropy(logits, labels, weight=class_weights, reduction="none",
                               ignore_index=torch_ignore, label_smoothing=smoothing)
        valid = (labels != torch_ignore).double()
        safe = torch.where(labels == torch_ignore, 0, labels)
        label_weights = class_weights[safe] if class_weights is not None else torch.ones(n, dtype=torch.float64)
        denominator = (label_weights * valid * (rho if rho is not None else 1.0)).sum()
    # The reductions as F.cross_entropy computes them (checked below against its own mean).
    if z_loss:
        rows = rows + z_loss * torch.logsumexp(logits, 1) ** 2 * valid
    if entropy_bonus:
        entropy = -(F.softmax(logits, 1) * F.log_softmax(logits, 1)).sum(1)
        rows = rows - entropy_bonus * entropy * valid
    # Row weights scale each row's whole loss; the mean divides by the weighted count.
    if rho is not None:
        rows = rows * rho
    if reduction == "mean":
        loss = rows.sum() / denominator
    elif reduction == "sum":
        loss = rows.sum()
    else:
        loss = rows
    if not z_loss and not entropy_bonus and rho is None and reduction != "none":
        kwargs = dict(weight=class_weights, reduction=reduction, label_smoothing=smoothing)
        if probabilities is None:
            kwargs["ignore_index"] = torch_ignore
        direct = F.cross_entropy(logits, probabilities if probabilities is not None else labels, **kwargs)
        assert torch.allclose(direct, loss, rtol=1e-13, atol=0), (name, direct, loss)
    if l2:
        loss = loss + l2 * (w ** 2).sum()
    loss.sum().backward()

    flat = lambda t: t.detach().reshape(-1).tolist()
    # Written only where given: the files of the cases without them stay as they were.
    extra = {"row_weights": flat(rho)} if rho is not None else {}
    options_extra = {"temperature": temperature} if temperature != 1.0 else {}
    if entropy_bonus:
        options_extra["entropy_bonus"] = entropy_bonus
    return extra | {
        "name": name,
        "torch_version": torch.__version__,
        "shape": [n, d, c],
        "x": flat(x),
        "weight": flat(w),
        "bias": flat(b) if b is not None else None,
        "labels": labels.tolist() if probabilities is None else None,
        "probabilities": flat(probabilities) if targets == "probabilities" else None,
        "multi_hot": [bool(v) for v in flat(probabilities > 0)] if targets == "multi_hot" else None,
        "options": {
            "reduction": reduction,
            "ignore_index": ignore_index,
            "pad_tokens": pad_tokens,
            "weights": flat(class_weights) if class_weights is not None else None,
            "label_smoothing": smoothing,
            "z_loss": z_loss,
            "softcap": softcap,
            "l2": l2,
        } | options_extra,
        "loss": flat(loss.reshape(-1)),
        "d_weight": flat(w.grad),
        "d_bias": flat(b.grad) if b is not None else None,
        "d_input": flat(x.grad),
    }


def make_sequence_case(name, batch, time, d, c, seed, lengths, reduction="mean", weights=False,
                       smoothing=0.0, shift=0):
    """An LM head on a padded batch in PyTorch's own sequence form: logits [B, T, C] and
    F.cross_entropy(logits.transpose(1, 2), labels [B, T]) (its K-dimensional path), positions
    past each sequence's length labelled -100. Stored flat, row b * T + t, with "sequence".

    With a next-token shift s: the logits of positions 0..T-s against the labels of positions
    s..T, as a causal LM's loss is written in PyTorch (logits[:, :-s], labels[:, s:]); the
    per-row losses of reduction none are stored in the [B, T] layout, the last s positions 0."""
    g = torch.Generator().manual_seed(seed)
    x = f32_exact(torch.rand(batch, time, d, generator=g, dtype=torch.float64) * 4 - 2).requires_grad_()
    w = f32_exact(torch.rand(d, c, generator=g, dtype=torch.float64) * 2 - 1).requires_grad_()
    b = f32_exact(torch.rand(c, generator=g, dtype=torch.float64) - 0.5).requires_grad_()
    labels = torch.randint(0, c, (batch, time), generator=g)
    for row, length in enumerate(lengths):
        labels[row, length:] = IGNORE
    class_weights = f32_exact(0.25 + torch.rand(c, generator=g, dtype=torch.float64) * 2) if weights else None
    logits = x @ w + b
    logits, targets = (logits[:, :time - shift], labels[:, shift:]) if shift else (logits, labels)
    loss = F.cross_entropy(logits.transpose(1, 2), targets, weight=class_weights, reduction=reduction,
                           ignore_index=IGNORE, label_smoothing=smoothing)
    loss.sum().backward()
    if shift and reduction == "none":
        loss = torch.cat([loss.detach(), torch.zeros(batch, shift, dtype=torch.float64)], 1)
    flat = lambda t: t.detach().reshape(-1).tolist()
    return {
        "name": name,
        "torch_version": torch.__version__,
        "shape": [batch * time, d, c],
        "sequence": [batch, time],
        "x": flat(x),
        "weight": flat(w),
        "bias": flat(b),
        "labels": flat(labels),
        "probabilities": None,
        "multi_hot": None,
        "options": {
            "reduction": reduction,
            "ignore_index": IGNORE,
            "pad_tokens": None,
            "weights": flat(class_weights) if class_weights is not None else None,
            "label_smoothing": smoothing,
            "z_loss": 0.0,
            "softcap": None,
            "l2": 0.0,
        } | ({"shift": shift} if shift else {}),
        "loss": flat(loss.reshape(-1)),
        "d_weight": flat(w.grad),
        "d_bias": flat(b.grad),
        "d_input": flat(x.grad),
    }


SEQUENCE_CASES = [
    dict(name="sequence_padded", batch=3, time=5, d=6, c=11, lengths=(5, 2, 4)),
    dict(name="sequence_padded_none", batch=3, time=5, d=6, c=11, lengths=(5, 2, 4), reduction="none"),
    dict(name="sequence_padded_weights_smoothing", batch=2, time=7, d=4, c=9, lengths=(3, 7),
         weights=True, smoothing=0.1),
]

CASES = [
    dict(name="plain", n=7, d=31, c=10),
    dict(name="one_row_one_feature", n=1, d=1, c=2),
    dict(name="no_bias_large_c", n=47, d=31, c=123, bias=False),
    dict(name="sum", n=7, d=5, c=10, reduction="sum"),
    dict(name="none", n=7, d=5, c=10, reduction="none"),
    dict(name="ignore_index", n=9, d=5, c=6, ignore_index=IGNORE, ignored_rows=(1, 4)),
    dict(name="ignore_index_in_range", n=9, d=5, c=6, ignore_index=2, ignored_rows=(0, 3)),
    dict(name="pad_tokens", n=9, d=5, c=6, pad_tokens=[1], ignored_rows=()),
    dict(name="weights_mean", n=9, d=5, c=6, weights=True),
    dict(name="weights_sum", n=9, d=5, c=6, weights=True, reduction="sum"),
    dict(name="weights_none", n=9, d=5, c=6, weights=True, reduction="none"),
    dict(name="smoothing", n=9, d=5, c=6, smoothing=0.1),
    dict(name="smoothing_one", n=9, d=5, c=6, smoothing=1.0),
    dict(name="weights_ignore_smoothing", n=9, d=5, c=6, weights=True, ignore_index=IGNORE,
         ignored_rows=(2, 5), smoothing=0.2),
    dict(name="weights_ignore_smoothing_sum", n=9, d=5, c=6, weights=True, ignore_index=IGNORE,
         ignored_rows=(2, 5), smoothing=0.2, reduction="sum"),
    dict(name="none_ignore", n=9, d=5, c=6, ignore_index=IGNORE, ignored_rows=(0, 8), reduction="none"),
    dict(name="probabilities", n=9, d=5, c=6, targets="probabilities"),
    dict(name="probabilities_weights_smoothing", n=9, d=5, c=6, targets="probabilities", weights=True,
         smoothing=0.3),
    dict(name="probabilities_none", n=9, d=5, c=6, targets="probabilities", reduction="none"),
    dict(name="multi_label", n=9, d=5, c=6, targets="multi_hot"),
    dict(name="z_loss", n=9, d=5, c=6, z_loss=0.01),
    dict(name="softcap", n=9, d=5, c=6, softcap=1.5, scale=3.0),
    dict(name="softcap_z_loss_ignore", n=9, d=5, c=6, softcap=2.0, z_loss=0.05, ignore_index=IGNORE,
         ignored_rows=(3,)),
    dict(name="l2", n=7, d=5, c=10, l2=0.05),
    dict(name="large_logits_smoothing", n=7, d=5, c=10, scale=100.0, smoothing=0.1),
]


# Per-row (per-token) loss weights: F.cross_entropy(reduction="none") times the weights, the
# mean over sum_i rho_i v_i w_{y_i}. Seeded after the other cases, so adding them changed none.
ROW_WEIGHT_CASES = [
    dict(name="row_weights", n=9, d=5, c=6, row_weights=True),
    dict(name="row_weights_none", n=9, d=5, c=6, row_weights=True, reduction="none"),
    dict(name="row_weights_ignore_weights_smoothing_z_loss", n=9, d=5, c=6, row_weights=True,
         weights=True, ignore_index=IGNORE, ignored_rows=(2, 5), smoothing=0.2, z_loss=0.02),
    dict(name="row_weights_probabilities", n=9, d=5, c=6, row_weights=True,
         targets="probabilities", smoothing=0.1),
    dict(name="row_weights_large_c", n=23, d=7, c=40, row_weights=True, weights=True),
]


# Temperature: F.cross_entropy(S' / tau) of the (capped) logits. Seeded after the other cases.
TEMPERATURE_CASES = [
    dict(name="temperature", n=9, d=5, c=6, temperature=0.7, scale=2.0),
    dict(name="temperature_softcap_z_loss_ignore", n=9, d=5, c=6, temperature=2.5, softcap=1.5,
         z_loss=0.05, ignore_index=IGNORE, ignored_rows=(3,), scale=3.0),
    dict(name="temperature_probabilities_smoothing_none", n=9, d=5, c=6, temperature=1.7,
         targets="probabilities", smoothing=0.1, reduction="none"),
    dict(name="temperature_row_weights_weights", n=23, d=7, c=40, temperature=0.5,
         row_weights=True, weights=True),
]


# The entropy bonus: -alpha H_i per counted row. Seeded after the other cases.
ENTROPY_CASES = [
    dict(name="entropy_bonus", n=9, d=5, c=6, entropy_bonus=0.3, scale=2.0),
    dict(name="entropy_bonus_temperature_ignore_none", n=9, d=5, c=6, entropy_bonus=0.5,
         temperature=1.5, smoothing=0.1, ignore_index=IGNORE, ignored_rows=(2, 6), reduction="none"),
    dict(name="entropy_bonus_probabilities_row_weights_softcap", n=9, d=5, c=6, entropy_bonus=0.2,
         targets="probabilities", row_weights=True, softcap=2.0, scale=3.0),
    dict(name="entropy_bonus_large_c_weights_z_loss", n=23, d=7, c=40, entropy_bonus=0.4,
         weights=True, z_loss=0.01),
]


# Next-token shift: logits[:, :-s] against labels[:, s:]. Seeded after the other cases.
SHIFT_CASES = [
    dict(name="shift_padded", batch=3, time=6, d=5, c=11, lengths=(6, 3, 5), shift=1),
    dict(name="shift_2_padded_weights_smoothing_none", batch=2, time=7, d=4, c=9, lengths=(7, 4),
         weights=True, smoothing=0.1, reduction="none", shift=2),
]


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    for seed, spec in enumerate(CASES):
        case = make_case(seed=seed, **spec)
        (OUT / f"{case['name']}.json").write_text(json.dumps(case) + "\n")
    for seed, spec in enumerate(SEQUENCE_CASES, start=len(CASES)):
        case = make_sequence_case(seed=seed, **spec)
        (OUT / f"{case['name']}.json").write_text(json.dumps(case) + "\n")
    start = len(CASES) + len(SEQUENCE_CASES)
    for seed, spec in enumerate(ROW_WEIGHT_CASES, start=start):
        case = make_case(seed=seed, **spec)
        (OUT / f"{case['name']}.json").write_text(json.dumps(case) + "\n")
    start += len(ROW_WEIGHT_CASES)
    for seed, spec in enumerate(TEMPERATURE_CASES, start=start):
        case = make_case(seed=seed, **spec)
        (OUT / f"{case['name']}.json").write_text(json.dumps(case) + "\n")
    start += len(TEMPERATURE_CASES)
    for seed, spec in enumerate(SHIFT_CASES, start=start):
        case = make_sequence_case(seed=seed, **spec)
        (OUT / f"{case['name']}.json").write_text(json.dumps(case) + "\n")
    start += len(SHIFT_CASES)
    for seed, spec in enumerate(ENTROPY_CASES, start=start):
        case = make_case(seed=seed, **spec)
        (OUT / f"{case['name']}.json").write_text(json.dumps(case) + "\n")
    total = (len(CASES) + len(SEQUENCE_CASES) + len(ROW_WEIGHT_CASES) + len(TEMPERATURE_CASES)
             + len(SHIFT_CASES) + len(ENTROPY_CASES))
    print(f"wrote {total} cases with torch {torch.__version__} to {OUT}")


if __name__ == "__main__":
    main()
