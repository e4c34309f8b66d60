"""``dbm-ltr report``: top-1 and Many / Medium / Few of runs, averaged over seeds, beside the
paper's numbers.

Runs are grouped by preset, imbalance factor and every other setting of their resolved config
except the seed (and settings that do not change results: data root, workers, device, ...), so
seeds of one recipe are averaged and, say, the points of a sweep stay apart. A group is
labelled with the settings that tell it apart from the other groups of its preset.

Where a DBM row and the row it adds DBM to (DBM-CE and CE, ...) share seeds, the report also
gives their difference seed by seed, with its mean, standard error and 95% confidence interval
(Student's t with n - 1 degrees of freedom): runs of one seed see the same batches (and CE,
CE-DRW, BS and their DBM rows start from the same trunk), so the pairing removes that part of
the noise.

Our headline is the final epoch. Runs that also evaluated during training (``train.eval_every``)
carry their best test epoch; the report shows it beside, marked as test-set model selection,
because that is what the original code reports and so what the paper's numbers are.
"""

from __future__ import annotations

import csv
import json
import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..engine.config import flatten_config
from ..engine.rundir import RESUMABLE_DIFFERENCES, is_run_dir
from .runs import RunError, read_metrics, read_run_config

__all__ = [
    "DBM_BASELINES",
    "METRICS_REPORTED",
    "PairedDifference",
    "ReportRow",
    "compact_table",
    "expand_run_dirs",
    "paired_differences",
    "paired_markdown",
    "report_csv",
    "report_markdown",
    "summarize_runs",
    "write_report",
]

#: Metrics of the report, in column order (keys of metrics.json).
METRICS_REPORTED = ("top1", "many", "medium", "few")
_TITLES = {"top1": "top-1", "many": "many", "medium": "medium", "few": "few"}

#: Config keys that do not separate groups: the seed (averaged over) and settings that do not
#: change the result (those a resumed run may change, the evaluation frequency among them).
IGNORED_SETTINGS = RESUMABLE_DIFFERENCES | {"train.seed"}

#: Each DBM row of the paper and the row it adds DBM to (Tables 2-4), by preset name.
DBM_BASELINES = {
    "dbm_ce": "ce",
    "dbm_drw": "ce_drw",
    "dbm_bs": "bs",
    "dbm_bcl": "bcl",
    "dbm_gml": "gml",
    "dbm_ncl": "ncl",
}

#: Config keys (or their prefixes) in which a DBM row may differ from its baseline and still be
#: paired with it: the method itself. Any other difference (epochs, data, ...) keeps them apart.
_METHOD_KEYS = ("name", "paper", "loss.", "model.classifier", "method.")


@dataclass
class ReportRow:
    """One group of runs (seeds of one recipe)."""

    preset: str
    imbalance_factor: float | None
    settings: str  # what tells this group apart from others of its preset ("" if nothing)
    runs: list[str]
    seeds: list[Any]
    values: dict[str, list[float]]  # metric -> one value per run that has it
    paper: dict[str, float]  # metric -> the paper's number (only those it reports)
    paper_source: str = ""
    epochs: list[int] = field(default_factory=list)
    #: metric -> one value per run that tracked its best test epoch (test-set selection)
    best: dict[str, list[float]] = field(default_factory=dict)
    #: the preset's own number of epochs, when the preset is known (to mark short runs)
    recipe_epochs: int | None = None
    #: ``data.limit`` of the runs (training images kept), ``None`` for the whole split
    limit: int | None = None
    #: ``data.test_limit`` of the runs (test images evaluated), ``None`` for the whole split
    test_limit: int | None = None
    #: ``train.eval_every`` of each run (how often its best test epoch was looked for)
    eval_every: list[int] = field(default_factory=list)
    #: the settings outside the method (``_METHOD_KEYS``): equal in a DBM row and its baseline
    setup: tuple = ()
    #: seed -> the final-epoch metrics of its run, for each seed that only one run of the group has
    by_seed: dict[Any, dict[str, float]] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return len(self.runs)

    def _values(self, metric: str, best: bool) -> list[float]:
        return (self.best if best else self.values).get(metric) or []

    def mean(self, metric: str, best: bool = False) -> float | None:
        """Mean over seeds of the final epoch (``best=True``: of the best test epoch)."""
        v = self._values(metric, best)
        return statistics.fmean(v) if v else None

    def std(self, metric: str, best: bool = False) -> float | None:
        """Sample standard deviation over seeds (``None`` for a single run)."""
        v = self._values(metric, best)
        return statistics.stdev(v) if len(v) > 1 else None

    def diff(self, metric: str, best: bool = False) -> float | None:
        """Ours (mean) minus the paper."""
        m, p = self.mean(metric, best), self.paper.get(metric)
        return None if m is None or p is None else m - p

    @property
    def short(self) -> bool:
        """Trained for fewer epochs than its preset's recipe, or on part of the training split, or
        evaluated on part of the test split."""
        return (
            bool(self.limit)
            or bool(self.test_limit)
            or self.recipe_epochs is not None
            and any(e is not None and e < self.recipe_epochs for e in self.epochs)
        )

    def epochs_text(self) -> str:
        known = sorted({e for e in self.epochs if e is not None})
        text = "/".join(str(e) for e in known) or "-"
        marks = (
            [f"recipe {self.recipe_epochs}"]
            if self.recipe_epochs and any(e is not None and e < self.recipe_epochs for e in self.epochs)
            else []
        )
        marks += [f"{self.limit} training images"] if self.limit else []
        marks += [f"{self.test_limit} test images"] if self.test_limit else []
        return f"{text} (short; {', '.join(marks)})" if marks else text


@dataclass
class PairedDifference:
    """A DBM row minus its baseline, seed by seed, over the seeds both have."""

    row: ReportRow
    base: ReportRow
    seeds: list[Any]
    diffs: dict[str, list[float]]  # metric -> one difference per seed (those where both have it)

    @property
    def n(self) -> int:
        return len(self.seeds)

    def mean(self, metric: str) -> float | None:
        v = self.diffs.get(metric) or []
        return statistics.fmean(v) if v else None

    def stderr(self, metric: str) -> float | None:
        """Standard error of the mean difference: sample std / sqrt(n) (``None`` for n < 2)."""
        v = self.diffs.get(metric) or []
        return statistics.stdev(v) / len(v) ** 0.5 if len(v) > 1 else None

    def interval(self, metric: str, level: float = 0.95) -> tuple[float, float] | None:
        """The ``level`` confidence interval of the mean difference, mean +- t * SE with Student's
        t quantile for n - 1 degrees of freedom (``None`` for n < 2)."""
        mean, se = self.mean(metric), self.stderr(metric)
        if mean is None or se is None:
            return None
        half = t_quantile((1 + level) / 2, len(self.diffs[metric]) - 1) * se
        return mean - half, mean + half

    def paper(self, metric: str) -> float | None:
        """The paper's difference of the two rows."""
        a, b = self.row.paper.get(metric), self.base.paper.get(metric)
        return None if a is None or b is None else a - b


def t_quantile(p: float, df: int) -> float:
    """The ``p`` quantile (0.5 <= p < 1) of Student's t distribution with ``df`` degrees of
    freedom. With ``t = sqrt(df) tan(phi)`` the density becomes proportional to
    ``cos(phi) ** (df - 1)`` on ``[0, pi / 2)``, bounded and smooth for every ``p``: its integral
    (Simpson's rule; the full one in closed form) is inverted by bisection on ``phi``."""
    if not 0.5 <= p < 1 or df < 1:
        raise ValueError(f"t_quantile needs 0.5 <= p < 1 and df >= 1, got p={p}, df={df}")
    # the integral of cos^(df-1) over [0, pi/2]: sqrt(pi) Gamma(df/2) / (2 Gamma((df+1)/2))
    full = math.exp(0.5 * math.log(math.pi) + math.lgamma(df / 2) - math.lgamma((df + 1) / 2)) / 2
    want = (2 * p - 1) * full

    def integral(phi: float, steps: int = 2000) -> float:
        h = phi / steps
        inner = sum((4 if i % 2 else 2) * math.cos(i * h) ** (df - 1) for i in range(1, steps))
        return h / 3 * (1.0 + inner + math.cos(phi) ** (df - 1))

    low, high = 0.0, math.pi / 2
    for _ in range(50):
        mid = (low + high) / 2
        low, high = (mid, high) if integral(mid) < want else (low, mid)
    return math.sqrt(df) * math.tan((low + high) / 2)


def paired_differences(rows: Sequence[ReportRow]) -> list[PairedDifference]:
    """Every DBM row beside its baseline (:data:`DBM_BASELINES`) of the same data set, imbalance
    factor and settings outside the method, over the seeds both groups have."""
    pairs = []
    for row in rows:
        head, _, name = row.preset.rpartition("/")
        if name not in DBM_BASELINES:
            continue
        base_preset = f"{head}/{DBM_BASELINES[name]}" if head else DBM_BASELINES[name]
        for base in rows:
            if (base.preset, base.imbalance_factor, base.setup) != (base_preset, row.imbalance_factor, row.setup):
                continue
            seeds = sorted(set(row.by_seed) & set(base.by_seed), key=str)
            if not seeds:
                continue
            diffs = {
                m: [
                    row.by_seed[s][m] - base.by_seed[s][m]
                    for s in seeds
                    if m in row.by_seed[s] and m in base.by_seed[s]
                ]
                for m in METRICS_REPORTED
            }
            pairs.append(PairedDifference(row, base, seeds, diffs))
    return pairs


def expand_run_dirs(paths: Sequence[str | Path]) -> list[Path]:
    """Run directories from the arguments: a run directory stays; a folder that is not a run
    stands for every run directory below it, at any depth (e.g. ``runs/``, holding a sweep's
    and the demo's folders of runs), in name order. A run named twice (itself and in a folder
    above it) counts once."""
    out: list[Path] = []
    for p in paths:
        path = Path(p)
        if path.is_dir() and not is_run_dir(path):
            found = _runs_below(path)
            if found:
                out.extend(found)
                continue
        out.append(path)
    seen: set[Path] = set()
    return [p for p in out if not (p.resolve() in seen or seen.add(p.resolve()))]


def _runs_below(folder: Path) -> list[Path]:
    runs = []
    for child in sorted(c for c in folder.iterdir() if c.is_dir()):
        runs.extend([child] if is_run_dir(child) else _runs_below(child))
    return runs


def _settings_signature(config: dict | None) -> tuple:
    if config is None:
        return ()
    flat = flatten_config(config)
    return tuple(
        sorted((k, json.dumps(v, sort_keys=True, default=str)) for k, v in flat.items() if k not in IGNORED_SETTINGS)
    )


def _setup(signature: tuple) -> tuple:
    return tuple((k, v) for k, v in signature if not k.startswith(_METHOD_KEYS))


def _by_seed(items: list) -> dict[Any, dict[str, float]]:
    seeds = [seed for *_, seed, _, _ in items]
    return {
        seed: {m: float(metrics[m]) for m in METRICS_REPORTED if metrics.get(m) is not None}
        for _, metrics, *_, seed, _, _ in items
        if seed is not None and seeds.count(seed) == 1
    }


def _format_value(value: str) -> str:
    parsed = json.loads(value)
    return parsed if isinstance(parsed, str) else json.dumps(parsed)


def summarize_runs(run_dirs: Sequence[str | Path], skipped: list[str] | None = None) -> list[ReportRow]:
    """Group runs (seeds of one recipe) and collect their metrics.

    A folder that is not a finished run (no ``metrics.json``, not a run at all) is an error
    naming it, or, when a ``skipped`` list is given, left out with one line appended there
    saying why; an error then only if no finished run remains."""
    if not run_dirs:
        raise ValueError("no run directories given")
    loaded = []
    for run in run_dirs:
        try:
            metrics = read_metrics(run)
        except RunError as err:
            if skipped is None:
                raise
            skipped.append(f"skipped {err}")
            continue
        config = read_run_config(run)
        preset = metrics.get("preset") or (config or {}).get("name") or Path(run).name
        imbalance = metrics.get("imbalance_factor")
        if imbalance is None and config:
            imbalance = (config.get("data") or {}).get("imbalance_factor")
        seed = ((config or {}).get("train") or {}).get("seed")
        every = ((config or {}).get("train") or {}).get("eval_every")
        loaded.append((str(run), metrics, preset, imbalance, seed, every, _settings_signature(config)))

    if not loaded:
        raise RunError("no finished run among the folders given (" + "; ".join(skipped or []) + ")")
    groups: dict[tuple, list] = {}
    for item in loaded:
        _, _, preset, imbalance, _, _, signature = item
        groups.setdefault((preset, imbalance, signature), []).append(item)

    # label each group by the settings that differ between groups of the same preset and IF
    by_preset: dict[tuple, list[tuple]] = {}
    for key in groups:
        by_preset.setdefault(key[:2], []).append(key[2])
    labels: dict[tuple, str] = {}
    for head, signatures in by_preset.items():
        dicts = [dict(s) for s in signatures]
        varying = sorted({k for d in dicts for k in d if len({dd.get(k) for dd in dicts}) > 1})
        for signature, d in zip(signatures, dicts):
            labels[(*head, signature)] = ", ".join(f"{k}={_format_value(d[k]) if k in d else '-'}" for k in varying)

    rows = []
    for key, items in groups.items():
        preset, imbalance, _ = key
        paper = next((m.get("paper") for _, m, *_ in items if m.get("paper")), None) or {}
        bests = [m.get("best_epoch") for _, m, *_ in items if isinstance(m.get("best_epoch"), dict)]
        rows.append(
            ReportRow(
                preset=str(preset),
                imbalance_factor=imbalance,
                settings=labels[key],
                runs=[run for run, *_ in items],
                seeds=[seed for *_, seed, _, _ in items],
                values={
                    m: [float(metrics[m]) for _, metrics, *_ in items if metrics.get(m) is not None]
                    for m in METRICS_REPORTED
                },
                paper={m: float(paper[m]) for m in METRICS_REPORTED if paper.get(m) is not None},
                paper_source=str(paper.get("source", "")),
                epochs=[metrics.get("epoch") for _, metrics, *_ in items],
                best={m: [float(b[m]) for b in bests if b.get(m) is not None] for m in METRICS_REPORTED},
                recipe_epochs=_recipe_epochs(str(preset)),
                limit=next((m.get("limit") for _, m, *_ in items if m.get("limit")), None),
                test_limit=next((m.get("test_limit") for _, m, *_ in items if m.get("test_limit")), None),
                eval_every=[every for *_, every, _ in items],
                setup=_setup(key[2]),
                by_seed=_by_seed(items),
            )
        )
    return rows


def _recipe_epochs(preset: str) -> int | None:
    """Epochs of the preset's own recipe (``None`` if ``preset`` is no shipped preset)."""
    from ..engine.config import ConfigError, load_config

    try:
        return load_config(preset).optim.epochs
    except ConfigError:
        return None


def _fmt(value: float | None, signed: bool = False) -> str:
    if value is None:
        return "-"
    return f"{value:+.2f}" if signed else f"{value:.2f}"


def _cell(row: ReportRow, metric: str, best: bool = False) -> str:
    mean, std = row.mean(metric, best), row.std(metric, best)
    if mean is None:
        return "-"
    return f"{mean:.2f} +- {std:.2f}" if std is not None else f"{mean:.2f}"


def _if_text(value) -> str:
    return "-" if value is None else f"{float(value):g}"


def _metric_columns(metric: str, with_best: bool) -> list[tuple[str, Callable[[ReportRow], str]]]:
    """``(title, cell of a row)`` of the markdown report's columns of one metric."""
    t, m = _TITLES[metric], metric
    columns = [(f"{t} ours (final epoch)", lambda r: _cell(r, m))]
    if with_best:
        columns.append((f"{t} best epoch*", lambda r: _cell(r, m, best=True)))
    columns.append((f"{t} paper", lambda r: _fmt(r.paper.get(m))))
    columns.append((f"{t} diff", lambda r: _fmt(r.diff(m), signed=True)))
    if with_best:
        columns.append((f"{t} diff best*", lambda r: _fmt(r.diff(m, best=True), signed=True)))
    return columns


def report_markdown(rows: Sequence[ReportRow], title: str = "") -> str:
    """One markdown table: per group, ours (mean +- std over seeds, final epoch), the paper's
    number and the difference for top-1 and Many / Medium / Few; where runs tracked their best
    test epoch, that too (marked ``*``: test-set selection) and its difference. Metric columns
    without a value in any row (CIFAR-10 has no Few classes; the paper gives Many / Medium /
    Few for CIFAR-100-LT IF 100 alone) are left out and named below the table; the CSV keeps
    every column."""
    with_settings = any(r.settings for r in rows)
    with_best = any(r.best.get("top1") for r in rows)
    header = ["preset", "IF"] + (["settings"] if with_settings else []) + ["n", "epochs"]
    table = []
    for r in rows:
        cells = [r.preset, _if_text(r.imbalance_factor)] + ([r.settings or "-"] if with_settings else [])
        table.append(cells + [str(r.n), r.epochs_text()])
    left_out = []  # columns without a value in any row; a metric with none at all by its name
    for metric in METRICS_REPORTED:
        columns, empty = _metric_columns(metric, with_best), []
        for name, cell in columns:
            values = [cell(r) for r in rows]
            if rows and all(v == "-" for v in values):
                empty.append(name)
                continue
            header.append(name)
            for cells, value in zip(table, values):
                cells.append(value)
        whole = len(empty) == len(columns)
        left_out += [f"{_TITLES[metric]} (every column)"] if whole else empty
    lines = []
    if title:
        lines += [f"# {title}", ""]
    lines += [
        "Accuracy (%) on the test set. Ours: final-epoch numbers, mean +- sample std over the "
        "n seeds of each recipe (no +- for a single run). Paper: the paper's number for the "
        "preset and imbalance factor (the original code reports the best test epoch); diff = "
        "ours - paper.",
    ]
    if with_best:
        every = sorted({e for r in rows if r.best.get("top1") for e in r.eval_every if e})
        lines += [
            "",
            "\\* Best test epoch: the highest top-1 among the epochs evaluated during training "
            f"(every `train.eval_every` epochs: here {' or '.join(map(str, every)) or '-'}), with its "
            "Many/Medium/Few. This is test-set model selection, as the original code reports; it "
            "flatters a method and is shown only for a like-for-like comparison with the paper.",
        ]
        if any(e > 1 for e in every):
            lines[-1] += (
                " The original code evaluates after every epoch; `dbm-ltr reproduce` does so on "
                "a GPU and keeps the presets' every 10 epochs on a CPU, where the best of fewer "
                "evaluations can only be lower or equal."
            )
    if any(r.short for r in rows):
        lines += [
            "",
            "Short runs (fewer epochs than the preset's recipe, part of the training split: "
            "data.limit, or part of the test split: data.test_limit) are marked in the epochs "
            "column; their numbers are not comparable with the paper's.",
        ]
    lines += [
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join(["---"] * len(header)) + "|",
    ]
    lines += ["| " + " | ".join(cells) + " |" for cells in table]
    if left_out:
        lines += ["", "Left out, without a value in any row: " + ", ".join(left_out) + "."]
    sources = sorted({r.paper_source for r in rows if r.paper_source})
    if sources:
        lines += ["", "Paper: " + "; ".join(sources)]
    for r in rows:
        known = [s for s in r.seeds if s is not None]
        if len(set(known)) < len(known):
            lines += [
                "",
                f"Note: {r.preset} (IF {_if_text(r.imbalance_factor)}) averages runs that "
                f"share a seed (seeds {', '.join(str(s) for s in r.seeds)}).",
            ]
    pairs = paired_differences(rows)
    if pairs:
        lines += ["", *paired_markdown(pairs)]
    return "\n".join(lines) + "\n"


def _label_of(row: ReportRow) -> str:
    return row.preset + (f" ({row.settings})" if row.settings else "")


def paired_markdown(pairs: Sequence[PairedDifference]) -> list[str]:
    """The lines of the report's section of DBM rows minus their baselines, seed by seed."""
    metrics = [m for m in METRICS_REPORTED if any(p.diffs.get(m) for p in pairs)]
    header = ["DBM row - baseline", "IF", "seeds", "top-1 per seed"]
    for m in metrics:
        header += [f"{_TITLES[m]} mean +- SE"] + (["top-1 95% CI"] if m == "top1" else []) + [f"{_TITLES[m]} paper"]
    table = []
    for p in pairs:
        cells = [f"{_label_of(p.row)} - {_label_of(p.base)}", _if_text(p.row.imbalance_factor)]
        cells += [", ".join(map(str, p.seeds)), ", ".join(f"{d:+.2f}" for d in p.diffs.get("top1", []))]
        for m in metrics:
            mean, se = p.mean(m), p.stderr(m)
            cells += ["-" if mean is None else f"{mean:+.2f}" + ("" if se is None else f" +- {se:.2f}")]
            if m == "top1":
                ci = p.interval(m)
                cells += ["-" if ci is None else f"{ci[0]:+.2f} to {ci[1]:+.2f}"]
            cells += [_fmt(p.paper(m), signed=True)]
        table.append(cells)
    return [
        "## DBM against its baseline, seed by seed",
        "",
        "Final-epoch accuracy of the DBM row minus that of the row it adds DBM to, for runs of the "
        "same seed, which see the same sample order and augmentation draws (and, for CE, CE-DRW, BS "
        "and their DBM rows, start from the same trunk). Mean +- standard error (sample std / sqrt(n)) over the n "
        "seeds both rows have (no +- for one seed); 95% CI: mean +- t * SE, Student's t with n - 1 degrees of "
        "freedom (12.71 for two seeds, 4.30 for three: a handful of seeds gives a wide interval); one that excludes 0 "
        "means a paired t-test finds the difference at the 5% level; paper: the paper's difference of the two rows.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join(["---"] * len(header)) + "|",
        *("| " + " | ".join(cells) + " |" for cells in table),
    ]


def compact_table(rows: Sequence[ReportRow], label: Callable[[ReportRow], str] = lambda r: r.preset) -> str:
    """Top-1 and Many / Medium / Few of each row, mean +- std over its seeds, as an aligned
    plain-text table (the demo's summary)."""
    width = max([6] + [len(label(r)) for r in rows])
    lines = [f"  {'method':{width}s} " + " ".join(f"{_TITLES[m]:>13s}" for m in METRICS_REPORTED)]
    for r in rows:
        cells = []
        for m in METRICS_REPORTED:
            mean, std = r.mean(m), r.std(m)
            cells.append(f"{'-':>13s}" if mean is None else f"{mean:>6.2f} +- {std or 0.0:4.2f}")
        lines.append(f"  {label(r):{width}s} " + " ".join(cells))
    return "\n".join(lines)


def report_csv(rows: Sequence[ReportRow], path: str | Path) -> Path:
    """The report as CSV: one line per group, ``<metric>_mean/_std/_paper/_diff`` columns."""
    path = Path(path)
    header = ["preset", "imbalance_factor", "settings", "n", "seeds", "epochs", "recipe_epochs", "runs"]
    for m in METRICS_REPORTED:
        header += [
            f"{m}_mean",
            f"{m}_std",
            f"{m}_paper",
            f"{m}_diff",
            f"{m}_best_mean",
            f"{m}_best_std",
            f"{m}_best_diff",
        ]
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for r in rows:
            line = [
                r.preset,
                "" if r.imbalance_factor is None else r.imbalance_factor,
                r.settings,
                r.n,
                ";".join(str(s) for s in r.seeds),
                ";".join(str(e) for e in r.epochs),
                "" if r.recipe_epochs is None else r.recipe_epochs,
                ";".join(r.runs),
            ]
            for m in METRICS_REPORTED:
                values = (
                    r.mean(m),
                    r.std(m),
                    r.paper.get(m),
                    r.diff(m),
                    r.mean(m, True),
                    r.std(m, True),
                    r.diff(m, True),
                )
                line += ["" if v is None else v for v in values]
            writer.writerow(line)
    return path


def write_report(rows: Sequence[ReportRow], out: str | Path, title: str = "") -> tuple[Path, Path]:
    """Write ``out`` (markdown) and the CSV next to it (same name, ``.csv``)."""
    out = Path(out)
    if out.suffix.lower() != ".md":
        raise RunError(f"--out {out}: the report is markdown; name it *.md (a .csv is written next to it)")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(report_markdown(rows, title))
    return out, report_csv(rows, out.with_suffix(".csv"))
