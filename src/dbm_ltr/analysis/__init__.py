"""Plots and reports built from run directories: feature angles and Fisher separability
(``analyze``), seed-averaged tables beside the paper (``report``) and grids of runs (``sweep``).
"""

from .analyze import (
    RunAnalysis,
    analyze_features,
    analyze_runs,
    confusion_matrix,
    write_analysis,
)
from .features import RunFeatures, extract_features, load_run_method, run_features
from .report import ReportRow, report_csv, report_markdown, summarize_runs, write_report
from .runs import RunError, check_run_dir, read_metrics, run_labels
from .sweep import describe_plan, parse_grid, plan_sweep, run_sweep, summarize_sweep

__all__ = [
    "ReportRow",
    "RunAnalysis",
    "RunError",
    "RunFeatures",
    "analyze_features",
    "analyze_runs",
    "check_run_dir",
    "confusion_matrix",
    "describe_plan",
    "extract_features",
    "load_run_method",
    "parse_grid",
    "plan_sweep",
    "read_metrics",
    "report_csv",
    "report_markdown",
    "run_features",
    "run_labels",
    "run_sweep",
    "summarize_runs",
    "summarize_sweep",
    "write_analysis",
    "write_report",
]
