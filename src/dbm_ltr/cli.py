"""Command line: ``dbm-ltr train | presets | settings | eval | reproduce | demo | analyze |
report | sweep``.

Errors a user can fix (bad config, missing data set, unusable checkpoint) are printed as one
line and exit with status 2; set ``DBM_LTR_DEBUG=1`` to see the traceback instead.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import traceback
from pathlib import Path

from .errors import DbmLtrError

__all__ = ["main"]


def _add_set(parser: argparse.ArgumentParser, example: str = "optim.epochs=30 data.root=../data") -> None:
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        nargs="+",
        help=f"override config values, e.g. --set {example} "
        "(a bare key such as max_margin=0.2 works when it names one setting)",
    )


def _add_launcher(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "launcher", "where the runs train: processes on this machine, or one Slurm job each (docs/cluster.md)"
    )
    group.add_argument(
        "--launcher",
        choices=("local", "slurm"),
        default="local",
        help="local (default): processes on this machine; slurm: one job per run, through submitit",
    )
    group.add_argument(
        "--collect",
        action="store_true",
        help="with --launcher slurm: report the finished runs, submit and wait for nothing",
    )
    group.add_argument("--slurm-partition", default="", metavar="NAME", help="partition (default: the cluster's)")
    group.add_argument(
        "--slurm-time",
        default="1-00:00:00",
        metavar="TIME",
        help="time limit of a job, as sbatch --time (default 1-00:00:00); a job reaching it "
        "checkpoints and is requeued",
    )
    group.add_argument("--slurm-cpus", type=int, default=0, metavar="N", help="CPUs per task (default: the cluster's)")
    group.add_argument(
        "--slurm-mem", default="", metavar="MEM", help="memory per node, e.g. 16G (default: the cluster's)"
    )
    group.add_argument(
        "--slurm-gpus",
        type=int,
        default=0,
        metavar="N",
        help="GPUs per job; with several, one task each trains as a DDP process (default 0)",
    )
    group.add_argument(
        "--slurm-tasks",
        type=int,
        default=0,
        metavar="N",
        help="DDP processes per job (default: one per GPU, one without GPUs)",
    )
    group.add_argument("--slurm-account", default="", metavar="NAME", help="account to charge")
    group.add_argument("--slurm-qos", default="", metavar="NAME", help="quality of service")
    group.add_argument(
        "--slurm-extra",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="more sbatch options, e.g. constraint=a100 exclusive=",
    )
    group.add_argument(
        "--slurm-max-jobs",
        type=int,
        default=0,
        metavar="N",
        help="at most this many jobs of one job array running at a time (Slurm's array parallelism; "
        "GML teachers and their students are arrays of their own; default: no cap)",
    )
    group.add_argument("--slurm-poll", type=float, default=10.0, metavar="SECONDS", help=argparse.SUPPRESS)


def _slurm(args):
    """``SlurmOptions`` from the command line, checked (nothing is submitted yet); ``None`` with
    the local launcher, where a Slurm flag is a usage error rather than silently ignored."""
    from .experiments.slurm import SlurmOptions, check_slurm

    if args.launcher != "slurm":
        defaults = argparse.ArgumentParser(add_help=False)
        _add_launcher(defaults)
        given = [
            f"--{key.replace('_', '-')}"
            for key, value in vars(defaults.parse_args([])).items()
            if key.startswith("slurm_") and getattr(args, key) != value
        ]
        if args.collect:
            given.insert(0, "--collect")
        if given:
            raise _UsageError(f"{', '.join(given)}: Slurm options, for --launcher slurm (add it, or leave them out)")
        return None
    options = SlurmOptions(
        partition=args.slurm_partition,
        time=args.slurm_time,
        cpus=args.slurm_cpus,
        mem=args.slurm_mem,
        gpus=args.slurm_gpus,
        tasks=args.slurm_tasks,
        account=args.slurm_account,
        qos=args.slurm_qos,
        extra=args.slurm_extra,
        max_jobs=args.slurm_max_jobs,
        poll=args.slurm_poll,
    )
    check_slurm(options)
    return options


def _train_args(config: str, run_dir: Path, overrides: list[str]) -> list[str]:
    """``dbm-ltr train`` arguments of a job (paths absolute: a job may start elsewhere)."""
    from .serialization import trusted

    args = ["--config", config, "--out", str(run_dir.resolve()), "--set", *overrides, "train.progress=false"]
    return args + (["--trust-checkpoint"] if trusted() else [])


def _add_trust(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--trust-checkpoint",
        action="store_true",
        help="also load checkpoints the safe loader refuses (those of earlier dbm-ltr versions); a "
        "pickle can run code: only for files you made yourself (docs/runs.md, Security)",
    )


def _overrides(args) -> list[str]:
    return [item for group in args.overrides for item in group]


def _fisher_dims(text: str) -> int | str | None:
    """``--fisher-dims``: ``auto``, ``full`` (None: every dimension) or a positive int."""
    if text in ("auto", "full"):
        return None if text == "full" else text
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected auto, full or a positive number of dimensions, got {text!r}")
    return value


def cmd_train(args) -> int:
    from .analysis.runs import read_run_config
    from .engine import Trainer, load_config
    from .engine.rundir import CONFIG

    run = Path(args.out)
    source = args.config
    if source is None:
        if not args.resume:
            raise _UsageError("train needs --config FILE|PRESET (or --resume with an existing --out)")
        path = run / CONFIG
        if not path.is_file():
            raise _UsageError(f"--resume without --config needs {path}; it does not exist")
        source = read_run_config(run)  # settings it predates at the values it trained with
    config = load_config(source, _overrides(args))
    trainer = Trainer(config, run, resume=args.resume)
    try:
        trainer.fit()
    finally:
        if trainer.dist.enabled:
            from .engine.distributed import end_distributed

            end_distributed()  # main() then ends the process: exit_after_distributed
    if trainer.dist.is_main:
        print(f"run directory: {run}")
    return 0


def _output_file(out: Path) -> Path:
    """``out``, checked before any slow work: not a folder, and its folder made if missing."""
    if out.is_dir():
        raise _UsageError(f"--out {out} is a folder; name a file in it")
    out.parent.mkdir(parents=True, exist_ok=True)
    return out


def cmd_eval(args) -> int:
    from .engine.checkpoint import load_checkpoint, load_weights
    from .engine.evaluation import evaluate_checkpoint, format_groups
    from .engine.rundir import CHECKPOINT

    path = Path(args.checkpoint)
    if path.is_dir():  # a run directory
        path = path / CHECKPOINT
    exported = path.suffix == ".safetensors"  # exported weights: no pickle at all
    out = _output_file(Path(args.out) if args.out else path.with_name("eval.json"))
    state = load_weights(path) if exported else load_checkpoint(path)
    result, _ = evaluate_checkpoint(state, _overrides(args), source=str(path), run_dir=path.parent, progress=True)
    result["reported"] = f"{'exported weights' if exported else 'checkpoint'} after epoch {state['epoch']}"
    out.write_text(json.dumps(result, indent=2))
    print(format_groups(result))
    print(f"written: {out}")
    return 0


def cmd_export(args) -> int:
    from .engine.checkpoint import export_weights, load_checkpoint
    from .engine.rundir import CHECKPOINT

    source = Path(args.run)
    path = source / CHECKPOINT if source.is_dir() else source
    out = Path(args.out)
    if out.suffix != ".safetensors":
        raise _UsageError(f"--out {out}: name the file *.safetensors")
    _output_file(out)
    state = load_checkpoint(path)
    export_weights(state, out)
    print(
        f"written: {out} ({len(state['method'])} tensors, epoch {state['epoch']}, {state['config'].get('name')}); "
        f"evaluate it with: dbm-ltr eval --checkpoint {out}"
    )
    return 0


def cmd_analyze(args) -> int:
    from .analysis.analyze import (
        analyze_runs,
        angle_table,
        fisher_table,
        runs_table,
        write_analysis,
    )

    out = Path(args.out) if args.out else Path(args.runs[0]) / "analysis"
    results = analyze_runs(
        args.runs,
        _overrides(args),
        split=args.split,
        device=args.device,
        fisher_ridge=args.fisher_ridge,
        fisher_normalization=args.fisher_features,
        fisher_dims=args.fisher_dims,
        log=lambda m: print(m, file=sys.stderr),
    )
    options = {
        "split": args.split,
        "fisher_ridge": args.fisher_ridge,
        "fisher_normalization": args.fisher_features,
        "fisher_dims": args.fisher_dims,
        "overrides": _overrides(args),
    }
    files = write_analysis(results, out, options)
    print(runs_table(results), angle_table(results), fisher_table(results), sep="\n\n")
    print()
    for kind, path in files.items():
        if kind.split(":")[0].endswith("png"):
            print(f"plot: {path}")
    print(f"tables: {files['markdown']} (and .csv/.json beside it in {out})")
    return 0


def cmd_report(args) -> int:
    from .analysis.report import (
        expand_run_dirs,
        report_markdown,
        summarize_runs,
        write_report,
    )

    skipped: list[str] = []
    rows = summarize_runs(expand_run_dirs(args.runs), skipped)
    for line in skipped:
        print(f"dbm-ltr report: {line}", file=sys.stderr)
    print(report_markdown(rows), end="")
    if args.out:
        md, table = write_report(rows, args.out)
        print(f"\nwritten: {md}, {table}")
    return 0


def cmd_sweep(args) -> int:
    from .experiments.sweep import (
        check_sweep_data,
        describe_plan,
        load_finished,
        plan_sweep,
        run_sweep,
        summarize_sweep,
    )

    grid = [item for group in args.grid for item in group]
    slurm = _slurm(args)
    axes, points = plan_sweep(args.config, grid, _overrides(args), args.out)
    check_sweep_data(points)
    print(describe_plan(points, points[0].config.name if points else "", _overrides(args)), flush=True)
    if args.dry_run:
        print("dry run: nothing trained")
        return 0
    try:
        if slurm is None:
            run_sweep(points)
        else:
            _run_on_slurm(
                points,
                [
                    (
                        p.name,
                        p.run_dir,
                        _train_args(str(args.config), p.run_dir, p.overrides),
                        None,
                        p.config.optim.epochs,
                    )
                    for p in points
                ],
                slurm,
                Path(args.out),
                lambda line: print(line, flush=True),
                args.collect,
                600.0,
            )
            load_finished(points)
    except KeyboardInterrupt:
        if slurm is not None:
            print(_SLURM_INTERRUPTED.format("sweep"), file=sys.stderr)
            raise
        print("\nsweep interrupted; rerun the same command to resume (finished points are skipped)", file=sys.stderr)
        raise
    _print_summary(summarize_sweep(axes, points, args.out))
    failed = [p for p in points if not p.finished]
    if failed and not args.collect:
        print(
            f"{len(failed)} grid point(s) did not finish: " + "; ".join(f"{p.name} ({p.error})" for p in failed),
            file=sys.stderr,
        )
        return 1
    return 0


def _print_summary(summary: dict) -> None:
    """The report of a sweep or a reproduction, and the files written."""
    print()
    print(summary["markdown"], end="")
    for key in ("report", "csv", "plot"):
        if key in summary:
            print(f"{'plot' if key == 'plot' else 'written'}: {summary[key]}")


def cmd_reproduce(args) -> int:
    from .experiments.reproduce import (
        default_jobs,
        describe,
        parse_rows,
        parse_seeds,
        plan_reproduction,
        run_reproduction,
        summarize_reproduction,
    )

    rows = parse_rows(args.rows, args.data)
    seeds = parse_seeds(args.seeds)
    if args.jobs is not None and args.jobs < 1:
        raise _UsageError(f"--jobs must be >= 1, got {args.jobs}")
    if args.progress_every < 0:
        raise _UsageError(f"--progress-every must be >= 0 seconds (0: no progress lines), got {args.progress_every:g}")
    if args.launcher == "slurm" and args.jobs is not None:
        raise _UsageError("--jobs: how many runs train at once here; under Slurm, --slurm-max-jobs caps the jobs")
    slurm = _slurm(args)
    job_gpus = None if slurm is None else slurm.gpus
    runs = plan_reproduction(args.data, rows, seeds, args.out, _overrides(args), args.imbalance_factor, job_gpus)
    on_gpu = any(r.device == "cuda" for r in runs)  # as planned: train.device, or the jobs' GPUs
    jobs = 0 if slurm is not None else args.jobs or default_jobs("cuda" if on_gpu else "cpu")
    print(describe(runs, jobs), flush=True)
    if args.dry_run:
        print("dry run: nothing trained")
        return 0
    log = lambda line: print(line, flush=True)  # noqa: E731
    try:
        if slurm is None:
            run_reproduction(runs, jobs, log=log, progress_every=args.progress_every)
        else:
            _run_on_slurm(
                runs,
                [(r.name, r.run_dir, _train_args(r.preset, r.run_dir, r.overrides), r.after, r.epochs) for r in runs],
                slurm,
                Path(args.out),
                log,
                args.collect,
                args.progress_every,
            )
    except KeyboardInterrupt:
        if slurm is not None:
            print(_SLURM_INTERRUPTED.format("reproduce"), file=sys.stderr)
            raise
        print("\nreproduce interrupted; rerun the same command to resume (finished runs are skipped)", file=sys.stderr)
        raise
    title = f"Table 2 rows on {args.data}" + (f", IF {args.imbalance_factor:g}" if args.imbalance_factor else "")
    _print_summary(summarize_reproduction(runs, args.out, title))
    failed = [r for r in runs if not r.finished]
    if failed and not args.collect:
        print(
            f"{len(failed)} run(s) did not finish: {', '.join(r.name for r in failed)}; fix the cause "
            "and rerun the same command (finished runs are skipped)",
            file=sys.stderr,
        )
        return 1
    return 0


_SLURM_INTERRUPTED = "\n{} interrupted; the jobs go on: rerun the same command to wait for them, or add --collect"


def _run_on_slurm(runs: list, jobs: list, options, out: Path, log, collect: bool, progress_every: float) -> None:
    """``runs`` (reproduce's runs or sweep's points) as Slurm jobs, described by ``jobs``:
    ``(name, run_dir, train args, the run it waits for, epochs)`` each; a run whose job ended
    without finishing gets the last lines of its log as its ``error``."""
    from .experiments.slurm import JobSpec, run_on_slurm

    specs: dict = {}
    for name, run_dir, train_args, after, epochs in jobs:
        specs[run_dir] = JobSpec(
            name, Path(run_dir), train_args, after=specs.get(getattr(after, "run_dir", None)), epochs=epochs
        )
    run_on_slurm(list(specs.values()), options, (out / ".slurm").resolve(), log, collect, progress_every)
    for run in runs:
        run.error = specs[run.run_dir].error or run.error


def cmd_presets(args) -> int:
    import yaml

    root = PRESET_DIR  # not engine.config.preset_dir(): that module loads PyTorch, this command needs none
    rows = []
    for path in sorted(root.rglob("*.yaml")):
        name = str(path.relative_to(root).with_suffix(""))
        if args.filter not in name:
            continue
        text = path.read_text()
        about = next((line[2:].strip() for line in text.splitlines() if line.startswith("# ")), "")
        paper = (yaml.safe_load(text) or {}).get("paper") or {}
        top1 = paper.get("top1")
        if isinstance(top1, dict):
            numbers = "paper top-1 " + ", ".join(f"IF {float(k):g}: {v}" for k, v in top1.items())
        else:
            numbers = "no paper number" if top1 is None else f"paper top-1 {top1}"
        rows.append((name, numbers, about))
    if not rows:
        print(f"no preset matches {args.filter!r}", file=sys.stderr)
        return 1
    width_name = max(len(r[0]) for r in rows)
    width_numbers = max(len(r[1]) for r in rows)
    room = max(40, shutil.get_terminal_size((160, 24)).columns - width_name - width_numbers - 2)
    for name, numbers, about in rows:
        about = about if len(about) <= room else about[: room - 1].rstrip() + "…"
        print(f"{name:{width_name}s} {numbers:{width_numbers}s} {about}")
    return 0


def settings_page() -> str:
    """docs/settings.md: every setting of a run, then the launcher options of reproduce and sweep."""
    from .engine.settings_reference import settings_reference

    parser = argparse.ArgumentParser(add_help=False)
    _add_launcher(parser)
    lines = [
        "## Launcher options of `reproduce` and `sweep`",
        "",
        "Command-line options, not settings of a run: where the runs of a table or a grid train "
        "(see [Running on a cluster](cluster.md)).",
        "",
        "| option | default | meaning |",
        "|---|---|---|",
    ]
    for action in parser._actions:
        if action.help == argparse.SUPPRESS:
            continue
        option = " ".join(action.option_strings) + (f" {action.metavar}" if action.metavar else "")
        default = f"`{action.default}`" if action.default not in ("", 0, False, []) else ""
        meaning = action.help.replace("|", "\\|")
        lines.append(f"| `{option}` | {default} | {meaning} |")
    return settings_reference() + "\n" + "\n".join(lines) + "\n"


def cmd_settings(args) -> int:
    print(settings_page(), end="")
    return 0


DEMO_PRESETS = ("ce", "dbm_ce", "bs", "dbm_bs")


def cmd_demo(args) -> int:
    import shutil

    from .analysis.report import compact_table, summarize_runs
    from .engine import Trainer, load_config

    if args.seeds < 1 or args.epochs < 0:
        raise _UsageError(
            f"demo needs --seeds >= 1 and --epochs >= 0 (0: the presets'), got {args.seeds} and {args.epochs}"
        )
    out = Path(args.out)
    plan = [(preset, seed) for preset in DEMO_PRESETS for seed in range(args.seeds)]
    earlier = [out / f"{p}_seed{s}" for p, s in plan if (out / f"{p}_seed{s}").exists()]
    if earlier:
        print(f"replacing {len(earlier)} earlier demo run(s) in {out}")
    epochs = args.epochs or load_config(f"demo/{DEMO_PRESETS[0]}").optim.epochs
    print(
        f"training {', '.join(_label(p) for p in DEMO_PRESETS)} on long-tailed digits, {args.seeds} "
        f"seed(s) each: {len(plan)} runs of {epochs} epoch{'s' * (epochs != 1)} into {out}",
        flush=True,
    )
    for k, (preset, seed) in enumerate(plan, 1):
        overrides = [f"train.seed={seed}"] + ([f"optim.epochs={args.epochs}"] if args.epochs else [])
        run = out / f"{preset}_seed{seed}"
        if run.exists():
            shutil.rmtree(run)
        metrics = Trainer(load_config(f"demo/{preset}", overrides), run, log=lambda m: None).fit()
        print(
            f"  [{k}/{len(plan)}] {_label(preset):7s} seed {seed}: top-1 {metrics['top1']:.2f}% "
            f"({metrics['train_seconds']:.1f}s)",
            flush=True,
        )

    rows = summarize_runs([out / f"{p}_seed{s}" for p, s in plan])
    first = json.loads((out / f"{plan[0][0]}_seed{plan[0][1]}" / "metrics.json").read_text())
    print(
        f"\nLong-tailed digits (scikit-learn 8x8, IF {first['imbalance_factor']:g}, train counts "
        f"{first['cls_num_list']}),\nbalanced test set (50 a class). Final-epoch accuracy (%), "
        f"mean +- std over {args.seeds} seed(s):"
    )
    print(compact_table(rows, label=lambda row: _label(row.preset)))
    print(f"\nrun directories: {out}/<preset>_seed<k>/ (metrics.json, per_class_accuracy.png)")
    return 0


def _label(preset: str) -> str:
    """``demo/dbm_ce`` -> ``DBM-CE``."""
    return preset.split("/")[-1].upper().replace("_", "-")


class _UsageError(DbmLtrError):
    """A command line that cannot work (e.g. --resume without a run)."""


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="dbm-ltr",
        description="Difficulty-aware Balancing Margin loss for long-tailed recognition",
    )
    parser.add_argument("--version", action="version", version=f"dbm-ltr {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser(
        "train",
        help="train a config or preset into a run directory",
        description="Train a config file or preset into a run directory (config.yaml, checkpoints, "
        "log.jsonl, metrics.json). Presets: dbm-ltr presets (e.g. cifar10_lt/dbm_bs); every "
        "setting is a key of the config's sections data, model, method, loss, optim, train, "
        "changed with --set section.key=value (an unknown key is an error that lists the valid ones).",
        epilog="example: dbm-ltr train --config cifar10_lt/dbm_ce --out runs/c10_dbm_ce --set "
        "data.root=../shared/data optim.epochs=30",
    )
    p.add_argument("--config", help="YAML file or preset name (dbm-ltr presets lists them)")
    p.add_argument("--out", required=True, help="run directory (new, empty, or a run to --resume)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    _add_set(p)
    _add_trust(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser(
        "presets",
        help="list the presets with the paper's numbers",
        description="The shipped presets (usable as --config NAME), one line each: what they train "
        "and the paper's top-1 they are compared with.",
    )
    p.add_argument("filter", nargs="?", default="", help="show only presets whose name contains this")
    p.set_defaults(func=cmd_presets)

    p = sub.add_parser(
        "settings",
        help="every config setting with its default and meaning (markdown)",
        description="Print the reference of every setting: the sections' keys, and the parameters "
        "of each loss and method (the text of docs/settings.md).",
    )
    p.set_defaults(func=cmd_settings)

    p = sub.add_parser(
        "eval",
        help="evaluate a checkpoint on its test set",
        description="Rebuild the model of a run (its directory, a checkpoint, or weights from dbm-ltr "
        "export) from its own config and evaluate it on the test set of the data set it was trained on: "
        "top-1, Many / Medium / Few and per-class accuracy, printed and written to a JSON file. "
        "A data set whose classes are not the checkpoint's is refused.",
        epilog="example: dbm-ltr eval --checkpoint runs/c10_dbm_bs --set data.root=../shared/data",
    )
    p.add_argument(
        "--checkpoint",
        required=True,
        help="a run directory, a checkpoint file written by dbm-ltr train, or weights "
        "written by dbm-ltr export (FILE.safetensors)",
    )
    p.add_argument("--out", help="where to write the JSON result (default: eval.json beside it)")
    _add_set(p, example="data.root=../data data.eval_batch_size=512")
    _add_trust(p)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser(
        "export",
        help="a run's weights as safetensors (no pickle), to share or evaluate",
        description="Write a run's trained weights to FILE.safetensors, with what it takes to "
        "rebuild the model (its config and class counts) in the file's metadata. Loading it "
        "runs no code: dbm-ltr eval --checkpoint FILE.safetensors. Needs the safetensors "
        "package (pip install 'dbm-ltr[safetensors]').",
        epilog="example: dbm-ltr export runs/c10_dbm_bs --out c10_dbm_bs.safetensors",
    )
    p.add_argument("run", metavar="RUN", help="a run directory (or its checkpoint file)")
    p.add_argument("--out", required=True, metavar="FILE.safetensors", help="the file to write")
    _add_trust(p)
    p.set_defaults(func=cmd_export)

    p = sub.add_parser(
        "reproduce",
        help="the Table 2 rows of a CIFAR data set: one run per row and seed, then a report",
        description="Train the presets of the chosen Table 2 rows, one run directory per (row, "
        "seed) under --out, --jobs runs at a time as separate processes on the one device. "
        "Everything is validated first; finished runs are skipped and interrupted ones resumed "
        "when the command is repeated; a failing run is reported and the others go on. At the "
        "end: report.md / report.csv (ours beside the paper, best test epoch marked) and "
        "reproduce.png.",
        epilog="example: dbm-ltr reproduce --data cifar10_lt --imbalance-factor 100 --rows table2 "
        "--seeds 0 --out runs/table2 --set data.root=../shared/data",
    )
    p.add_argument("--data", required=True, help="cifar10_lt or cifar100_lt")
    p.add_argument(
        "--imbalance-factor", type=float, help="10, 50 or 100, those the paper reports (default: the presets' 100)"
    )
    p.add_argument(
        "--rows",
        default="table2",
        help="table2 (the eight single-model rows), all (adds BCL, DBM-BCL, GML, DBM-GML with their "
        "teacher, NCL, DBM-NCL) "
        "or a comma-separated list of preset names, e.g. ce,dbm_ce",
    )
    p.add_argument("--seeds", default="0", help="comma-separated seeds (default 0)")
    p.add_argument(
        "--jobs",
        type=int,
        help="runs at a time (default: 1 on the CPU; on a GPU as many as its free memory allows, at most 8)",
    )
    p.add_argument("--out", required=True, help="folder of the run directories and the report")
    p.add_argument("--dry-run", action="store_true", help="validate and print the planned runs, then stop")
    p.add_argument(
        "--progress-every",
        type=float,
        default=600.0,
        metavar="SECONDS",
        help="print each running run's epoch, pace and time left this often (default 600; 0: never)",
    )
    _add_set(p)
    _add_trust(p)
    _add_launcher(p)
    p.set_defaults(func=cmd_reproduce)

    p = sub.add_parser(
        "demo",
        help="offline demo: CE, DBM-CE, BS, DBM-BS on long-tailed digits (under a minute)",
        description="Train CE, DBM-CE, BS and DBM-BS on scikit-learn's 8x8 digits made long-tailed "
        "(imbalance factor 20), a few seeds each, offline, and print their final top-1 and Many / "
        "Medium / Few accuracy (mean +- std over the seeds). Needs scikit-learn.",
        epilog="example: dbm-ltr demo --seeds 1 --epochs 10",
    )
    p.add_argument(
        "--out",
        default="runs/demo",
        help="folder of the demo's run directories (default runs/demo; earlier demo runs there are replaced)",
    )
    p.add_argument("--epochs", type=int, default=0, help="override the presets' 30 epochs")
    p.add_argument("--seeds", type=int, default=3, help="seeds per method (default 3)")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser(
        "analyze",
        help="feature angles, Fisher separability, per-class accuracy and confusion plots of runs",
        description="Rebuild each run from its checkpoint, extract the pooled features of the "
        "test set and report, side by side: the angle between each feature and its true class's "
        "classifier weight per Many/Medium/Few group (mean and quartiles, violin plot; Fig. 4 of "
        "the paper), Fisher separability per class and group (Table 6), per-class "
        "accuracy against training count (log x) and a confusion matrix per run. Writes "
        "analysis.md, CSV and JSON tables and PNG plots to --out.",
        epilog="example: dbm-ltr analyze runs/ce runs/dbm_ce --out runs/compare --set data.root=../shared/data",
    )
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run directories (dbm-ltr train --out)")
    p.add_argument("--out", help="output folder (default: RUN_DIR/analysis of the first run)")
    p.add_argument(
        "--split",
        choices=("test", "train"),
        default="test",
        help="samples to analyse (train: the long-tailed training set, no augmentation)",
    )
    p.add_argument("--device", help="cpu, cuda, cuda:N (default: the run's train.device)")
    p.add_argument(
        "--fisher-ridge",
        type=float,
        default=1e-6,
        metavar="R",
        help="Fisher regulariser eps = R * trace(S_i + S_j) / D (default 1e-6)",
    )
    p.add_argument(
        "--fisher-features",
        choices=("raw", "l2"),
        default="raw",
        help="features for the Fisher criterion: raw (default) or L2-normalised",
    )
    p.add_argument(
        "--fisher-dims",
        type=_fisher_dims,
        default="auto",
        metavar="auto|full|N",
        help="feature dimensions for the Fisher criterion: auto (default: all of them "
        "where the pairwise solves are affordable and the two smallest classes have "
        "enough samples, as for CIFAR test sets; else the top principal components, e.g. "
        "34 for 1,000 classes of 2,048-d features), full, or N principal components",
    )
    _add_set(p, example="data.root=../data")
    _add_trust(p)
    p.set_defaults(func=cmd_analyze)

    p = sub.add_parser(
        "report",
        help="table of top-1 and Many/Medium/Few per preset (mean +- std over seeds) vs the paper",
        description="Read metrics.json of each run, group runs by preset, imbalance factor and "
        "settings (seeds of one recipe are averaged: mean +- sample std, n) and print one "
        "markdown table beside the paper's numbers and the difference. Our numbers are "
        "final-epoch accuracies. A folder holding run directories stands for all of them.",
        epilog="example: dbm-ltr report runs/ce_seed* runs/dbm_ce_seed* --out runs/report.md",
    )
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run directories (or folders of them)")
    p.add_argument("--out", metavar="FILE.md", help="also write the table here (and FILE.csv)")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser(
        "sweep",
        help="train one run per point of a grid of config values and report them together",
        description="Train the cartesian product of --grid values, one run directory per point "
        "(OUT/key=value,key=value), each exactly like dbm-ltr train. Every point is validated "
        "before anything trains; finished points are skipped and unfinished ones resumed when "
        "the sweep is rerun. At the end: a report of all points and, for a 2-key grid, a "
        "heat map of top-1 (Fig. 3 style).",
        epilog="example: dbm-ltr sweep --config cifar100_lt/dbm_bs --grid max_margin=0.1,0.2,0.3 "
        "tau=0.5,1,1.5 --out runs/sweep --dry-run",
    )
    p.add_argument("--config", required=True, help="YAML file or preset name")
    p.add_argument(
        "--grid",
        action="append",
        nargs="+",
        required=True,
        metavar="KEY=V1,V2",
        help="grid axes; keys as for --set (section.key or a bare key naming one setting)",
    )
    p.add_argument("--out", required=True, help="folder of the run directories")
    p.add_argument("--dry-run", action="store_true", help="print the planned runs and stop")
    _add_set(p)
    _add_trust(p)
    _add_launcher(p)
    p.set_defaults(func=cmd_sweep)
    return parser


#: Commands that need no PyTorch (they start at once).
LIGHT_COMMANDS = ("presets",)
#: The shipped presets (the same folder as ``dbm_ltr.engine.config.preset_dir()``).
PRESET_DIR = Path(__file__).resolve().parent / "configs"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)  # before any heavy import: --help and usage errors are instant
    if args.command not in LIGHT_COMMANDS:
        try:
            import torchvision  # noqa: F401 - a torch / torchvision pair that does not fit fails here
        except (RuntimeError, ImportError, OSError) as err:
            problem = torch_install_problem(err)
            if problem is None:
                raise
            print(f"dbm-ltr {args.command}: error: {problem}", file=sys.stderr)
            return 2
    trust = contextlib.nullcontext()
    if getattr(args, "trust_checkpoint", False):  # for this command only
        from .serialization import trusting_checkpoints

        trust = trusting_checkpoints()
    try:
        with trust:
            code = _dispatch(args)
    except Exception:  # a bug, or any failure under DBM_LTR_DEBUG: its traceback
        if not _left_process_group():
            raise
        traceback.print_exc()  # then the ending below: the interpreter's teardown could abort
        code = 1
    if _left_process_group():  # a torchrun worker that left its process group ends here
        sys.modules["dbm_ltr.engine.distributed"].exit_after_distributed(code)
    return code


def _left_process_group() -> bool:
    distributed = sys.modules.get("dbm_ltr.engine.distributed")  # imported by the commands that join one
    return distributed is not None and distributed.left_process_group()


def _dispatch(args) -> int:
    """Run the command; a known failure is one line and an exit code."""
    from .engine.signals import Interrupted

    try:
        return args.func(args)
    except DbmLtrError as err:  # anything else is a bug: its traceback is shown
        if os.environ.get("DBM_LTR_DEBUG"):
            raise
        print(f"dbm-ltr {args.command}: error: {err}", file=sys.stderr)
        return 2
    except Interrupted as stop:
        print(f"\ndbm-ltr {args.command}: {stop}", file=sys.stderr)
        return stop.exit_code
    except KeyboardInterrupt:
        print(f"\ndbm-ltr {args.command}: interrupted{_resume_hint(args)}", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the output went to a pipe that closed (| head): stop quietly
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - the interpreter flushes it at exit
        return 0
    except OSError as err:  # a path the user gave (a missing folder, a folder for a file, no permission)
        if err.filename is None or os.environ.get("DBM_LTR_DEBUG"):
            raise
        print(f"dbm-ltr {args.command}: error: {err.filename}: {err.strerror or err}", file=sys.stderr)
        return 2


def torch_install_problem(err: BaseException) -> str | None:
    """One line for a torchvision that does not fit the installed torch (``operator
    torchvision::nms does not exist``: another torch version, or a CUDA build beside a CPU one),
    with the command that installs a matching one; ``None`` for any other error."""
    from importlib.metadata import PackageNotFoundError, version

    text = str(err)
    if "torchvision" not in text:
        return None
    try:
        torch_version, vision_version = version("torch"), version("torchvision")
    except PackageNotFoundError:
        return None
    release, _, build = torch_version.partition("+")
    major, minor = (int(x) for x in release.split(".")[:2])
    wanted = f"0.{minor + 15}.*" if major == 2 else "the release that matches it"
    index = f" --index-url https://download.pytorch.org/whl/{build}" if build else ""
    return (
        f"torchvision {vision_version} does not fit torch {torch_version} ({text.splitlines()[0][:120]}); install "
        f"torchvision from the same build and index as torch: pip install --force-reinstall --no-deps "
        f"'torchvision=={wanted}'{index}"
    )


def _resume_hint(args) -> str:
    """How to go on after an interruption outside the training loop."""
    if args.command != "train":
        return ""
    from .engine.rundir import has_checkpoint

    out = Path(args.out)
    if has_checkpoint(out):
        return f"; continue with: dbm-ltr train --out {out} --resume"
    return f"; nothing was saved yet, start again with: dbm-ltr train --config {args.config or 'CONFIG'} --out {out}"


if __name__ == "__main__":
    sys.exit(main())
