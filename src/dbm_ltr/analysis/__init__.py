"""Plots and reports built from finished run directories: feature angles and Fisher
separability (``analyze``) and seed-averaged tables beside the paper (``report``). Nothing here
trains; :mod:`dbm_ltr.experiments` does.
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

__all__ = [
    "ReportRow",
    "RunAnalysis",
    "RunError",
    "RunFeatures",
    "analyze_features",
    "analyze_runs",
    "check_run_dir",
    "confusion_matrix",
    "extract_features",
    "load_run_method",
    "read_metrics",
    "report_csv",
    "report_markdown",
    "run_features",
    "run_labels",
    "summarize_runs",
    "write_analysis",
    "write_report",
]
