"""Writes crates/linear-softmax/tests/fixtures/distillation/*.json: a student head, a frozen
teacher head, their inputs, the options, and PyTorch's distillation loss with the student's
gradients dW, db and dX, in float64.

Run by hand (never by the tests or CI), in a virtual environment with torch from pip:

    python3 -m venv /tmp/torch-env && /tmp/torch-env/bin/pip install torch
    /tmp/torch-env/bin/python scripts/pytorch_distillation_reference.py

The loss, in plain PyTorch. Student logits S = X W + b `[N, C]`, teacher logits
T = X_t W_t + b_t (no gradient flows to the teacher), temperature tau, per row i:

    Q = softmax(S / tau)   (the student),   P = softmax(T / tau)   (the teacher)
    D_i = KL(P || Q)                                  beta = 0   (forward KL)
        = KL(Q || P)                                  beta = 1   (reverse KL)
        = beta KL(P || M) + (1 - beta) KL(Q || M)     otherwise, M = beta P + (1 - beta) Q
    l_i = w_soft D_i + w_hard CE(S_i, y_i)            (the hard term at temperature 1)

the generalised JSD of Liger-Kernel's LigerJSD / LigerFusedLinearJSD (whose beta = 0 and 1 are
these special cases), its KL terms through F.kl_div(log_target=True) on log_softmax values.
Rows whose label is the ignore index count nowhere (loss, denominator); per-row weights rho_i
scale row i's loss. Reduction mean divides by sum_i rho_i v_i (the counted rows), sum sums,
none returns l_i; for none the gradients are those of sum_i g_i l_i for the upstream g written
in the file.
"""

import json
import math
import pathlib

import torch
import torch.nn.functional as F

OUT = (pathlib.Path(__file__).resolve().parent.parent / "crates" / "linear-softmax" / "tests"
       / "fixtures" / "distillation")
IGNORE = -100


def f32_exact(t):
    # Values representable in f32, so the f32 tests start from the same numbers.
    return t.float().double()


def kl_rows(log_p, log_q):
    """KL(P || Q) per row, from log-probabilities."""
    return F.kl_div(log_q, log_p, reduction="none", log_target=True).sum(1)


def divergence(student, teacher, beta):
    """The generalised JSD per row, of log-probabilities `student` (log Q) and `teacher` (log P)."""
    if beta == 0.0:
        return kl_rows(teacher, student)
    if beta == 1.0:
        return kl_rows(student, teacher)
    # log M = logaddexp(log beta + log P, log(1 - beta) + log Q): finite where P and Q underflow.
    log_m = torch.logaddexp(teacher + math.log(beta), student + math.log(1.0 - beta))
    return beta * kl_rows(teacher, log_m) + (1.0 - beta) * kl_rows(student, log_m)


def make_case(name, n, d, d_teacher, c, seed, beta, temperature=1.0, reduction="mean",
              labels=False, ignored_rows=(), hard_weight=0.0, soft_weight=1.0, row_weights=False,
              bias=True, teacher_bias=True):
    assert labels or not hard_weight, "the hard-label term needs labels"
    g = torch.Generator().manual_seed(seed)
    uniform = lambda *shape: torch.rand(*shape, generator=g, dtype=torch.float64)
    x = f32_exact(uniform(n, d) * 4 - 2).requires_grad_()
    w = f32_exact(uniform(d, c) * 2 - 1).requires_grad_()
    b = f32_exact(uniform(c) - 0.5).requires_grad_() if bias else None
    hidden = f32_exact(uniform(n, d_teacher) * 4 - 2)
    w_t = f32_exact((uniform(d_teacher, c) * 2 - 1) * 1.5)
    b_t = f32_exact(uniform(c) - 0.5) if teacher_bias else None
    y = torch.randint(0, c, (n,), generator=g)
    for row in ignored_rows:
        y[row] = IGNORE
    rho = f32_exact(uniform(n) * 2) if row_weights else None
    upstream = f32_exact(uniform(n) * 2 - 1) if reduction == "none" else None

    s = x @ w + (b if b is not None else 0.0)
    t = hidden @ w_t + (b_t if b_t is not None else 0.0)
    rows = soft_weight * divergence(F.log_softmax(s / temperature, 1),
                                    F.log_softmax(t / temperature, 1), beta)
    if hard_weight:
        rows = rows + hard_weight * F.cross_entropy(s, y, ignore_index=IGNORE, reduction="none")
    valid = (y != IGNORE).double() if labels else torch.ones(n, dtype=torch.float64)
    rows = rows * valid
    if rho is not None:
        rows = rows * rho
    if reduction == "mean":
        loss = rows.sum() / (valid * (rho if rho is not None else 1.0)).sum()
    elif reduction == "sum":
        loss = rows.sum()
    else:
        loss = rows
    (loss * upstream).sum().backward() if upstream is not None else loss.sum().backward()

    flat = lambda v: v.detach().reshape(-1).tolist()
    return {
        "name": name,
        "torch_version": torch.__version__,
        "shape": [n, d, c],
        "teacher_features": d_teacher,
        "x": flat(x),
        "weight": flat(w),
        "bias": flat(b) if b is not None else None,
        "teacher_hidden": flat(hidden),
        "teacher_weight": flat(w_t),
        "teacher_bias": flat(b_t) if b_t is not None else None,
        "labels": y.tolist() if labels else None,
        "row_weights": flat(rho) if rho is not None else None,
        "upstream": flat(upstream) if upstream is not None else None,
        "options": {
            "reduction": reduction,
            "ignore_index": IGNORE if labels else None,
            "beta": beta,
            "temperature": temperature,
            "hard_weight": hard_weight,
            "soft_weight": soft_weight,
        },
        "loss": flat(loss.reshape(-1)),
        "d_weight": flat(w.grad),
        "d_bias": flat(b.grad) if b is not None else None,
        "d_input": flat(x.grad),
    }


CASES = [
    dict(name="forward_kl", n=7, d=5, d_teacher=5, c=6, seed=1, beta=0.0),
    dict(name="reverse_kl_temperature", n=7, d=5, d_teacher=5, c=6, seed=2, beta=1.0, temperature=2.0),
    dict(name="jsd_sum", n=7, d=5, d_teacher=5, c=6, seed=3, beta=0.5, reduction="sum"),
    dict(name="jsd_temperature_hard_ignore", n=9, d=5, d_teacher=5, c=6, seed=4, beta=0.5,
         temperature=2.0, labels=True, ignored_rows=(2, 6), hard_weight=0.3, soft_weight=0.7),
    dict(name="forward_kl_temperature_hard_none", n=7, d=4, d_teacher=4, c=5, seed=5, beta=0.0,
         temperature=2.0, reduction="none", labels=True, hard_weight=0.5, soft_weight=0.5),
    dict(name="reverse_kl_ignore_sum", n=8, d=4, d_teacher=4, c=5, seed=6, beta=1.0,
         reduction="sum", labels=True, ignored_rows=(0, 5)),
    dict(name="jsd_beta_0_3_wider_teacher_no_teacher_bias", n=7, d=4, d_teacher=9, c=6, seed=7,
         beta=0.3, temperature=1.5, teacher_bias=False),
    dict(name="jsd_row_weights_ignore_none_large_c", n=11, d=6, d_teacher=3, c=40, seed=8,
         beta=0.5, reduction="none", labels=True, ignored_rows=(4,), row_weights=True,
         hard_weight=0.25, bias=False),
    dict(name="jsd_row_weights_hard_mean", n=9, d=5, d_teacher=7, c=12, seed=9, beta=0.7,
         temperature=0.5, labels=True, ignored_rows=(1,), row_weights=True, hard_weight=1.0,
         soft_weight=2.0),
]


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    for case in CASES:
        fixture = make_case(**case)
        (OUT / f"{case['name']}.json").write_text(json.dumps(fixture) + "\n")
    print(f"wrote {len(CASES)} cases to {OUT}")


if __name__ == "__main__":
    main()
