"""Bar chart of the equivariance benchmark: R² per transformation family (and the mean), one bar group per family,
with the controls a reading rests on: the reference model's bars (e.g. the same architecture untrained) and the
θ-shuffled chance level.

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

__all__ = ["equivariance_figure", "plot_equivariance"]


def plot_equivariance(
    results: EquivarianceResult | Mapping[str, EquivarianceResult],
    path: str | Path,
    *,
    title: str | None = None,
    chance: bool = True,
) -> Path:
    """Save a PNG of R² per family plus the mean (:func:`equivariance_figure`); parent directories are created."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    equivariance_figure(results, title=title, chance=chance).savefig(path)
    return path


def equivariance_figure(
    results: EquivarianceResult | Mapping[str, EquivarianceResult],
    *,
    title: str | None = None,
    chance: bool = True,
) -> Figure:
    """R² per family plus the mean; several results (e.g. models) become side-by-side bars.

    Args:
        results: one result, or ``{label: result}`` to compare models or feature kinds on the same families (the
            model first, then its reference).
        title: figure title (default: the feature kind and the R² convention).
        chance: add the first result's θ-shuffled control (``shuffled_r2``), where it was computed, as a grey bar
            series: a bar says something only where it clears it.
    """
    series = {results.feature: results} if isinstance(results, EquivarianceResult) else dict(results)
    if not series:
        raise ValueError("nothing to plot.")
    families: list[str] = []
    for result in series.values():
        families += [name for name in result.families if name not in families]
    columns = [*families, "mean"]
    values_of = {
        label: [result.r2.get(name, np.nan) for name in families] + [result.mean_r2]
        for label, result in series.items()
    }
    first = next(iter(series.values()))
    if chance and first.shuffled_r2:
        shuffled = [first.shuffled_r2.get(name, np.nan) for name in families]
        label = "θ-shuffled chance" + (f" ({next(iter(series))})" if len(series) > 1 else "")
        values_of[label] = [*shuffled, float(np.mean(shuffled))]
    colours = {label: "0.65" for label in list(values_of)[len(series) :]}  # the chance level in grey

    figure = Figure(figsize=(1.3 * len(columns) + 2.0, 3.6), dpi=150, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    width = 0.8 / len(values_of)
    positions = np.arange(len(columns))
    lowest = 0.0
    for i, (label, values) in enumerate(values_of.items()):
        lowest = min(lowest, np.nanmin(values))
        offsets = positions + (i - (len(values_of) - 1) / 2) * width
        bars = axes.bar(offsets, values, width, label=label, color=colours.get(label))
        axes.bar_label(bars, labels=[f"{v:.2f}" if np.isfinite(v) else "" for v in values], fontsize=7, padding=2)
    axes.set_xticks(positions, [f"R² {name}" if name != "mean" else "mean" for name in columns])
    axes.set_ylim(min(lowest - 0.05, -0.05) if lowest < 0 else 0.0, 1.08)
    axes.axhline(0.0, color="black", linewidth=0.8)
    axes.axhline(1.0, color="grey", linewidth=0.6, linestyle="--")
    axes.set_ylabel("R² (held-out images)")
    convention = first.multioutput
    axes.set_title(title or f"Equivariance benchmark ({convention} R²)", fontsize=10)
    if len(values_of) > 1:
        axes.legend(fontsize=8, loc="lower right")
    return figure
