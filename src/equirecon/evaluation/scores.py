"""Scoring θ regression from feature pairs: the model-free half of the equivariance benchmark, and its results.

:func:`score_feature_pairs` sees only features ``(N, D)`` of I and of g_θ(I) and the parameters ``(N, P)``, so it
scores features from anywhere; :mod:`.equivariance` makes those features from images.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .metrics import R2Convention, r2_score
from .regression import RegressorConfig, fit_mlp_regressor

__all__ = ["MULTIOUTPUT", "EquivarianceResult", "FamilyResult", "score_feature_pairs"]

#: The two R² conventions: SIE's one global mean over all outputs, or the mean of per-output R².
MULTIOUTPUT: tuple[str, ...] = ("global", "per_output")


@dataclass
class FamilyResult:
    """R² of regressing one family's θ from feature pairs.

    ``r2`` is the headline value under the run's convention; both conventions and the per-parameter values are
    kept so that a report can show either without rerunning.
    """

    family: str
    parameter_names: tuple[str, ...]
    r2: float
    r2_global: float
    r2_per_output: float
    per_parameter_r2: dict[str, float]
    train_r2: float
    num_train: int
    num_test: int
    transformation: dict[str, Any] | None = None
    shuffled_r2: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "family": self.family,
            "parameter_names": list(self.parameter_names),
            "r2": self.r2,
            "r2_global": self.r2_global,
            "r2_per_output": self.r2_per_output,
            "per_parameter_r2": dict(self.per_parameter_r2),
            "train_r2": self.train_r2,
            "num_train": self.num_train,
            "num_test": self.num_test,
            "transformation": self.transformation,
            "shuffled_r2": self.shuffled_r2,
        }


@dataclass
class EquivarianceResult:
    """Per-family R² of one model and feature kind, their mean, and how they were obtained."""

    families: dict[str, FamilyResult]
    feature: str
    multioutput: str = "global"
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def r2(self) -> dict[str, float]:
        """``{family: R²}`` under the run's convention."""
        return {name: result.r2 for name, result in self.families.items()}

    @property
    def shuffled_r2(self) -> dict[str, float]:
        """The θ-shuffled control per family (chance level), where it was computed."""
        return {name: r.shuffled_r2 for name, r in self.families.items() if r.shuffled_r2 is not None}

    @property
    def mean_r2(self) -> float:
        """Unweighted mean over families (the paper's "mean" column)."""
        return float(np.mean(list(self.r2.values()))) if self.families else float("nan")

    def to_dict(self) -> dict[str, Any]:
        return {
            "task": "equivariance",
            "feature": self.feature,
            "r2_convention": self.multioutput,
            "r2": self.r2,
            "mean_r2": self.mean_r2,
            "shuffled_r2": self.shuffled_r2,
            "families": {name: result.to_dict() for name, result in self.families.items()},
            "settings": self.settings,
        }

    def to_eval_results(self, dataset_name: str, dataset_type: str | None = None) -> list[dict[str, Any]]:
        """One entry per family and one for the mean, as keyword arguments of ``huggingface_hub.EvalResult``."""
        entries = [*((f"R² {name}", value) for name, value in self.r2.items()), ("R² mean", self.mean_r2)]
        return [
            {
                "task_type": "image-feature-extraction",
                "task_name": f"Equivariance (θ regression from {self.feature} features)",
                "dataset_type": dataset_type or dataset_name,
                "dataset_name": dataset_name,
                "metric_type": "r_squared",
                "metric_name": name,
                "metric_value": round(float(value), 4),
                "metric_config": self.multioutput,
            }
            for name, value in entries
        ]

    def table(self) -> str:
        """A Markdown table with one column per family and the mean, as in the paper."""
        names = list(self.families)
        header = "| feature | " + " | ".join(f"R² {name}" for name in names) + " | mean |"
        rule = "|---" * (len(names) + 2) + "|"
        row = f"| {self.feature} | " + " | ".join(f"{self.r2[n]:.3f}" for n in names) + f" | {self.mean_r2:.3f} |"
        return "\n".join([header, rule, row])


def score_feature_pairs(
    features: torch.Tensor,
    transformed_features: torch.Tensor,
    params: torch.Tensor | np.ndarray,
    *,
    num_train: int,
    family: str = "custom",
    parameter_names: Sequence[str] | None = None,
    regressor: RegressorConfig | None = None,
    multioutput: R2Convention = "global",
    seed: int = 0,
    device: torch.device | str | None = None,
    progress: bool = False,
    shuffled_control: bool = False,
) -> FamilyResult:
    """Fit the θ regressor on the first ``num_train`` feature pairs and score it on the rest.

    This is the model-free half of the benchmark: it only sees features ``(N, D)`` of I and of g_θ(I) and the
    parameters ``(N, P)``, so it can be used on features from anywhere. ``shuffled_control`` also fits a second
    regressor on the same pairs with θ permuted across them and scores it on the true held-out θ
    (``shuffled_r2``): the chance level, which the headline R² must clear to mean anything.
    """
    if multioutput not in MULTIOUTPUT:
        raise ValueError(f"multioutput must be one of {MULTIOUTPUT}, got {multioutput!r}.")
    params = torch.as_tensor(np.asarray(params) if not isinstance(params, torch.Tensor) else params).float()
    if params.ndim == 1:
        params = params[:, None]
    count = features.shape[0]
    if transformed_features.shape != features.shape or params.shape[0] != count:
        raise ValueError(
            f"features {tuple(features.shape)}, transformed features {tuple(transformed_features.shape)} and "
            f"params {tuple(params.shape)} must describe the same N samples."
        )
    if not 2 <= num_train <= count - 2:
        raise ValueError(f"num_train must leave at least 2 samples on each side, got {num_train} of {count}.")
    names = tuple(parameter_names) if parameter_names is not None else tuple(f"p{i}" for i in range(params.shape[1]))
    if len(names) != params.shape[1]:
        raise ValueError(f"{len(names)} parameter names for {params.shape[1]} parameters.")

    pairs = torch.cat([features, transformed_features], dim=1).float()
    model = fit_mlp_regressor(
        pairs[:num_train],
        params[:num_train],
        regressor,
        seed=seed,
        device=device,
        progress=progress,
        description=f"regressor ({family})",
    )
    predictions = model.predict(pairs[num_train:])
    targets = params[num_train:]
    scores = {
        convention: r2_score(y_true=targets, y_pred=predictions, multioutput=convention) for convention in MULTIOUTPUT
    }
    per_parameter = r2_score(y_true=targets, y_pred=predictions, multioutput="raw_values")
    train_r2 = r2_score(y_true=params[:num_train], y_pred=model.predict(pairs[:num_train]), multioutput=multioutput)
    shuffled_r2 = None
    if shuffled_control:
        permutation = torch.from_numpy(np.random.default_rng([seed, 3]).permutation(num_train))
        control = fit_mlp_regressor(
            pairs[:num_train], params[:num_train][permutation], regressor, seed=seed, device=device, progress=False
        )
        shuffled_r2 = float(
            r2_score(y_true=targets, y_pred=control.predict(pairs[num_train:]), multioutput=multioutput)
        )
    return FamilyResult(
        family=family,
        parameter_names=names,
        r2=float(scores[multioutput]),
        r2_global=float(scores["global"]),
        r2_per_output=float(scores["per_output"]),
        per_parameter_r2={name: float(value) for name, value in zip(names, per_parameter, strict=True)},
        train_r2=float(train_r2),
        num_train=num_train,
        num_test=count - num_train,
        shuffled_r2=shuffled_r2,
    )
