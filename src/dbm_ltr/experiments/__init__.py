"""Experiments that train: the Table 2 rows of a CIFAR data set (``reproduce``) and grids of
config values (``sweep``), each a set of run directories ending in a report, on this machine
or as Slurm jobs (``slurm``). What they report with (tables, plots of finished runs) lives in
:mod:`dbm_ltr.analysis`.

The names below are imported on first use: a Slurm job loads only :mod:`.slurm_job`.
"""

from dbm_ltr._lazy import lazy_exports

_EXPORTS = {
    "ROW_SETS": ".reproduce",
    "ReproRun": ".reproduce",
    "describe_plan": ".sweep",
    "parse_grid": ".sweep",
    "parse_rows": ".reproduce",
    "parse_seeds": ".reproduce",
    "plan_reproduction": ".reproduce",
    "plan_sweep": ".sweep",
    "run_reproduction": ".reproduce",
    "run_sweep": ".sweep",
    "summarize_sweep": ".sweep",
}

__all__, __getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
