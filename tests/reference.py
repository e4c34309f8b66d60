"""Naive float64 references written out with Python's math module, one sample at a time.

They follow the paper and the original code literally and share no code with the package.
"""

from __future__ import annotations

import math


def cifar_lt_counts(n_max: int, num_classes: int, imbalance: float) -> list[int]:
    return [int(n_max * (1.0 / imbalance) ** (c / (num_classes - 1))) for c in range(num_classes)]


def first_argmax(row) -> int:
    best = 0
    for c in range(1, len(row)):
        if row[c] > row[best]:
            best = c
    return best


def class_margin(counts, c, K=0.1, tau=1.0, reference="min"):
    """K (n_c / n_ref)^-tau, n_ref the rarest count (paper) or the last class's (original code)."""
    return K * (counts[c] / (min(counts) if reference == "min" else counts[-1])) ** (-tau)


def dbm_target_cos(cy, mc, hard, lam=1.0, overflow="arcface"):
    cy = max(-1.0, min(1.0, cy))
    m = mc * (1.0 + lam * hard * (1.0 - cy) / 2.0)
    theta = math.acos(cy)
    if overflow == "arcface" and theta + m > math.pi:
        return cy - m * math.sin(m)
    return math.cos(theta + m)


def dbm_logits(cos, target, counts, K=0.1, tau=1.0, s=32.0, lam=1.0, mode="hard", overflow="arcface", reference="min"):
    """Rows of scaled DBM logits (no base-loss offset)."""
    out = []
    for row, y in zip(cos, target):
        if mode == "hard":
            h = 1.0 if first_argmax(row) != y else 0.0
        else:
            h = 1.0 if mode == "all" else 0.0
        z = [s * v for v in row]
        z[y] = s * dbm_target_cos(row[y], class_margin(counts, y, K, tau, reference), h, lam, overflow)
        out.append(z)
    return out


def cross_entropy(logits, target, weights=None):
    """Mean (or weighted-mean, sum w_y l / sum w_y) cross-entropy."""
    num, den = 0.0, 0.0
    for row, y in zip(logits, target):
        mx = max(row)
        lse = mx + math.log(sum(math.exp(v - mx) for v in row))
        w = 1.0 if weights is None else weights[y]
        num += w * (lse - row[y])
        den += w
    return num / den


def cb_weights(counts, beta=0.9999):
    w = [(1 - beta) / (1 - beta**n) for n in counts]
    total = sum(w)
    return [v * len(counts) / total for v in w]


def log_prior(counts):
    n = sum(counts)
    return [math.log(c / n) for c in counts]
