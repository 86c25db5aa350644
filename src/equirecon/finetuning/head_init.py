"""A linear classification head started where a linear probe ends: logistic regression on the frozen encoder's
features of the training images, as LP-FT does before fine-tuning (Kumar et al., *Fine-Tuning can Distort Pretrained
Features and Underperform Out-of-Distribution*, ICLR 2022).

Why: an encoder's features are strongly correlated, even after standardisation, and a head trained by a first-order
optimizer from zero needs tens of epochs to reach what L-BFGS finds in one pass over the features (`docs/results.md`,
*Fine-tuning*). The training epochs that follow then adapt the head to the training augmentations.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from ..evaluation.probes import DEFAULT_WEIGHT_DECAYS, fit_logistic_regression

__all__ = ["initialise_linear_head"]

logger = logging.getLogger(__name__)


def _classifier_input(model: nn.Module) -> nn.Module | None:
    """The module whose input is the head's feature vector: EquiRecon's parameter-free `feature_norm` (its running
    statistics are then set from the features), else a transformers classification model's `classifier`."""
    norm = getattr(model, "feature_norm", None)
    if isinstance(norm, nn.BatchNorm1d) and not norm.affine:
        return norm
    classifier = getattr(model, "classifier", None)
    return classifier if isinstance(classifier, nn.Linear) else None


def _features(model: nn.Module, module: nn.Module, batches: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """The inputs of `module` for every batch of `batches` (`pixel_values`, `labels`), with the labels."""
    captured: list[torch.Tensor] = []
    handle = module.register_forward_hook(lambda _, inputs, __: captured.append(inputs[0].detach().float().cpu()))
    labels = []
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for batch in batches:
                model(pixel_values=batch["pixel_values"].to(device))
                labels.append(batch["labels"])
    finally:
        handle.remove()
        model.train(was_training)
    return torch.cat(captured), torch.cat(labels)


def initialise_linear_head(model: nn.Module, batches: Any, *, num_labels: int, seed: int = 0) -> float | None:
    """Fit the head of `model` by logistic regression on the frozen features of `batches` (the training images
    with the evaluation transform), the weight decay chosen on a held-out fifth as `equirecon evaluate linear`
    does. Returns the fitted probe's accuracy on its own training features, or None (with a log line) where the
    model has no linear head this can fit."""
    module = _classifier_input(model)
    classifier = getattr(model, "classifier", None)
    if module is None or not isinstance(classifier, nn.Linear):
        logger.info("%s has no linear head on a feature vector: the head starts at random.", type(model).__name__)
        return None
    features, labels = _features(model, module, batches)
    mean = features.mean(dim=0)
    std = features.std(dim=0, unbiased=False).clamp_min(1e-6)
    standardised = (features - mean) / std
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    held_out, fitted = order[: len(labels) // 5], order[len(labels) // 5 :]
    scores = {}
    for weight_decay in DEFAULT_WEIGHT_DECAYS:
        weight, bias = fit_logistic_regression(standardised[fitted], labels[fitted], num_labels, weight_decay)
        predictions = (standardised[held_out] @ weight + bias).argmax(1)
        scores[weight_decay] = float((predictions == labels[held_out]).float().mean())
    best = max(scores, key=lambda weight_decay: (scores[weight_decay], weight_decay))
    weight, bias = fit_logistic_regression(standardised, labels, num_labels, best)
    accuracy = float((standardised @ weight + bias).argmax(1).eq(labels).float().mean())
    with torch.no_grad():
        if module is classifier:  # no normalisation layer: fold the standardisation into the head
            weight = weight / std[:, None]
            bias = bias - mean @ weight
        else:
            module.running_mean.copy_(mean)
            module.running_var.copy_(std.pow(2))
        classifier.weight.copy_(weight.T)
        classifier.bias.copy_(bias)
    logger.info(
        "Head initialised by logistic regression on the frozen features of %d training images (weight decay %g): "
        "%.4f accuracy on them.",
        len(labels),
        best,
        accuracy,
    )
    return accuracy
