"""Scoring θ regression from feature pairs: the model-free half of the equivariance benchmark, and its results.

:func:`score_feature_pairs` sees only features ``(N, D)`` of I and of g_θ(I) and the parameters ``(N, P)``, so it
scores features from anywhere; :mod:`.equivariance` makes those features from images.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .metrics import R2Convention, r2_score
from .regression import RegressorConfig, epoch_seconds, fit_mlp_regressors

__all__ = [
    "MULTIOUTPUT",
    "EquivarianceResult",
    "FamilyResult",
    "RegressionCost",
    "group_folds",
    "regression_cost",
    "score_families",
    "score_feature_pairs",
]

#: The two R² conventions: SIE's one global mean over all outputs, or the mean of per-output R².
MULTIOUTPUT: tuple[str, ...] = ("global", "per_output")
#: The epoch at which a family's θ regressor is usually best (default settings, the tiny preset on the embedded
#: photos), for the time estimate only.
TYPICAL_BEST_EPOCH = 40


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


@dataclass
class RegressionCost:
    """The fits :func:`score_families` runs for a benchmark, and what they cost on this machine (an estimate)."""

    #: Folds that are fitted and scored, out of ``total_folds`` (one for a held-out split).
    folds: int
    total_folds: int
    families: int
    #: Regressors fitted together per fold: one per family, and one per θ-shuffled control.
    fits: int
    #: One epoch of all of a fold's fits, measured (:func:`.regression.epoch_seconds`).
    epoch_seconds: float
    max_epochs: int
    #: Epochs early stopping usually lets a family's regressor run (its patience past a typical best epoch), and a
    #: control's (its patience past the first epoch: shuffled θ has nothing to learn).
    typical_epochs: int
    control_epochs: int

    @property
    def seconds(self) -> float:
        """The usual cost: a stopped regressor leaves the batch, so each costs its share of an epoch while it runs."""
        epochs = self.families * self.typical_epochs + (self.fits - self.families) * self.control_epochs
        return self.folds * self.epoch_seconds * epochs / self.fits

    @property
    def max_seconds(self) -> float:
        return self.folds * self.max_epochs * self.epoch_seconds

    def describe(self) -> str:
        controls = self.fits - self.families
        return (
            f"{self.folds} of {self.total_folds} fold(s) × {self.fits} regressors ({self.families} families"
            + (f" + {controls} θ-shuffled controls" if controls else "")
            + f") × ~{self.typical_epochs} epochs (at most {self.max_epochs}) at {self.epoch_seconds:.2f} s/epoch: "
            f"~{self.seconds:.0f} s (at most {self.max_seconds:.0f} s)"
        )


def regression_cost(
    num_pairs: int,
    num_features: int,
    num_parameters: Mapping[str, int],
    *,
    groups: Sequence[int] | np.ndarray | None = None,
    test_groups: Sequence[int] | None = None,
    folds: int = 5,
    scored_folds: int | None = None,
    regressor: RegressorConfig | None = None,
    seed: int = 0,
    device: torch.device | str | None = None,
    shuffled_control: bool | Collection[str] = False,
) -> RegressionCost:
    """What :func:`score_families` will cost for ``num_pairs`` pairs of ``num_features``-wide features and families
    with ``num_parameters`` θ parameters each (same arguments), timed on a few steps of random data."""
    config = regressor or RegressorConfig()
    groups = np.arange(num_pairs) if groups is None else np.asarray(groups).reshape(-1)
    splits = _splits(groups, test_groups, folds, seed)
    scored = splits[:scored_folds] if scored_folds is not None else splits
    train, validation, _ = scored[0]
    controls = [f for f in num_parameters if shuffled_control is True or (shuffled_control and f in shuffled_control)]
    fits = len(num_parameters) + len(controls)
    seconds = epoch_seconds(
        fits, 2 * num_features, max(num_parameters.values()), int(train.sum()), int(validation.sum()), config, device
    )
    return RegressionCost(
        folds=len(scored),
        total_folds=len(splits),
        families=len(num_parameters),
        fits=fits,
        epoch_seconds=seconds,
        max_epochs=config.epochs,
        typical_epochs=min(config.epochs, TYPICAL_BEST_EPOCH + config.patience),
        control_epochs=min(config.epochs, 1 + config.patience),
    )


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
    :func:`score_families` scores several families' pairs at once.
    """
    return score_families(
        features,
        {family: transformed_features},
        {family: params},
        groups=groups,
        test_groups=test_groups,
        folds=folds,
        scored_folds=scored_folds,
        parameter_names={family: parameter_names} if parameter_names is not None else None,
        regressor=regressor,
        multioutput=multioutput,
        seed=seed,
        device=device,
        progress=progress,
        shuffled_control=shuffled_control,
    )[family]


def score_families(
    features: torch.Tensor,
    transformed_features: Mapping[str, torch.Tensor],
    params: Mapping[str, torch.Tensor | np.ndarray],
    *,
    groups: Sequence[int] | np.ndarray | torch.Tensor | None = None,
    test_groups: Sequence[int] | None = None,
    folds: int = 5,
    scored_folds: int | None = None,
    parameter_names: Mapping[str, Sequence[str] | None] | None = None,
    regressor: RegressorConfig | None = None,
    multioutput: R2Convention = "global",
    seed: int = 0,
    device: torch.device | str | None = None,
    progress: bool = False,
    shuffled_control: bool | Collection[str] = False,
) -> dict[str, FamilyResult]:
    """:func:`score_feature_pairs` for several families of the same pairs at once: ``{family: FamilyResult}``.

    ``transformed_features`` and ``params`` map each family to its g_θ(I) features and θ; the features of I, the
    groups and so the splits are shared. Each family's result is the one :func:`score_feature_pairs` gives it alone
    (up to float rounding): every fold fits all families' regressors, and their θ-shuffled controls
    (``shuffled_control``: all families, or those named), as one batch (:func:`.regression.fit_mlp_regressors`), so
    the cost of a fold is that of one large fit, not of a loop of small ones.
    """
    if multioutput not in MULTIOUTPUT:
        raise ValueError(f"multioutput must be one of {MULTIOUTPUT}, got {multioutput!r}.")
    if set(transformed_features) != set(params) or not params:
        raise ValueError(
            f"transformed features ({list(transformed_features)}) and params ({list(params)}) must name the same "
            "families, at least one."
        )
    count = features.shape[0]
    groups = np.arange(count) if groups is None else np.asarray(groups).reshape(-1)
    targets = {family: _as_params(values) for family, values in params.items()}
    names = {}
    for family, values in targets.items():
        transformed = transformed_features[family]
        if transformed.shape != features.shape or values.shape[0] != count or groups.shape[0] != count:
            raise ValueError(
                f"features {tuple(features.shape)}, transformed features {tuple(transformed.shape)}, params "
                f"{tuple(values.shape)} and groups ({groups.shape[0]},) must describe the same N samples."
            )
        given = (parameter_names or {}).get(family)
        names[family] = tuple(given) if given is not None else tuple(f"p{i}" for i in range(values.shape[1]))
        if len(names[family]) != values.shape[1]:
            raise ValueError(f"{len(names[family])} parameter names for {values.shape[1]} parameters.")
    splits = _splits(groups, test_groups, folds, seed)
    if scored_folds is not None:
        if scored_folds < 1:
            raise ValueError(f"scored_folds must be at least 1, got {scored_folds}.")
        splits = splits[:scored_folds]
    controlled = [f for f in targets if shuffled_control is True or (shuffled_control and f in shuffled_control)]

    pairs = {family: torch.cat([features, transformed_features[family]], dim=1).float() for family in targets}
    predictions = {family: torch.zeros_like(values) for family, values in targets.items()}
    control = {family: torch.zeros_like(targets[family]) for family in controlled}
    scored = np.zeros(count, dtype=bool)
    fold_r2, train_r2, epochs = ({family: [] for family in targets} for _ in range(3))
    num_train = []
    for index, (train, validation, test) in enumerate(splits):
        seen = np.flatnonzero(train | validation)
        permutation = seen[np.random.default_rng([seed, 3, index]).permutation(len(seen))]
        fits = [(family, targets[family]) for family in targets]
        for family in controlled:
            permuted = targets[family].clone()
            permuted[seen] = targets[family][permutation]
            fits.append((family, permuted))
        models = fit_mlp_regressors(
            [pairs[family][train] for family, _ in fits],
            [values[train] for _, values in fits],
            regressor,
            validation=[(pairs[family][validation], values[validation]) for family, values in fits]
            if validation.any()
            else None,
            seed=seed,
            device=device,
            progress=progress,
            description=f"{len(fits)} regressors (fold {index + 1}/{len(splits)})",
        )
        for (family, _), model in zip(fits[: len(targets)], models[: len(targets)], strict=True):
            values, predicted = targets[family], predictions[family]
            predicted[test] = model.predict(pairs[family][test])
            fold_r2[family].append(
                float(r2_score(y_true=values[test], y_pred=predicted[test], multioutput=multioutput))
                if test.sum() >= 2
                else float("nan")  # a photo drawn once: it counts in the pooled R², not on its own
            )
            fitted = model.predict(pairs[family][train])
            train_r2[family].append(float(r2_score(y_true=values[train], y_pred=fitted, multioutput=multioutput)))
            epochs[family].append(model.best_epoch)
        for (family, _), model in zip(fits[len(targets) :], models[len(targets) :], strict=True):
            control[family][test] = model.predict(pairs[family][test])
        scored |= test
        num_train.append(int(train.sum()))

    results = {}
    for family, values in targets.items():
        truth, predicted = values[scored], predictions[family][scored]
        scores = {c: r2_score(y_true=truth, y_pred=predicted, multioutput=c) for c in MULTIOUTPUT}
        per_parameter = r2_score(y_true=truth, y_pred=predicted, multioutput="raw_values")
        shuffled_r2 = None
        if family in control:
            shuffled_r2 = float(r2_score(y_true=truth, y_pred=control[family][scored], multioutput=multioutput))
        results[family] = FamilyResult(
            family=family,
            parameter_names=names[family],
            r2=float(scores[multioutput]),
            r2_global=float(scores["global"]),
            r2_per_output=float(scores["per_output"]),
            per_parameter_r2={n: float(v) for n, v in zip(names[family], per_parameter, strict=True)},
            train_r2=float(np.mean(train_r2[family])),
            num_train=round(float(np.mean(num_train))),
            num_test=int(scored.sum()),
            shuffled_r2=shuffled_r2,
            fold_r2=fold_r2[family],
            epochs=epochs[family],
        )
    return results


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
