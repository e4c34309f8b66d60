"""Figures of a run (matplotlib, written as PNG; no display needed)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ..figures import plot_per_class_accuracy, save_figure
from ..figures import subplots as _subplots
from ..metrics import FEW_BELOW, GROUPS, MANY_ABOVE, group_of

__all__ = [
    "plot_accuracy_vs_count",
    "plot_angle_distributions",
    "plot_confusion_matrix",
    "plot_per_class_accuracy",
    "plot_reproduction",
    "plot_sweep",
]

RUN_COLOURS = ("#4477aa", "#ee6677", "#228833", "#ccbb44", "#66ccee", "#aa3377", "#bbbbbb", "#000000")
RUN_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


def plot_angle_distributions(
    runs: Sequence[tuple],
    path: str | Path,
    title: str = "",
    many_threshold: int = MANY_ABOVE,
    few_threshold: int = FEW_BELOW,
) -> Path:
    """Violins of the feature-to-true-class-weight angles per Many / Medium / Few group, the
    runs side by side within a group (Fig. 4 of the paper), with quartile and mean marks.

    ``runs``: ``(label, angles (N,), labels (N,), cls_num_list)`` per run.
    """
    import numpy as np

    k = max(len(runs), 1)
    width = 0.8 / k
    fig, ax = _subplots(figsize=(max(5.5, 1.2 + 0.9 * k * 3), 4.0))
    present = []
    for r, (label, angles, labels, counts) in enumerate(runs):
        angles = np.asarray(angles, dtype=float).reshape(-1)
        labels = np.asarray(labels, dtype=int).reshape(-1)
        groups = np.array([group_of(int(n), many_threshold, few_threshold) for n in counts])
        colour = RUN_COLOURS[r % len(RUN_COLOURS)]
        for g_idx, g in enumerate(GROUPS):
            values = angles[groups[labels] == g] if labels.size else angles[:0]
            if values.size == 0:
                continue
            if g not in present:
                present.append(g)
            x = g_idx + (r - (k - 1) / 2) * width
            if values.size > 1 and np.ptp(values) > 0:
                parts = ax.violinplot([values], positions=[x], widths=width * 0.95, showextrema=False)
                for body in parts["bodies"]:
                    body.set_facecolor(colour)
                    body.set_edgecolor("black")
                    body.set_alpha(0.55)
            q1, med, q3 = np.percentile(values, [25, 50, 75])
            ax.vlines(x, q1, q3, color="black", linewidth=3)
            ax.scatter([x], [med], color="white", edgecolor="black", zorder=3, s=18)
            ax.scatter([x], [values.mean()], color=colour, marker="_", s=200, zorder=3)
        ax.plot([], [], color=colour, linewidth=8, alpha=0.55, label=label)
    ax.set_xticks(range(len(GROUPS)))
    ax.set_xticklabels([g if g in present else f"{g}\n(no classes)" for g in GROUPS])
    ax.set_xlim(-0.6, len(GROUPS) - 0.4)
    ax.set_ylabel("angle to true-class weight (degrees)")
    ax.legend(fontsize=8, loc="best")
    ax.grid(axis="y", alpha=0.3)
    ax.set_title((title + "\n" if title else "") + "bar: Q1-Q3, dot: median, dash: mean", fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_accuracy_vs_count(
    runs: Sequence[tuple],
    path: str | Path,
    title: str = "",
    many_threshold: int = MANY_ABOVE,
    few_threshold: int = FEW_BELOW,
) -> Path:
    """Per-class accuracy against the class's training count (log x-axis), one marker series
    per run, with the Many / Medium / Few boundaries dashed.

    ``runs``: ``(label, per_class accuracies (None for no samples), cls_num_list)`` per run.
    """
    fig, ax = _subplots(figsize=(6.4, 4.0))
    k = max(len(runs), 1)
    lowest, highest = float("inf"), 0.0
    for r, (label, per_class, counts) in enumerate(runs):
        # a small multiplicative offset per run keeps equal counts of several runs visible
        shift = 1.0 + 0.03 * (r - (k - 1) / 2)
        xs = [max(int(n), 1) * shift for n, v in zip(counts, per_class) if v is not None]
        ys = [v for v in per_class if v is not None]
        if counts:
            lowest, highest = min(lowest, min(max(int(n), 1) for n in counts)), max(highest, max(counts))
        ax.scatter(
            xs,
            ys,
            s=22,
            alpha=0.8,
            label=label,
            marker=RUN_MARKERS[r % len(RUN_MARKERS)],
            color=RUN_COLOURS[r % len(RUN_COLOURS)],
        )
    ax.set_xscale("log")
    from matplotlib.ticker import FuncFormatter

    plain = FuncFormatter(lambda v, _: f"{v:g}")
    ax.xaxis.set_major_formatter(plain)
    ax.xaxis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}" if highest / lowest < 20 else ""))
    boundaries = [
        (few_threshold, f"Few | Medium ({few_threshold} images)"),
        (many_threshold + 0.5, f"Medium | Many (over {many_threshold} images)"),
    ]
    for (boundary, label), style in zip(boundaries, ("--", ":")):
        if lowest <= boundary <= highest:
            ax.axvline(boundary, color="grey", linestyle=style, linewidth=0.9, label=label)
    ax.set_xlabel("training images of the class (log scale)")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(-3, 103)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_confusion_matrix(matrix, path: str | Path, classes: Sequence[str] | None = None, title: str = "") -> Path:
    """Confusion matrix with each row (true class) normalised to 100 %; classes in label
    order (for the CIFAR-LT sets: most to least frequent)."""
    import numpy as np

    m = np.asarray(matrix, dtype=float)
    c = m.shape[0]
    totals = m.sum(axis=1, keepdims=True)
    rates = np.divide(100.0 * m, totals, out=np.zeros_like(m), where=totals > 0)
    size = min(12.0, max(4.5, 0.35 * c + 2.5))
    fig, ax = _subplots(figsize=(size + 1.0, size))
    image = ax.imshow(rates, cmap="Blues", vmin=0, vmax=100, interpolation="nearest")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="% of the true class")
    if c <= 20:
        names = list(classes) if classes and len(classes) == c else [str(i) for i in range(c)]
        ax.set_xticks(range(c))
        ax.set_yticks(range(c))
        ax.set_xticklabels(names, rotation=90, fontsize=7)
        ax.set_yticklabels(names, fontsize=7)
        for i in range(c):
            for j in range(c):
                if rates[i, j] >= 1:
                    ax.text(
                        j,
                        i,
                        f"{rates[i, j]:.0f}",
                        ha="center",
                        va="center",
                        fontsize=6,
                        color="white" if rates[i, j] > 60 else "black",
                    )
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_sweep(
    keys: Sequence[str],
    axes_values: Sequence[Sequence],
    top1: dict,
    path: str | Path,
    title: str = "",
) -> Path:
    """Top-1 of a sweep: a heat map for two keys (Fig. 3 of the paper: rows = first key,
    columns = second), a line for one. ``top1`` maps a tuple of values (one per key) to the
    accuracy or ``None`` (not run / failed)."""
    import numpy as np

    if len(keys) == 2:
        rows, cols = axes_values
        grid = np.full((len(rows), len(cols)), np.nan)
        for i, a in enumerate(rows):
            for j, b in enumerate(cols):
                v = top1.get((a, b))
                if v is not None:
                    grid[i, j] = v
        fig, ax = _subplots(figsize=(1.6 + 1.1 * len(cols), 1.4 + 0.8 * len(rows)))
        image = ax.imshow(grid, cmap="viridis", aspect="auto")
        fig.colorbar(image, ax=ax, label="top-1 (%)")
        ax.set_xticks(range(len(cols)))
        ax.set_xticklabels([str(b) for b in cols])
        ax.set_yticks(range(len(rows)))
        ax.set_yticklabels([str(a) for a in rows])
        ax.set_xlabel(keys[1])
        ax.set_ylabel(keys[0])
        finite = grid[np.isfinite(grid)]
        middle = (finite.min() + finite.max()) / 2 if finite.size else 0
        for i in range(len(rows)):
            for j in range(len(cols)):
                text = "n/a" if np.isnan(grid[i, j]) else f"{grid[i, j]:.2f}"
                ax.text(
                    j,
                    i,
                    text,
                    ha="center",
                    va="center",
                    fontsize=8,
                    color="white" if np.isfinite(grid[i, j]) and grid[i, j] <= middle else "black",
                )
    elif len(keys) == 1:
        (values,) = axes_values
        fig, ax = _subplots(figsize=(5.5, 3.6))
        ys = [top1.get((v,)) for v in values]
        ax.plot(range(len(values)), [np.nan if y is None else y for y in ys], marker="o")
        ax.set_xticks(range(len(values)))
        ax.set_xticklabels([str(v) for v in values])
        ax.set_xlabel(keys[0])
        ax.set_ylabel("top-1 (%)")
        ax.grid(alpha=0.3)
    else:
        raise ValueError(f"a sweep plot needs one or two keys, got {len(keys)}")
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_reproduction(rows: Sequence, path: str | Path, title: str = "") -> Path:
    """Top-1 per report row (:class:`~dbm_ltr.analysis.report.ReportRow`): ours at the final
    epoch (mean, with the seeds' std as an error bar), ours at the best test epoch where it
    was tracked (hatched: test-set selection), and the paper's number."""
    import numpy as np

    labels = [
        r.preset.split("/")[-1]
        + (f" IF{r.imbalance_factor:g}" if r.imbalance_factor else "")
        + (" (short)" if r.short else "")
        for r in rows
    ]
    x = np.arange(len(rows))
    series = [
        ("ours, final epoch", [r.mean("top1") for r in rows], [r.std("top1") for r in rows], "#4477aa", ""),
        (
            "ours, best test epoch*",
            [r.mean("top1", best=True) for r in rows],
            [r.std("top1", best=True) for r in rows],
            "#66ccee",
            "//",
        ),
        ("paper", [r.paper.get("top1") for r in rows], [None] * len(rows), "#bbbbbb", ""),
    ]
    series = [s for s in series if any(v is not None for v in s[1])]
    width = 0.8 / len(series)
    fig, ax = _subplots(figsize=(max(5.5, 0.9 * len(rows) + 2), 3.8))
    for k, (name, values, errors, colour, hatch) in enumerate(series):
        ys = [np.nan if v is None else v for v in values]
        err = [0.0 if e is None else e for e in errors]
        ax.bar(
            x + (k - (len(series) - 1) / 2) * width,
            ys,
            width,
            yerr=err if any(err) else None,
            label=name,
            color=colour,
            hatch=hatch,
            edgecolor="white",
            capsize=2,
        )
    finite = [v for _, values, *_ in series for v in values if v is not None]
    if finite:
        ax.set_ylim(max(0.0, min(finite) - 10), min(100.0, max(finite) + 5))
    ax.set_xticks(x)
    ax.set_xticklabels(labels, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("top-1 (%)")
    ax.grid(axis="y", alpha=0.3)
    # above the axes, so the legend never covers a bar
    ax.legend(fontsize=7, loc="lower left", bbox_to_anchor=(0, 1.01), ncol=len(series), frameon=False)
    if any(r.short for r in rows):
        ax.text(
            1.0,
            -0.32,
            "(short): fewer epochs than the recipe, or part of a split",
            transform=ax.transAxes,
            ha="right",
            va="top",
            fontsize=7,
        )
    ax.set_title(title or "ours beside the paper", fontsize=9, pad=22)
    fig.tight_layout()
    return save_figure(fig, path)
