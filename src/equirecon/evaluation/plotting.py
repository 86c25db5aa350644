"""Bar chart of the equivariance benchmark: R² per transformation family (and the mean), one bar group per family.

Uses matplotlib's Agg backend through an explicit ``Figure`` (no ``pyplot`` state), so it works headless, in
threads, and never changes the backend of the caller's interactive session.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .equivariance import EquivarianceResult

__all__ = ["plot_equivariance"]


def plot_equivariance(
    results: EquivarianceResult | Mapping[str, EquivarianceResult],
    path: str | Path,
    *,
    title: str | None = None,
) -> Path:
    """Save a PNG of R² per family plus the mean; several results (e.g. models) become side-by-side bars.

    Args:
        results: one result, or ``{label: result}`` to compare models or feature kinds on the same families.
        path: where to write the PNG (parent directories are created).
        title: figure title (default: the feature kind and the R² convention).
    """
    series = {results.feature: results} if isinstance(results, EquivarianceResult) else dict(results)
    if not series:
        raise ValueError("nothing to plot.")
    families: list[str] = []
    for result in series.values():
        families += [name for name in result.families if name not in families]
    columns = [*families, "mean"]

    figure = Figure(figsize=(1.3 * len(columns) + 2.0, 3.6), dpi=150, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    width = 0.8 / len(series)
    positions = np.arange(len(columns))
    lowest = 0.0
    for i, (label, result) in enumerate(series.items()):
        values = [result.r2.get(name, np.nan) for name in families] + [result.mean_r2]
        lowest = min(lowest, np.nanmin(values))
        bars = axes.bar(positions + (i - (len(series) - 1) / 2) * width, values, width, label=label)
        axes.bar_label(bars, labels=[f"{v:.2f}" if np.isfinite(v) else "" for v in values], fontsize=7, padding=2)
    axes.set_xticks(positions, [f"R² {name}" if name != "mean" else "mean" for name in columns])
    axes.set_ylim(min(lowest - 0.05, -0.05) if lowest < 0 else 0.0, 1.08)
    axes.axhline(0.0, color="black", linewidth=0.8)
    axes.axhline(1.0, color="grey", linewidth=0.6, linestyle="--")
    axes.set_ylabel("R² (held-out images)")
    convention = next(iter(series.values())).multioutput
    axes.set_title(title or f"Equivariance benchmark ({convention} R²)", fontsize=10)
    if len(series) > 1:
        axes.legend(fontsize=8, loc="lower right")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    return path
