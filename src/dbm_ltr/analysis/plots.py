"""Figures of a run (matplotlib, written as PNG; no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

__all__ = ["plot_per_class_accuracy"]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_per_class_accuracy(
    per_class: Sequence[float | None],
    cls_num_list: Sequence[int],
    path: str | Path,
    title: str = "",
    many_threshold: int = 100,
    few_threshold: int = 20,
) -> Path:
    """Bars of per-class test accuracy in class order, coloured by Many/Medium/Few, with the
    training count of each class on a log-scaled second axis."""
    from ..metrics import group_of

    plt = _pyplot()
    colours = {"many": "#4477aa", "medium": "#ccbb44", "few": "#ee6677"}
    groups = [group_of(int(n), many_threshold, few_threshold) for n in cls_num_list]
    values = [float("nan") if v is None else v for v in per_class]
    x = range(len(values))
    fig, ax = plt.subplots(figsize=(max(6.0, 0.09 * len(values) + 4), 3.6))
    ax.bar(x, values, color=[colours[g] for g in groups], width=0.85)
    ax.set_xlabel("class (label order)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_ylim(0, 100)
    twin = ax.twinx()
    twin.plot(list(x), list(cls_num_list), color="black", linewidth=1.2)
    twin.set_yscale("log")
    twin.set_ylabel("training images (log)")
    handles = [plt.Rectangle((0, 0), 1, 1, color=colours[g]) for g in colours if g in groups]
    ax.legend(handles, [g for g in colours if g in groups], loc="lower left", fontsize=8)
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
