"""Experiments that train: the Table 2 rows of a CIFAR data set (``reproduce``) and grids of
config values (``sweep``), each a set of run directories ending in a report. What they
report with (tables, plots of finished runs) lives in :mod:`dbm_ltr.analysis`."""

from .reproduce import ROW_SETS, ReproRun, parse_rows, parse_seeds, plan_reproduction, run_reproduction
from .sweep import describe_plan, parse_grid, plan_sweep, run_sweep, summarize_sweep

__all__ = [
    "ROW_SETS",
    "ReproRun",
    "describe_plan",
    "parse_grid",
    "parse_rows",
    "parse_seeds",
    "plan_reproduction",
    "plan_sweep",
    "run_reproduction",
    "run_sweep",
    "summarize_sweep",
]
