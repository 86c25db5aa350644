"""``evaluate`` metric modules shipped inside the package, for loading by path (offline, no Hub).

Loading a metric by its Hub name (``evaluate.load(<name>)``) fetches a script from the Hub and fails offline;
``evaluate.load(<directory>)`` with a local ``<name>/<name>.py`` does not. The scripts here are thin
``evaluate.Metric`` wrappers around :mod:`equirecon.evaluation.metrics` and
:mod:`equirecon.evaluation.segmentation_metrics`, so both routes give the same numbers.

Example:
    >>> from equirecon.evaluation.metric_modules import load_metric
    >>> metric = load_metric("mean_iou")          # == evaluate.load(metric_path("mean_iou"))
    >>> metric.compute(predictions=preds, references=labels, num_labels=150, ignore_index=255)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["METRIC_NAMES", "load_metric", "metric_path"]

#: The metric modules that ship with equirecon.
METRIC_NAMES: tuple[str, ...] = ("accuracy", "mean_iou", "r_squared")


def metric_path(name: str) -> str:
    """Absolute path of the directory of metric module ``name``, suitable for ``evaluate.load``."""
    if name not in METRIC_NAMES:
        raise ValueError(f"equirecon ships no metric module {name!r}; available: {', '.join(METRIC_NAMES)}.")
    path = Path(__file__).resolve().parent / name
    if not (path / f"{name}.py").is_file():
        raise FileNotFoundError(f"metric script {path / (name + '.py')} is missing from this installation.")
    return str(path)


def load_metric(name: str, **kwargs: Any) -> Any:
    """``evaluate.load`` of one of the shipped modules by path; ``kwargs`` go to ``evaluate.load``."""
    import evaluate

    return evaluate.load(metric_path(name), **kwargs)
