"""Figures the trainer draws at the end of a run (a leaf module: matplotlib and the metrics
only, so the engine can use it without importing the analysis package)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from .metrics import FEW_BELOW, MANY_ABOVE, group_of

__all__ = ["GROUP_COLOURS", "plot_per_class_accuracy", "save_figure", "subplots"]

GROUP_COLOURS = {"many": "#4477aa", "medium": "#ccbb44", "few": "#ee6677"}


def subplots(figsize: tuple[float, float]):
    """``(figure, axes)`` drawn off-screen: a ``matplotlib.figure.Figure`` of its own, so
    matplotlib's backend and pyplot's figures (a notebook's) stay as they are."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    return fig, fig.subplots()


def save_figure(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


def plot_per_class_accuracy(
    per_class: Sequence[float | None],
    cls_num_list: Sequence[int],
    path: str | Path,
    title: str = "",
    many_threshold: int = MANY_ABOVE,
    few_threshold: int = FEW_BELOW,
    class_names: Sequence[str] = (),
) -> Path:
    """Bars of per-class test accuracy in class order, coloured by Many/Medium/Few, with the
    training count of each class on a log-scaled second axis; classes are labelled by name
    when ``class_names`` are given and there are at most 30 of them."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Rectangle

    groups = [group_of(int(n), many_threshold, few_threshold) for n in cls_num_list]
    values = [float("nan") if v is None else v for v in per_class]
    x = list(range(len(values)))
    fig, ax = subplots(figsize=(max(6.0, 0.09 * len(values) + 4), 3.9))
    ax.bar(x, values, color=[GROUP_COLOURS[g] for g in groups], width=0.85)
    zero = [i for i, v in enumerate(values) if v == 0]
    if zero:  # a bar of height 0 does not show: mark those classes on the axis
        ax.scatter(zero, [0.8] * len(zero), marker="x", color="black", s=14, zorder=3, clip_on=False)
    if class_names and len(class_names) == len(values) and len(values) <= 30:
        ax.set_xticks(x)
        ax.set_xticklabels(class_names, rotation=45, ha="right", fontsize=7)
        ax.set_xlabel("class")
    else:
        ax.set_xlabel("class (label order)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_ylim(0, 100)
    twin = ax.twinx()
    twin.plot(x, list(cls_num_list), color="black", linewidth=1.2, label="training images")
    twin.set_yscale("log")
    twin.set_ylabel("training images (log)")
    handles = [Rectangle((0, 0), 1, 1, color=GROUP_COLOURS[g]) for g in GROUP_COLOURS if g in groups]
    labels = [g for g in GROUP_COLOURS if g in groups]
    if zero:
        handles.append(Line2D([], [], marker="x", color="black", linestyle="none", markersize=4))
        labels.append("0 %")
    (line,) = twin.get_lines()
    # above the axes, so the legend never covers a bar
    ax.legend(
        handles + [line],
        labels + ["training images"],
        loc="lower left",
        bbox_to_anchor=(0, 1.01),
        ncol=4,
        fontsize=8,
        frameon=False,
    )
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)
