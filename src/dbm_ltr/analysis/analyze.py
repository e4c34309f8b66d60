"""``dbm-ltr analyze``: feature angles (Fig. 4), Fisher separability (Table 6), per-class
accuracy against training count and confusion matrices for one or more run directories.

Writes into the output folder::

    analysis.md              the tables printed on the terminal
    angles.csv               run, group, count, mean, q25, median, q75, min, max (degrees)
    fisher.csv               run, many, medium, few, all, classes_used, dims
    fisher_per_class.csv     class, name, train_count, group, one column of S_i per run
    per_class_accuracy.csv   class, name, train_count, group, one accuracy column per run
    analysis.json            everything above, plus options and per-run details (the mean and
                             largest cosine between two classes' classifier vectors among them)
    angles.png               angle distributions per group, runs side by side
    accuracy_vs_count.png    per-class accuracy against training count (log x)
    confusion_<run>.png      row-normalised confusion matrix, one per run
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from ..metrics import (
    GROUPS,
    angle_statistics,
    class_vector_cosines,
    feature_angles,
    fisher_separability,
    group_of,
)
from .runs import RunError, run_labels

__all__ = [
    "RunAnalysis",
    "analyze_features",
    "analyze_runs",
    "angle_table",
    "confusion_matrix",
    "fisher_table",
    "write_analysis",
]

ROWS = (*GROUPS, "all")


@dataclass
class RunAnalysis:
    """The results of one run (everything needed for tables, files and plots)."""

    label: str
    run_dir: str
    preset: str
    epoch: int
    split: str
    cls_num_list: list[int]
    classes: list[str]
    top1: float
    per_class_accuracy: list[float | None]
    angles: torch.Tensor  # (N,) degrees
    labels: torch.Tensor  # (N,)
    angle_stats: dict
    fisher: dict
    class_vectors: dict  # mean / max cosine between two classes' classifier vectors
    confusion: torch.Tensor  # (C, C) counts, rows = true class
    notes: list[str]


def confusion_matrix(labels: torch.Tensor, predictions: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``(C, C)`` int64 counts; row = true class, column = predicted class."""
    labels = torch.as_tensor(labels).long().reshape(-1)
    predictions = torch.as_tensor(predictions).long().reshape(-1)
    flat = labels * num_classes + predictions
    return torch.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def analyze_features(
    label: str,
    features,
    *,
    fisher_ridge: float = 1e-6,
    fisher_normalization: str = "raw",
    fisher_dims: int | str | None = "auto",
) -> RunAnalysis:
    """All analyses of one run's :class:`~dbm_ltr.analysis.features.RunFeatures`.

    ``fisher_dims``: see :func:`~dbm_ltr.metrics.fisher_separability` (``"auto"``: every
    feature dimension where that is affordable, else the top principal components)."""
    f = features
    counts = f.cls_num_list
    c = len(counts)
    angles = feature_angles(f.features, f.weights, f.labels)
    confusion = confusion_matrix(f.labels, f.predictions, c)
    totals = confusion.sum(dim=1).double()
    hits = confusion.diagonal().double()
    per_class = [None if t == 0 else 100.0 * h / t for h, t in zip(hits.tolist(), totals.tolist())]
    top1 = 100.0 * hits.sum().item() / max(totals.sum().item(), 1)
    notes = list(f.notes)
    if isinstance(fisher_dims, int) and not 1 <= fisher_dims <= f.features.shape[1]:
        raise RunError(
            f"--fisher-dims {fisher_dims}: the features of {label} have {f.features.shape[1]} "
            "dimensions; give at most that many, or auto / full"
        )
    fisher = fisher_separability(
        f.features, f.labels, counts, ridge=fisher_ridge, normalization=fisher_normalization, dims=fisher_dims
    )
    sizes = sorted(n for n in totals.long().tolist() if n >= 2)
    width, dim = f.features.shape[1], fisher["dims"]
    if dim < width:
        pairs = len(sizes) * (len(sizes) - 1) // 2
        smallest = (
            (
                f"; the two smallest classes have {sizes[0]} and {sizes[1]} samples, so S_i + S_j "
                f"has rank {sizes[0] + sizes[1] - 2} at most"
            )
            if len(sizes) >= 2
            else ""
        )
        notes.append(
            f"Fisher: on the top {dim} principal components of the {width}-d features (all {width} "
            f"would take {pairs} solves of {width} x {width} systems{smallest}); analyze --fisher-dims "
            "sets the dimension, compare runs at the same one"
        )
    if len(sizes) >= 2 and sizes[0] + sizes[1] - 2 < dim:
        notes.append(
            f"Fisher: the two smallest classes have {sizes[0]} and {sizes[1]} samples, fewer than "
            f"the {dim} feature dimensions; S_i + S_j of such pairs is singular and their J is "
            "set by the ridge (not comparable across runs)"
        )
    return RunAnalysis(
        label=label,
        run_dir=str(f.run_dir),
        preset=getattr(f.config, "name", "") or "",
        epoch=f.epoch,
        split=f.split,
        cls_num_list=list(counts),
        classes=list(f.classes),
        top1=top1,
        per_class_accuracy=per_class,
        angles=angles,
        labels=f.labels,
        angle_stats=angle_statistics(angles, f.labels, counts),
        fisher=fisher,
        class_vectors=class_vector_cosines(f.weights),
        confusion=confusion,
        notes=notes,
    )


def analyze_runs(
    run_dirs: Sequence[str | Path],
    overrides: Sequence[str] = (),
    split: str = "test",
    device: str | None = None,
    fisher_ridge: float = 1e-6,
    fisher_normalization: str = "raw",
    fisher_dims: int | str | None = "auto",
    log=print,
) -> list[RunAnalysis]:
    """Extract features of every run (all run directories are checked first) and analyse them."""
    from ..engine.config import apply_overrides, config_from_dict, saved_config
    from .features import load_run_state, run_features
    from .runs import CHECKPOINT, check_run_dir

    if not run_dirs:
        raise ValueError("no run directories given")
    for run in run_dirs:  # fail before any slow work: every folder, then every checkpoint
        check_run_dir(run, need=(CHECKPOINT,))
    data = {}
    for run in run_dirs:  # readable checkpoints, and overrides that fit their configs
        state = load_run_state(run)
        config = config_from_dict(apply_overrides(saved_config(state["config"]), list(overrides)))
        data[run] = (config.data.name, f"{config.data.imbalance_factor:g}", len(state.get("cls_num_list", [])))
    if len(set(data.values())) > 1:  # one table compares runs of one data set
        shown = "; ".join(f"{run}: {n} at IF {f}, {c} classes" for run, (n, f, c) in data.items())
        raise RunError(
            f"analyze compares runs of one data set and imbalance factor, got {shown}; analyze them separately"
        )
    results = []
    for run, label in zip(run_dirs, run_labels(run_dirs)):
        log(f"extracting {split} features of {run} ...")
        feats = run_features(run, overrides, split=split, device=device)
        results.append(
            analyze_features(
                label,
                feats,
                fisher_ridge=fisher_ridge,
                fisher_normalization=fisher_normalization,
                fisher_dims=fisher_dims,
            )
        )
        for note in results[-1].notes:
            log(f"  note: {note}")
    return results


# ---------------------------------------------------------------------------------- tables


def _num(value, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _md_row(cells) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def _md_table(header, rows) -> str:
    lines = [_md_row(header), _md_row(["---"] * len(header))]
    lines += [_md_row(r) for r in rows]
    return "\n".join(lines)


def angle_table(results: Sequence[RunAnalysis]) -> str:
    """Markdown: one row per group, one column per run: ``mean (Q1 / median / Q3)`` degrees."""
    header = ["group", "samples"] + [r.label for r in results]
    rows = []
    for g in ROWS:
        counts = {r.angle_stats[g]["count"] for r in results}
        samples = str(counts.pop()) if len(counts) == 1 else " / ".join(str(r.angle_stats[g]["count"]) for r in results)
        cells = []
        for r in results:
            s = r.angle_stats[g]
            cells.append(
                "-" if s["mean"] is None else f"{s['mean']:.2f} ({s['q25']:.2f} / {s['median']:.2f} / {s['q75']:.2f})"
            )
        rows.append([g, samples] + cells)
    return "Angle between feature and true-class weight (degrees): mean (Q1 / median / Q3)\n\n" + _md_table(
        header, rows
    )


def fisher_table(results: Sequence[RunAnalysis]) -> str:
    """Markdown: one row per group, one column per run: mean class separability ``S_i``."""
    header = ["group"] + [r.label for r in results]
    rows = [[g] + [_num(r.fisher[g]) for r in results] for g in ROWS]
    rows.append(["dimensions"] + [str(r.fisher["dims"]) for r in results])
    return "Fisher separability (mean over the group's classes of S_i; higher is better)\n\n" + _md_table(header, rows)


def runs_table(results: Sequence[RunAnalysis]) -> str:
    header = ["run", "preset", "epoch", "split", "top-1 (%)", "class-vector cosine mean / max", "directory"]
    rows = [
        [
            r.label,
            r.preset or "-",
            r.epoch,
            r.split,
            _num(r.top1),
            f"{_num(r.class_vectors['mean'], 3)} / {_num(r.class_vectors['max'], 3)}",
            r.run_dir,
        ]
        for r in results
    ]
    return _md_table(header, rows)


def markdown_report(results: Sequence[RunAnalysis], options: dict) -> str:
    parts = [
        "# Analysis",
        "",
        runs_table(results),
        "",
        angle_table(results),
        "",
        fisher_table(results),
        "",
        f"Features: {options['split']} split, pooled features the classifier sees; Fisher: "
        f"{options['fisher_normalization']} features, ridge {options['fisher_ridge']:g} x trace/D, "
        "population variances. Groups by training count: Many > 100, Medium 20-100, Few < 20. "
        "Class-vector cosine: between the classifier vectors of two different classes (near 1: "
        "a collapsed classifier that scores every class alike).",
    ]
    notes = [f"- {r.label}: {n}" for r in results for n in r.notes]
    if notes:
        parts += ["", "Notes:", *notes]
    return "\n".join(parts) + "\n"


# ---------------------------------------------------------------------------------- files


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=,+-]+", "_", name).strip("_") or "run"


def _write_csv(path: Path, header, rows) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)


def _class_rows(results: Sequence[RunAnalysis], values) -> list[list]:
    first = results[0]
    rows = []
    for c, count in enumerate(first.cls_num_list):
        name = first.classes[c] if c < len(first.classes) else str(c)
        row = [c, name, count, group_of(int(count))]
        for r in results:
            v = values(r)[c] if c < len(values(r)) else None
            row.append("" if v is None else v)
        rows.append(row)
    return rows


def write_analysis(
    results: Sequence[RunAnalysis], out_dir: str | Path, options: dict, plots: bool = True
) -> dict[str, Path]:
    """Write the tables (markdown, CSV, JSON) and the plots; returns ``{kind: path}``."""
    from . import plots as P

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}

    files["markdown"] = out / "analysis.md"
    files["markdown"].write_text(markdown_report(results, options))

    files["angles_csv"] = out / "angles.csv"
    _write_csv(
        files["angles_csv"],
        ["run", "group", "count", "mean", "q25", "median", "q75", "min", "max"],
        [
            [r.label, g]
            + [
                "" if r.angle_stats[g][k] is None else r.angle_stats[g][k]
                for k in ("count", "mean", "q25", "median", "q75", "min", "max")
            ]
            for r in results
            for g in ROWS
        ],
    )
    files["fisher_csv"] = out / "fisher.csv"
    _write_csv(
        files["fisher_csv"],
        ["run", *ROWS, "classes_used", "dims"],
        [
            [r.label]
            + ["" if r.fisher[g] is None else r.fisher[g] for g in ROWS]
            + [r.fisher["classes_used"], r.fisher["dims"]]
            for r in results
        ],
    )
    same_classes = len({tuple(r.cls_num_list) for r in results}) == 1
    if same_classes:
        head = ["class", "name", "train_count", "group"]
        files["fisher_per_class_csv"] = out / "fisher_per_class.csv"
        _write_csv(
            files["fisher_per_class_csv"],
            head + [r.label for r in results],
            _class_rows(results, lambda r: r.fisher["per_class"]),
        )
        files["per_class_accuracy_csv"] = out / "per_class_accuracy.csv"
        _write_csv(
            files["per_class_accuracy_csv"],
            head + [r.label for r in results],
            _class_rows(results, lambda r: r.per_class_accuracy),
        )
    else:  # different data sets: one file per run
        for r in results:
            key = _safe(r.label)
            head = ["class", "name", "train_count", "group", r.label]
            for kind, values in (
                ("fisher_per_class", lambda x: x.fisher["per_class"]),
                ("per_class_accuracy", lambda x: x.per_class_accuracy),
            ):
                files[f"{kind}_csv:{r.label}"] = out / f"{kind}_{key}.csv"
                _write_csv(files[f"{kind}_csv:{r.label}"], head, _class_rows([r], values))

    files["json"] = out / "analysis.json"
    files["json"].write_text(
        json.dumps(
            {
                "options": options,
                "runs": [
                    {
                        "label": r.label,
                        "run_dir": r.run_dir,
                        "preset": r.preset,
                        "epoch": r.epoch,
                        "split": r.split,
                        "top1": r.top1,
                        "cls_num_list": r.cls_num_list,
                        "classes": r.classes,
                        "per_class_accuracy": r.per_class_accuracy,
                        "angles": r.angle_stats,
                        "fisher": r.fisher,
                        "class_vectors": r.class_vectors,
                        "notes": r.notes,
                        "confusion": r.confusion.tolist(),
                    }
                    for r in results
                ],
            },
            indent=2,
        )
    )

    if plots:
        files["angles_png"] = P.plot_angle_distributions(
            [(r.label, r.angles, r.labels, r.cls_num_list) for r in results],
            out / "angles.png",
            title=f"Angle between feature and true-class weight ({results[0].split} split)",
        )
        files["accuracy_png"] = P.plot_accuracy_vs_count(
            [(r.label, r.per_class_accuracy, r.cls_num_list) for r in results],
            out / "accuracy_vs_count.png",
            title=f"Per-class accuracy ({results[0].split} split)",
        )
        used = set()
        for r in results:
            key = _safe(r.label)
            while key in used:
                key += "_"
            used.add(key)
            files[f"confusion_png:{r.label}"] = P.plot_confusion_matrix(
                r.confusion,
                out / f"confusion_{key}.png",
                classes=r.classes,
                title=f"{r.label}: confusion ({r.split} split, rows normalised)",
            )
    return files
