"""Scoring θ regression from feature pairs: the model-free half of the equivariance benchmark, and its results.

:func:`score_feature_pairs` sees only features ``(N, D)`` of I and of g_θ(I) and the parameters ``(N, P)``, so it
scores features from anywhere; :mod:`.equivariance` makes those features from images.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .metrics import R2Convention, r2_score
from .regression import MLPRegressor, RegressorConfig, fit_mlp_regressor

__all__ = ["MULTIOUTPUT", "EquivarianceResult", "FamilyResult", "group_folds", "score_feature_pairs"]

#: The two R² conventions: SIE's one global mean over all outputs, or the mean of per-output R².
MULTIOUTPUT: tuple[str, ...] = ("global", "per_output")


@dataclass
class FamilyResult:
    """R² of regressing one family's θ from feature pairs.

    ``r2`` is the headline value under the run's convention, over every scored pair; both conventions and the
    per-parameter values are kept so that a report can show either without rerunning. ``fold_r2`` is the same R²
    per cross-validation fold (the spread between photos), ``train_r2`` the mean R² of the fitted regressors on
    their own training pairs, and ``epochs`` the epoch each fold's regressor was kept at (early stopping).
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
    fold_r2: list[float] = field(default_factory=list)
    epochs: list[int] = field(default_factory=list)

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
            "fold_r2": list(self.fold_r2),
            "epochs": list(self.epochs),
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


def group_folds(groups: np.ndarray, folds: int, seed: int) -> list[np.ndarray]:
    """The distinct ``groups`` shuffled (seeded) and dealt into ``min(folds, number of groups)`` folds."""
    distinct = np.unique(groups)
    np.random.default_rng([seed, 4]).shuffle(distinct)
    return [distinct[index::folds] for index in range(min(folds, len(distinct)))]


def _as_params(params: torch.Tensor | np.ndarray) -> torch.Tensor:
    params = torch.as_tensor(np.asarray(params) if not isinstance(params, torch.Tensor) else params).float()
    return params[:, None] if params.ndim == 1 else params


def score_feature_pairs(
    features: torch.Tensor,
    transformed_features: torch.Tensor,
    params: torch.Tensor | np.ndarray,
    *,
    groups: Sequence[int] | np.ndarray | torch.Tensor | None = None,
    test_groups: Sequence[int] | None = None,
    folds: int = 5,
    scored_folds: int | None = None,
    family: str = "custom",
    parameter_names: Sequence[str] | None = None,
    regressor: RegressorConfig | None = None,
    multioutput: R2Convention = "global",
    seed: int = 0,
    device: torch.device | str | None = None,
    progress: bool = False,
    shuffled_control: bool = False,
) -> FamilyResult:
    """R² of θ predicted from feature pairs by regressors that never saw the pair's group (its photo).

    This is the model-free half of the benchmark: it only sees features ``(N, D)`` of I and of g_θ(I), the
    parameters ``(N, P)`` and, per pair, its ``groups`` id (the photo it was cut from; default: every pair its own
    group). Crops of one photo share content, so a regressor scored on crops of photos it was fitted on measures
    memory, not the features: every split here is by group.

    Cross-validation (default): the groups are dealt into ``folds`` folds; each fold is predicted by a regressor
    fitted on the others and early-stopped (``RegressorConfig.patience``) on the next fold, and R² is computed once
    over all pairs, so every photo counts; ``scored_folds`` scores only that many folds (a train/validation/test
    split at ``1/folds`` of the cost per fold). With ``test_groups``, one fixed split instead: the regressor is fitted
    on the other groups (early-stopped on a ``1/folds`` share of them) and scored on these.

    ``shuffled_control`` also fits every regressor on θ permuted across its training and validation pairs and scores
    it on the true θ (``shuffled_r2``): the chance level, which the headline R² must clear to mean anything.
    """
    if multioutput not in MULTIOUTPUT:
        raise ValueError(f"multioutput must be one of {MULTIOUTPUT}, got {multioutput!r}.")
    params = _as_params(params)
    count = features.shape[0]
    groups = np.arange(count) if groups is None else np.asarray(groups).reshape(-1)
    if transformed_features.shape != features.shape or params.shape[0] != count or groups.shape[0] != count:
        raise ValueError(
            f"features {tuple(features.shape)}, transformed features {tuple(transformed_features.shape)}, params "
            f"{tuple(params.shape)} and groups ({groups.shape[0]},) must describe the same N samples."
        )
    names = tuple(parameter_names) if parameter_names is not None else tuple(f"p{i}" for i in range(params.shape[1]))
    if len(names) != params.shape[1]:
        raise ValueError(f"{len(names)} parameter names for {params.shape[1]} parameters.")
    splits = _splits(groups, test_groups, folds, seed)
    if scored_folds is not None:
        if scored_folds < 1:
            raise ValueError(f"scored_folds must be at least 1, got {scored_folds}.")
        splits = splits[:scored_folds]

    pairs = torch.cat([features, transformed_features], dim=1).float()
    predictions = torch.zeros_like(params)
    control = torch.zeros_like(params) if shuffled_control else None
    scored = np.zeros(count, dtype=bool)
    fold_r2, train_r2, epochs, num_train = [], [], [], []
    for index, (train, validation, test) in enumerate(splits):
        description = f"regressor ({family}, fold {index + 1}/{len(splits)})"
        fit = functools.partial(
            _fit_split, pairs, train=train, validation=validation, config=regressor, seed=seed, device=device
        )
        model = fit(params, progress=progress, description=description)
        predictions[test] = model.predict(pairs[test])
        scored |= test
        fold_r2.append(
            float(r2_score(y_true=params[test], y_pred=predictions[test], multioutput=multioutput))
            if test.sum() >= 2
            else float("nan")  # a photo drawn once: it counts in the pooled R², not on its own
        )
        train_r2.append(
            float(r2_score(y_true=params[train], y_pred=model.predict(pairs[train]), multioutput=multioutput))
        )
        epochs.append(model.best_epoch)
        num_train.append(int(train.sum()))
        if control is not None:
            seen = np.flatnonzero(train | validation)
            permuted = params.clone()
            permuted[seen] = params[np.random.default_rng([seed, 3, index]).permutation(seen)]
            control[test] = fit(permuted).predict(pairs[test])

    targets, predicted = params[scored], predictions[scored]
    scores = {c: r2_score(y_true=targets, y_pred=predicted, multioutput=c) for c in MULTIOUTPUT}
    per_parameter = r2_score(y_true=targets, y_pred=predicted, multioutput="raw_values")
    shuffled_r2 = None
    if control is not None:
        shuffled_r2 = float(r2_score(y_true=targets, y_pred=control[scored], multioutput=multioutput))
    return FamilyResult(
        family=family,
        parameter_names=names,
        r2=float(scores[multioutput]),
        r2_global=float(scores["global"]),
        r2_per_output=float(scores["per_output"]),
        per_parameter_r2={name: float(value) for name, value in zip(names, per_parameter, strict=True)},
        train_r2=float(np.mean(train_r2)),
        num_train=round(float(np.mean(num_train))),
        num_test=int(scored.sum()),
        shuffled_r2=shuffled_r2,
        fold_r2=fold_r2,
        epochs=epochs,
    )


def _fit_split(
    pairs: torch.Tensor,
    targets: torch.Tensor,
    *,
    train: np.ndarray,
    validation: np.ndarray,
    config: RegressorConfig | None,
    seed: int,
    device: torch.device | str | None,
    progress: bool = False,
    description: str = "regressor",
) -> MLPRegressor:
    """A regressor fitted on the ``train`` pairs, early-stopped on the ``validation`` pairs where there are any."""
    return fit_mlp_regressor(
        pairs[train],
        targets[train],
        config,
        validation=(pairs[validation], targets[validation]) if validation.any() else None,
        seed=seed,
        device=device,
        progress=progress,
        description=description,
    )


def _splits(
    groups: np.ndarray, test_groups: Sequence[int] | None, folds: int, seed: int
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(train, validation, test) boolean masks over the pairs, one triple per fit; never two sets share a group."""
    if folds < 2:
        raise ValueError(f"folds must be at least 2, got {folds}.")
    if test_groups is not None:
        test = np.isin(groups, np.asarray(list(test_groups)))
        if not test.any() or test.all():
            raise ValueError("test_groups must hold some of the pairs' groups, and not all of them.")
        held = group_folds(groups[~test], folds, seed)
        validation = np.isin(groups, held[0]) & ~test if len(held) > 1 else np.zeros_like(test)
        return [(~test & ~validation, validation, test)]
    dealt = group_folds(groups, folds, seed)
    if len(dealt) < 3:
        raise ValueError(
            f"cross-validation by photo needs at least 3 photos (one to fit on, one to stop on, one to score), got "
            f"{len(dealt)}: pass more images, or give held-out images explicitly."
        )
    splits = []
    for index, fold in enumerate(dealt):
        test = np.isin(groups, fold)
        validation = np.isin(groups, dealt[(index + 1) % len(dealt)])
        splits.append((~test & ~validation, validation, test))
    return splits
