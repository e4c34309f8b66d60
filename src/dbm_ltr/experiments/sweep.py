"""``dbm-ltr sweep``: one training run per point of a grid of config values (Fig. 3).

``--grid max_margin=0.1,0.2,0.3 tau=0.5,1,1.5`` gives the cartesian product (9 points), each
trained by the engine exactly like ``dbm-ltr train --config C --set ... max_margin=0.1
tau=0.5`` into ``OUT/max_margin=0.1,tau=0.5``. Keys use the ``--set`` syntax (``section.key``
or a bare key that names one setting); values are YAML, separated by commas (commas inside
``[...]`` or ``{...}`` or quotes stay part of a value).

Every point's config is built and validated (keys, types, ranges, and that the method and
loss can be constructed) before anything trains. A point whose ``metrics.json`` exists is
skipped, one with a checkpoint is resumed; an existing run directory trained with other
settings is an error, not silently reused.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ..analysis.plots import plot_sweep
from ..analysis.report import report_markdown, summarize_runs, write_report
from ..analysis.runs import read_metrics, read_run_config
from ..data import DATASET_INFO, long_tail_counts
from ..engine import CheckpointError, Trainer, TrainingError
from ..engine.build import build_dataset, build_method
from ..engine.config import ConfigError, flatten_config, load_config, resolve_override_key
from ..engine.rundir import LOG, METRICS, config_differences, has_checkpoint

__all__ = [
    "GridAxis",
    "SweepPoint",
    "describe_plan",
    "parse_grid",
    "plan_sweep",
    "run_sweep",
    "summarize_sweep",
]

SEED_KEY = "train.seed"
# differences between a planned point and an existing run that do not matter (as for resume)


@dataclass
class GridAxis:
    key: str  # as written on the command line
    path: str  # resolved dotted key, e.g. loss.max_margin
    raw: list[str]  # values as written
    values: list[Any]  # values parsed as YAML


@dataclass
class SweepPoint:
    name: str  # directory name
    run_dir: Path
    raw: tuple[str, ...]  # one written value per axis
    overrides: list[str]  # --set overrides followed by this point's key=value
    resolved: dict[str, Any]  # dotted key -> value of this point
    config: Any  # dbm_ltr.engine.Config
    status: str = "new"  # new | resume | done
    detail: str = ""
    metrics: dict | None = None
    error: str = ""

    @property
    def finished(self) -> bool:
        return self.metrics is not None


def _split_values(text: str) -> list[str]:
    """Split on commas outside brackets, braces and quotes."""
    parts, depth, quote, current = [], 0, "", []
    for ch in text:
        if quote:
            if ch == quote:
                quote = ""
        elif ch in "\"'":
            quote = ch
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append("".join(current).strip())
            current = []
            continue
        current.append(ch)
    parts.append("".join(current).strip())
    return parts


def parse_grid(items: Sequence[str]) -> list[tuple[str, list[str], list[Any]]]:
    """``["max_margin=0.1,0.2", "tau=1"]`` -> ``[(key, raw values, parsed values), ...]``."""
    if not items:
        raise ConfigError("--grid needs at least one KEY=V1,V2,... item")
    out = []
    seen = set()
    for item in items:
        if "=" not in item:
            raise ConfigError(f"grid item {item!r} must look like key=v1,v2,..., e.g. max_margin=0.1,0.2")
        key, text = item.split("=", 1)
        key = key.strip()
        if not key:
            raise ConfigError(f"grid item {item!r} has no key")
        if key in seen:
            raise ConfigError(f"grid key {key!r} is given twice")
        seen.add(key)
        raw = _split_values(text)
        if any(r == "" for r in raw):
            raise ConfigError(f"grid item {item!r} has an empty value")
        if len(set(raw)) != len(raw):
            raise ConfigError(f"grid item {item!r} repeats a value")
        values = []
        for r in raw:
            try:
                values.append(yaml.safe_load(r))
            except yaml.YAMLError:
                values.append(r)
        out.append((key, raw, values))
    return out


def _safe_part(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._+-]+", "_", text).strip("_") or "_"


def point_name(pairs: Sequence[tuple[str, str]]) -> str:
    """Directory name of a grid point: ``key=value`` joined by commas, other characters that
    are unsafe in file names replaced by ``_`` (long names are shortened with a hash)."""
    name = ",".join(f"{_safe_part(k)}={_safe_part(v)}" for k, v in pairs)
    if len(name) > 150:
        digest = hashlib.sha1(name.encode()).hexdigest()[:10]
        name = f"{name[:130]}-{digest}"
    return name


def _dummy_counts(num_classes: int, imbalance_factor: float) -> list[int]:

    return long_tail_counts(int(max(1000, 10 * imbalance_factor)), num_classes, imbalance_factor)


def check_buildable(config, where: str) -> None:
    """Construct the method and loss (with a long-tail profile of the config's imbalance
    factor in place of the real counts) so value errors show before training starts."""

    info = DATASET_INFO[config.data.name]  # the name was checked with the config
    c = info["num_classes"] or info.get("expected_num_classes", 1000)  # None: the split file defines it
    try:
        build_method(config, _dummy_counts(c, config.data.imbalance_factor), c)
    except (ValueError, TypeError) as err:
        raise ConfigError(f"{where}: {err}") from None


def check_data(config, checked: set | None = None) -> None:
    """Load both splits of the config's data set (without transforms) so that a missing or
    damaged data set is an error before anything trains; ``checked`` skips what already loaded."""
    d = config.data
    key = (d.name, d.root, d.imbalance_factor, d.seed, d.split_dir)
    if checked is not None and key in checked:
        return
    build_dataset(config, True)
    build_dataset(config, False)
    if checked is not None:
        checked.add(key)


def compare_existing(run_dir: Path, config) -> None:
    """Raise ``ConfigError`` if ``run_dir`` holds a run trained with other settings than
    ``config`` (beyond those a resumed run may change)."""
    saved = read_run_config(run_dir)
    if saved is None:
        return
    diff = config_differences(saved, config.to_dict())
    if diff:
        shown = "; ".join(f"{k}: existing {a!r}, planned {b!r}" for k, a, b in diff[:3])
        raise ConfigError(
            f"{run_dir} holds a run with other settings ({shown}); choose another --out or remove that directory"
        )


def _last_logged_epoch(run_dir: Path) -> int | None:
    try:
        lines = (run_dir / LOG).read_text().strip().splitlines()
        return int(json.loads(lines[-1])["epoch"]) if lines else None
    except (OSError, ValueError, KeyError, IndexError):
        return None


def plan_sweep(
    config_source: str | Path,
    grid: Sequence[str],
    overrides: Sequence[str],
    out_dir: str | Path,
) -> tuple[list[GridAxis], list[SweepPoint]]:
    """Parse and validate the grid; one validated :class:`SweepPoint` per grid point.

    Raises:
        ConfigError: a bad key or value anywhere in the grid (nothing has been trained), two
            points that would share a directory, or an existing run with other settings.
    """

    base = load_config(config_source, list(overrides))  # the base itself must be valid
    base_values = base.to_dict()
    parsed = parse_grid(grid)
    axes = []
    paths = {}
    for key, raw, values in parsed:
        try:
            path = ".".join(_resolve_path_keys(base_values, key))
        except ConfigError as err:
            raise ConfigError(f"grid key {key!r}: {err}") from None
        if path in paths:
            raise ConfigError(f"grid keys {paths[path]!r} and {key!r} both set {path}")
        paths[path] = key
        axes.append(GridAxis(key=key, path=path, raw=raw, values=values))

    out = Path(out_dir)
    points: list[SweepPoint] = []
    names: dict[str, str] = {}
    for combo in itertools.product(*[range(len(a.raw)) for a in axes]):
        pairs = [(a.key, a.raw[i]) for a, i in zip(axes, combo)]
        written = ",".join(f"{k}={v}" for k, v in pairs)
        point_overrides = list(overrides) + [f"{k}={v}" for k, v in pairs]
        try:
            config = load_config(config_source, point_overrides)
        except ConfigError as err:
            raise ConfigError(f"grid point {written}: {err}") from None
        check_buildable(config, f"grid point {written}")
        name = point_name(pairs)
        if name in names:
            raise ConfigError(f"grid points {names[name]} and {written} map to the same directory {name!r}")
        names[name] = written
        flat = flatten_config(config.to_dict())
        point = SweepPoint(
            name=name,
            run_dir=out / name,
            raw=tuple(v for _, v in pairs),
            overrides=point_overrides,
            resolved={a.path: flat.get(a.path) for a in axes},
            config=config,
        )
        if point.run_dir.exists():
            compare_existing(point.run_dir, point.config)
            if (point.run_dir / METRICS).is_file():
                point.status = "done"
                point.detail = "finished, skipped"
            elif has_checkpoint(point.run_dir):
                point.status = "resume"
                epoch = _last_logged_epoch(point.run_dir)
                point.detail = f"resume after epoch {epoch}" if epoch else "resume"
        points.append(point)
    return axes, points


def check_sweep_data(points: Sequence[SweepPoint]) -> None:
    """Load the data of every point that will train (``sweep`` does, dry run or not), so a
    missing or damaged data set is one error before anything trains."""
    checked: set = set()
    for point in points:
        if point.status != "done":
            check_data(point.config, checked)


def _resolve_path_keys(base_values: dict, key: str) -> list[str]:
    """The dotted path a (possibly bare) override key names, resolved as ``--set`` does."""

    return resolve_override_key(base_values, key)


def describe_plan(points: Sequence[SweepPoint], config_name: str = "", overrides: Sequence[str] = ()) -> str:
    """The planned runs, one line each: directory, status, the point's resolved settings
    (after the common ``overrides``, listed first)."""
    lines = [
        f"{len(points)} grid points"
        + (f" of {config_name}" if config_name else "")
        + (f", on top of: {' '.join(overrides)}" if overrides else "")
        + ":"
    ]
    for k, p in enumerate(points, 1):
        settings = " ".join(f"{key}={json.dumps(v) if not isinstance(v, str) else v}" for key, v in p.resolved.items())
        status = p.detail or "train"
        lines.append(f"  [{k}/{len(points)}] {p.run_dir}  ({status})  {settings}")
    return "\n".join(lines)


def run_sweep(points: Sequence[SweepPoint], log: Callable[[str], None] = print) -> list[SweepPoint]:
    """Train every unfinished point through :class:`~dbm_ltr.engine.Trainer` (resuming where a
    checkpoint exists). A point whose training fails (``TrainingError``, or a checkpoint it
    cannot resume from) is recorded and the sweep goes on; ``metrics`` of finished points are
    filled in."""

    for k, p in enumerate(points, 1):
        head = f"[{k}/{len(points)}] {p.name}"
        if p.status == "done":
            log(f"{head}: finished earlier, skipped")
            p.metrics = read_metrics(p.run_dir)
            continue
        log(f"{head}: " + ("resuming" if p.status == "resume" else "training") + f" into {p.run_dir}")
        try:
            p.metrics = Trainer(p.config, p.run_dir, resume=p.status == "resume", log=log).fit()
            p.status = "done"
        except (TrainingError, CheckpointError) as err:  # this point only: the others go on
            p.error = str(err)
            log(f"{head}: failed: {err}")
    return points


def load_finished(points: Sequence[SweepPoint]) -> None:
    """Fill in ``metrics`` of the points whose run has finished elsewhere (as Slurm jobs)."""
    for p in points:
        if (p.run_dir / METRICS).is_file():
            p.metrics, p.status = read_metrics(p.run_dir), "done"


def summarize_sweep(
    axes: Sequence[GridAxis], points: Sequence[SweepPoint], out_dir: str | Path
) -> dict[str, Path | str]:
    """Report of the finished points (markdown + CSV in ``out_dir``) and, for one or two grid
    keys besides ``train.seed``, a plot of top-1 (heat map for two keys, Fig. 3 style; with a
    ``train.seed`` axis each cell is the mean of its seeds, n/a until all have finished).
    Returns ``{"markdown": text, "report": path, "csv": path, "plot": path}`` (what exists)."""

    out = Path(out_dir)
    done = [p for p in points if p.finished]
    result: dict[str, Path | str] = {}
    if not done:
        result["markdown"] = "no finished grid points\n"
        return result
    rows = summarize_runs([p.run_dir for p in done])
    title = f"Sweep of {done[0].config.name or 'config'} over " + ", ".join(a.path for a in axes)
    result["report"], result["csv"] = write_report(rows, out / "sweep_report.md", title=title)
    result["markdown"] = report_markdown(rows, title)

    plotted = [i for i, a in enumerate(axes) if a.path != SEED_KEY]
    if 1 <= len(plotted) <= 2:
        cells: dict[tuple, list[float]] = {}
        for p in done:
            if p.metrics.get("top1") is not None:
                cells.setdefault(tuple(p.raw[i] for i in plotted), []).append(float(p.metrics["top1"]))
        seeds = next((len(a.raw) for a in axes if a.path == SEED_KEY), 1)
        # a cell whose seeds have not all finished is left out (n/a), not averaged over fewer
        top1 = {k: sum(v) / len(v) if len(v) == seeds else None for k, v in cells.items()}
        result["plot"] = plot_sweep(
            [axes[i].path for i in plotted],
            [axes[i].raw for i in plotted],
            top1,
            out / "sweep_top1.png",
            title=f"{done[0].config.name or 'sweep'}: top-1 (%), final epoch"
            + (f", mean over {seeds} seeds" if seeds > 1 else ""),
        )
    return result
