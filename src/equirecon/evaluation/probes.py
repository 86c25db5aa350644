"""Classification probes on frozen features: weighted cosine k-NN and a linear (logistic-regression) probe.

Both take precomputed features, so one extraction serves every probe and every ``k``. They run in torch on any
device, deterministically.

* :func:`knn_probe` is the weighted k-NN of DINO (``facebookresearch/dino:eval_knn.py``), also used by DINOv2
  and iBOT: cosine similarity on L2-normalised features, each of the ``k`` nearest training samples votes for its
  class with weight ``exp(similarity / T)``, ``T = 0.07``. Reported at ``k = 20`` and ``k = 200`` by default.
* :func:`linear_probe` is multinomial logistic regression on standardised features, fitted to convergence with
  full-batch L-BFGS (a convex problem, so the result does not depend on an initialisation or a learning rate);
  the L2 penalty is chosen on a held-out part of the training set from a log grid, as DINOv2's logistic-regression
  evaluation does, and the model is then refitted on the whole training set.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .metrics import ArrayLike

__all__ = ["KNNProbeResult", "LinearProbeResult", "fit_logistic_regression", "knn_probe", "linear_probe"]

DEFAULT_WEIGHT_DECAYS: tuple[float, ...] = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0)


def _labels(values: ArrayLike) -> torch.Tensor:
    tensor = values if isinstance(values, torch.Tensor) else torch.as_tensor(np.asarray(values))
    if tensor.is_floating_point() and not torch.equal(tensor, tensor.round()):
        raise ValueError("labels must be integer class indices.")
    tensor = tensor.long().reshape(-1)
    if tensor.numel() and tensor.min() < 0:
        raise ValueError("labels must be non-negative class indices.")
    return tensor


def _check(features: torch.Tensor, labels: torch.Tensor, name: str) -> None:
    if features.ndim != 2 or features.shape[0] != labels.shape[0]:
        raise ValueError(
            f"{name}: expected features (N, D) and N labels, got {tuple(features.shape)} and {labels.shape[0]}."
        )
    if features.shape[0] == 0:
        raise ValueError(f"{name}: no samples.")


def _checked_labels(
    train_features: torch.Tensor,
    train_labels: ArrayLike,
    test_features: torch.Tensor,
    test_labels: ArrayLike,
    num_classes: int | None,
    device: Any,
) -> tuple[torch.device, torch.Tensor, torch.Tensor, int]:
    """What both probes check first: (device, train labels, test labels, number of classes)."""
    device = torch.device(device) if device is not None else train_features.device
    y_train, y_test = _labels(train_labels).to(device), _labels(test_labels).to(device)
    _check(train_features, y_train, "train")
    _check(test_features, y_test, "test")
    return device, y_train, y_test, num_classes or int(max(y_train.max(), y_test.max())) + 1


@dataclass
class KNNProbeResult:
    """Top-1 (and top-5) accuracy of the weighted k-NN classifier for each ``k``."""

    top1: dict[int, float]
    top5: dict[int, float]
    temperature: float
    num_train: int
    num_test: int
    num_classes: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "task": "knn",
            "top1": {str(k): v for k, v in self.top1.items()},
            "top5": {str(k): v for k, v in self.top5.items()},
            "temperature": self.temperature,
            "num_train": self.num_train,
            "num_test": self.num_test,
            "num_classes": self.num_classes,
        }


@torch.no_grad()
def knn_probe(
    train_features: torch.Tensor,
    train_labels: ArrayLike,
    test_features: torch.Tensor,
    test_labels: ArrayLike,
    *,
    k: int | Sequence[int] = (20, 200),
    temperature: float = 0.07,
    num_classes: int | None = None,
    batch_size: int = 1024,
    device: torch.device | str | None = None,
) -> KNNProbeResult:
    """Weighted cosine k-NN accuracy of ``test_features`` against ``train_features``.

    ``k`` larger than the training set is clamped to its size (the result is keyed by the requested ``k``).
    Test samples are processed in chunks of ``batch_size``, so memory is ``O(batch_size × N_train)``.
    """
    ks = (k,) if isinstance(k, int) else tuple(k)
    if not ks or min(ks) < 1:
        raise ValueError(f"k must be positive, got {k}.")
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}.")
    device, y_train, y_test, classes = _checked_labels(
        train_features, train_labels, test_features, test_labels, num_classes, device
    )
    train = F.normalize(train_features.to(device, torch.float32), dim=1)
    test = F.normalize(test_features.to(device, torch.float32), dim=1)
    k_max = min(max(ks), train.shape[0])
    correct1 = dict.fromkeys(ks, 0)
    correct5 = dict.fromkeys(ks, 0)
    for start in range(0, test.shape[0], batch_size):
        chunk, truth = test[start : start + batch_size], y_test[start : start + batch_size]
        similarity, index = (chunk @ train.T).topk(k_max, dim=1)
        weights = (similarity / temperature).exp()
        neighbour_labels = y_train[index]
        for requested in ks:
            used = min(requested, k_max)
            votes = torch.zeros(chunk.shape[0], classes, device=device)
            votes.scatter_add_(1, neighbour_labels[:, :used], weights[:, :used])
            ranked = votes.topk(min(5, classes), dim=1).indices
            correct1[requested] += int((ranked[:, 0] == truth).sum())
            correct5[requested] += int((ranked == truth[:, None]).any(dim=1).sum())
    total = test.shape[0]
    return KNNProbeResult(
        top1={key: value / total for key, value in correct1.items()},
        top5={key: value / total for key, value in correct5.items()},
        temperature=temperature,
        num_train=train.shape[0],
        num_test=total,
        num_classes=classes,
    )


@dataclass
class LinearProbeResult:
    """Test accuracy of the logistic-regression probe, with the penalty that validation selected."""

    accuracy: float
    top5: float
    weight_decay: float
    validation_accuracy: dict[float, float] = field(default_factory=dict)
    num_train: int = 0
    num_test: int = 0
    num_classes: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "task": "linear",
            "accuracy": self.accuracy,
            "top5": self.top5,
            "weight_decay": self.weight_decay,
            "validation_accuracy": {f"{wd:g}": acc for wd, acc in self.validation_accuracy.items()},
            "num_train": self.num_train,
            "num_test": self.num_test,
            "num_classes": self.num_classes,
        }


def fit_logistic_regression(
    features: torch.Tensor, labels: torch.Tensor, num_classes: int, weight_decay: float, max_iter: int = 200
) -> tuple[torch.Tensor, torch.Tensor]:
    """Multinomial logistic regression by L-BFGS, the linear probe's fit: `(weight (D, C), bias (C,))`. Also starts
    a fine-tuned linear head where the probe ends (`equirecon.finetuning.head_init`)."""
    weight = torch.zeros(features.shape[1], num_classes, device=features.device, requires_grad=True)
    bias = torch.zeros(num_classes, device=features.device, requires_grad=True)
    optimizer = torch.optim.LBFGS(
        [weight, bias],
        lr=1.0,
        max_iter=max_iter,
        tolerance_grad=1e-6,
        tolerance_change=1e-9,
        history_size=20,
        line_search_fn="strong_wolfe",
    )

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(features @ weight + bias, labels) + 0.5 * weight_decay * weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    return weight.detach(), bias.detach()


def linear_probe(
    train_features: torch.Tensor,
    train_labels: ArrayLike,
    test_features: torch.Tensor,
    test_labels: ArrayLike,
    *,
    weight_decays: Sequence[float] = DEFAULT_WEIGHT_DECAYS,
    validation_fraction: float = 0.2,
    max_iter: int = 200,
    num_classes: int | None = None,
    seed: int = 0,
    device: torch.device | str | None = None,
) -> LinearProbeResult:
    """Accuracy of a logistic-regression probe on frozen features.

    Features are standardised with the training set's statistics. With several ``weight_decays``, each is fitted
    on ``1 - validation_fraction`` of the training set and scored on the rest (a seeded split); the best is
    refitted on the full training set and evaluated on the test set.
    """
    if not weight_decays or min(weight_decays) < 0:
        raise ValueError(f"weight_decays must be a non-empty sequence of non-negative values, got {weight_decays}.")
    device, y_train, y_test, classes = _checked_labels(
        train_features, train_labels, test_features, test_labels, num_classes, device
    )
    x_train = train_features.to(device, torch.float32)
    mean = x_train.mean(dim=0)
    std = x_train.std(dim=0, unbiased=False)
    std = torch.where(std <= 1e-6 * (mean.abs() + 1.0), torch.ones_like(std), std)
    x_train = (x_train - mean) / std
    x_test = (test_features.to(device, torch.float32) - mean) / std

    validation: dict[float, float] = {}
    best = float(weight_decays[0])
    if len(weight_decays) > 1:
        order = torch.randperm(x_train.shape[0], generator=torch.Generator().manual_seed(seed)).to(device)
        num_val = int(round(validation_fraction * x_train.shape[0]))
        if not 1 <= num_val < x_train.shape[0]:
            raise ValueError(f"validation_fraction {validation_fraction} leaves no validation or training samples.")
        fit_idx, val_idx = order[num_val:], order[:num_val]
        for wd in weight_decays:
            weight, bias = fit_logistic_regression(x_train[fit_idx], y_train[fit_idx], classes, float(wd), max_iter)
            predictions = (x_train[val_idx] @ weight + bias).argmax(dim=1)
            validation[float(wd)] = float((predictions == y_train[val_idx]).float().mean())
        # Ties go to the strongest penalty: the simplest probe that validates as well.
        best = max(validation, key=lambda wd: (validation[wd], wd))
    weight, bias = fit_logistic_regression(x_train, y_train, classes, best, max_iter)
    logits = x_test @ weight + bias
    ranked = logits.topk(min(5, classes), dim=1).indices
    return LinearProbeResult(
        accuracy=float((ranked[:, 0] == y_test).float().mean()),
        top5=float((ranked == y_test[:, None]).any(dim=1).float().mean()),
        weight_decay=best,
        validation_accuracy=validation,
        num_train=x_train.shape[0],
        num_test=x_test.shape[0],
        num_classes=classes,
    )
