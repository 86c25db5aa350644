"""Semantic-segmentation metrics (mean IoU and pixel accuracy) computed from a confusion matrix.

Everything derives from one ``num_labels × num_labels`` confusion matrix (rows: reference class, columns:
predicted class), because it is exact, tiny, additive across batches and processes, and holds every metric
``evaluate``'s ``mean_iou`` reports. That makes evaluation *streaming*: :class:`ConfusionMatrix` accumulates on
the device batch by batch, so an evaluation never holds the logits of the whole set (which for ADE20K at 512² is
tens of GB). :class:`SegmentationMetric` plugs it into ``Trainer(compute_metrics=...)`` with
``TrainingArguments(batch_eval_metrics=True)``.

Conventions (the same as ``evaluate``'s ``mean_iou``, whose output keys are kept):

* pixels whose reference is ``ignore_index`` are excluded everywhere;
* a class that appears in neither references nor predictions has IoU and accuracy NaN and is left out of the
  means (``nan_to_num`` replaces NaN in the returned values if a number is needed);
* a class that is predicted but absent from the references has IoU 0 and accuracy NaN.

Unlike the upstream script, references or predictions outside ``[0, num_labels)`` (other than ``ignore_index``)
raise a ``ValueError`` instead of being dropped silently: such values are almost always a label-mapping bug.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "ConfusionMatrix",
    "SegmentationMetric",
    "confusion_matrix",
    "mean_iou",
    "metrics_from_confusion_matrix",
]

# transformers' Trainer pads labels with -100 when it gathers batches of different sizes across processes.
_TRAINER_PAD_INDEX = -100


def _as_long_tensor(values: Any, device: torch.device | None = None) -> torch.Tensor:
    if isinstance(values, torch.Tensor):
        tensor = values
    else:
        tensor = torch.as_tensor(np.asarray(values))
    if tensor.is_floating_point():
        if not torch.equal(tensor, tensor.round()):
            raise ValueError("label maps must hold integer class indices; got non-integer floats.")
    return tensor.to(device=device if device is not None else tensor.device, dtype=torch.long)


def confusion_matrix(
    predictions: torch.Tensor,
    references: torch.Tensor,
    num_labels: int,
    *,
    ignore_index: int | None = 255,
) -> torch.Tensor:
    """Confusion matrix ``(num_labels, num_labels)`` (int64, on the inputs' device) of two label maps.

    Entry ``[i, j]`` counts pixels of reference class ``i`` predicted as ``j``. Pixels whose reference equals
    ``ignore_index`` are skipped. Shapes must match (any shape, e.g. ``(B, H, W)``).
    """
    if num_labels < 1:
        raise ValueError(f"num_labels must be positive, got {num_labels}.")
    preds = _as_long_tensor(predictions)
    refs = _as_long_tensor(references, device=preds.device)
    if preds.shape != refs.shape:
        raise ValueError(f"predictions {tuple(preds.shape)} and references {tuple(refs.shape)} differ in shape.")
    if ignore_index is not None:
        keep = refs != ignore_index
        preds, refs = preds[keep], refs[keep]
    else:
        preds, refs = preds.reshape(-1), refs.reshape(-1)
    if refs.numel() == 0:
        return torch.zeros(num_labels, num_labels, dtype=torch.long, device=preds.device)
    for name, values in (("references", refs), ("predictions", preds)):
        low, high = int(values.min()), int(values.max())
        if low < 0 or high >= num_labels:
            raise ValueError(
                f"{name} contain class {low if low < 0 else high}, outside [0, {num_labels}) "
                f"(ignore_index={ignore_index}). Check num_labels, ignore_index and any label mapping."
            )
    counts = torch.bincount(refs * num_labels + preds, minlength=num_labels * num_labels)
    return counts.reshape(num_labels, num_labels)


def metrics_from_confusion_matrix(
    matrix: torch.Tensor | np.ndarray, *, nan_to_num: float | None = None
) -> dict[str, Any]:
    """``evaluate``-compatible segmentation metrics from a confusion matrix (rows: reference, columns: prediction).

    Returns:
        ``mean_iou``, ``mean_accuracy`` and ``overall_accuracy`` (floats) and ``per_category_iou`` and
        ``per_category_accuracy`` (float64 arrays of length ``num_labels``). The means skip NaN classes.
    """
    cm = matrix.detach().cpu().double().numpy() if isinstance(matrix, torch.Tensor) else np.asarray(matrix, float)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
        raise ValueError(f"a confusion matrix is square, got shape {cm.shape}.")
    intersection = np.diag(cm)
    area_reference = cm.sum(axis=1)
    area_prediction = cm.sum(axis=0)
    union = area_reference + area_prediction - intersection
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, intersection / union, np.nan)
        per_class_accuracy = np.where(area_reference > 0, intersection / area_reference, np.nan)
        overall = intersection.sum() / area_reference.sum() if area_reference.sum() > 0 else np.nan

    def nanmean(values: np.ndarray) -> float:
        return float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")

    result: dict[str, Any] = {
        "mean_iou": nanmean(iou),
        "mean_accuracy": nanmean(per_class_accuracy),
        "overall_accuracy": float(overall),
        "per_category_iou": iou,
        "per_category_accuracy": per_class_accuracy,
    }
    if nan_to_num is not None:
        result = {
            key: np.nan_to_num(value, nan=nan_to_num)
            if isinstance(value, np.ndarray)
            else (nan_to_num if np.isnan(value) else value)
            for key, value in result.items()
        }
    return result


def _remap_labels(
    references: torch.Tensor, *, ignore_index: int | None, label_map: Mapping[int, int] | None, reduce_labels: bool
) -> torch.Tensor:
    if label_map:
        remapped = references.clone()
        for old, new in label_map.items():  # all replacements read the original labels, so chains never compound
            remapped[references == old] = new
        references = remapped
    if reduce_labels:
        # ADE20K-style "0 = background, ignore it": 0 -> ignore, k -> k - 1 (same as evaluate's mean_iou).
        if ignore_index is None:
            raise ValueError("reduce_labels=True needs an ignore_index.")
        reduced = references - 1
        reduced[(references == 0) | (references == ignore_index)] = ignore_index
        references = reduced
    return references


class ConfusionMatrix:
    """Streaming confusion matrix on any device: ``update(pred, target)`` per batch, ``compute()`` at the end.

    Example:
        >>> metric = ConfusionMatrix(num_labels=150, ignore_index=255)
        >>> for batch in loader:
        ...     metric.update(model(**batch).logits.argmax(1), batch["labels"])
        >>> metric.compute()["mean_iou"]

    The accumulator is a ``(num_labels, num_labels)`` int64 tensor on the device of the first update (or
    ``device``), so per-batch work stays on the accelerator. In a multi-process loop, call :meth:`all_reduce`
    before :meth:`compute` (Trainer already gathers batches, so :class:`SegmentationMetric` does not need it).
    """

    def __init__(
        self,
        num_labels: int,
        *,
        ignore_index: int | None = 255,
        label_map: Mapping[int, int] | None = None,
        reduce_labels: bool = False,
        device: torch.device | str | None = None,
    ) -> None:
        if num_labels < 1:
            raise ValueError(f"num_labels must be positive, got {num_labels}.")
        self.num_labels = num_labels
        self.ignore_index = ignore_index
        self.label_map = dict(label_map) if label_map else None
        self.reduce_labels = reduce_labels
        self._device = torch.device(device) if device is not None else None
        self.matrix: torch.Tensor | None = None
        self.reset()

    def reset(self) -> None:
        """Forget everything accumulated so far."""
        self.matrix = (
            torch.zeros(self.num_labels, self.num_labels, dtype=torch.long, device=self._device)
            if self._device is not None
            else None
        )

    @torch.no_grad()
    def update(self, predictions: Any, references: Any) -> None:
        """Add one batch of predicted and reference label maps (same shape, integer class indices)."""
        preds = _as_long_tensor(predictions, device=self._device)
        refs = _as_long_tensor(references, device=preds.device)
        refs = _remap_labels(
            refs, ignore_index=self.ignore_index, label_map=self.label_map, reduce_labels=self.reduce_labels
        )
        batch = confusion_matrix(preds, refs, self.num_labels, ignore_index=self.ignore_index)
        if self.matrix is None:
            self.matrix = batch
        else:
            self.matrix += batch.to(self.matrix.device)

    def all_reduce(self) -> None:
        """Sum the matrix over the processes of an initialised ``torch.distributed`` group (no-op otherwise)."""
        if self.matrix is not None and torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(self.matrix)

    def compute(self, *, nan_to_num: float | None = None) -> dict[str, Any]:
        """The ``evaluate``-style metrics dict of everything seen since the last :meth:`reset`."""
        matrix = self.matrix
        if matrix is None:
            matrix = torch.zeros(self.num_labels, self.num_labels, dtype=torch.long)
        return metrics_from_confusion_matrix(matrix, nan_to_num=nan_to_num)


def mean_iou(
    predictions: Any,
    references: Any,
    num_labels: int,
    ignore_index: int | None = 255,
    nan_to_num: float | None = None,
    *,
    label_map: Mapping[int, int] | None = None,
    reduce_labels: bool = False,
) -> dict[str, Any]:
    """Mean intersection-over-union and pixel accuracies, with the keys and semantics of ``evaluate``'s ``mean_iou``.

    Args:
        predictions: predicted label maps: one array/tensor ``(B, H, W)`` or a sequence of ``(H, W)`` maps, which
            may differ in size from image to image.
        references: reference label maps, matching ``predictions``.
        num_labels: number of classes.
        ignore_index: reference value to exclude (``None``: none).
        nan_to_num: if given, replaces NaN (classes absent from both maps) in every returned value.
        label_map: ``{old: new}`` applied to the references first.
        reduce_labels: map reference 0 to ``ignore_index`` and ``k`` to ``k - 1`` (ADE20K's background).

    Returns:
        ``{"mean_iou", "mean_accuracy", "overall_accuracy", "per_category_iou", "per_category_accuracy"}``.
    """
    accumulator = ConfusionMatrix(
        num_labels, ignore_index=ignore_index, label_map=label_map, reduce_labels=reduce_labels, device="cpu"
    )
    stacked = isinstance(predictions, torch.Tensor | np.ndarray) and isinstance(references, torch.Tensor | np.ndarray)
    if stacked:
        accumulator.update(predictions, references)
    else:
        if len(predictions) != len(references):
            raise ValueError(f"{len(predictions)} predictions for {len(references)} references.")
        for prediction, reference in zip(predictions, references, strict=True):
            accumulator.update(prediction, reference)
    return accumulator.compute(nan_to_num=nan_to_num)


class SegmentationMetric:
    """``compute_metrics`` for ``Trainer`` with ``TrainingArguments(batch_eval_metrics=True)``.

    Trainer then calls ``metric(eval_pred, compute_result=...)`` once per evaluation batch with that batch's
    logits and labels (already gathered across processes); this object folds each batch into a
    :class:`ConfusionMatrix` and returns the metrics on the last batch, then resets for the next evaluation.

    Example:
        >>> metric = SegmentationMetric(num_labels=150, id2label=model.config.id2label)
        >>> trainer = Trainer(model, args=TrainingArguments(..., batch_eval_metrics=True), compute_metrics=metric)

    Logits ``(B, C, h, w)`` are upsampled bilinearly to the label size and arg-maxed on the device (as
    transformers' ``run_semantic_segmentation.py`` does); integer predictions ``(B, H, W)`` (for instance from
    ``preprocess_logits_for_metrics``) are used as they are. Labels equal to Trainer's padding value -100 are
    ignored as well as ``ignore_index``.

    Returned keys are scalars, as Trainer requires: ``mean_iou``, ``mean_accuracy``, ``overall_accuracy``, and
    ``iou_<label>`` / ``accuracy_<label>`` per class (names from ``id2label`` when given, else indices).
    """

    def __init__(
        self,
        num_labels: int,
        *,
        ignore_index: int = 255,
        id2label: Mapping[int, str] | None = None,
        per_category: bool = True,
        reduce_labels: bool = False,
        nan_to_num: float | None = None,
    ) -> None:
        self.confusion = ConfusionMatrix(num_labels, ignore_index=ignore_index, reduce_labels=reduce_labels)
        self.id2label = {int(key): str(value) for key, value in id2label.items()} if id2label else None
        self.per_category = per_category
        self.nan_to_num = nan_to_num

    @property
    def num_labels(self) -> int:
        return self.confusion.num_labels

    @torch.no_grad()
    def update(self, predictions: Any, labels: Any) -> None:
        """Fold one batch of logits ``(B, C, h, w)`` or label maps ``(B, H, W)`` into the confusion matrix."""
        if isinstance(predictions, tuple | list):  # models returning extra outputs: logits come first
            predictions = predictions[0]
        preds = predictions if isinstance(predictions, torch.Tensor) else torch.as_tensor(np.asarray(predictions))
        refs = labels if isinstance(labels, torch.Tensor) else torch.as_tensor(np.asarray(labels))
        refs = refs.to(preds.device)
        if refs.ndim == 4 and refs.shape[1] == 1:
            refs = refs[:, 0]
        if preds.is_floating_point() and preds.ndim == refs.ndim + 1:
            if preds.shape[-2:] != refs.shape[-2:]:
                preds = F.interpolate(preds.float(), size=refs.shape[-2:], mode="bilinear", align_corners=False)
            preds = preds.argmax(dim=1)
        ignore = self.confusion.ignore_index
        refs = torch.where(refs == _TRAINER_PAD_INDEX, torch.full_like(refs, ignore), refs)
        self.confusion.update(preds, refs)

    def compute(self) -> dict[str, float]:
        """Flat, scalar metrics of everything seen since the last reset."""
        result = self.confusion.compute(nan_to_num=self.nan_to_num)
        flat = {key: float(result[key]) for key in ("mean_iou", "mean_accuracy", "overall_accuracy")}
        if self.per_category:
            for index in range(self.num_labels):
                name = self.id2label.get(index, str(index)) if self.id2label else str(index)
                flat[f"iou_{name}"] = float(result["per_category_iou"][index])
                flat[f"accuracy_{name}"] = float(result["per_category_accuracy"][index])
        return flat

    def reset(self) -> None:
        self.confusion.reset()

    def __call__(self, eval_pred: Any, compute_result: bool = True) -> dict[str, float]:
        """Trainer entry point: accumulate the batch; on the last batch return the metrics and reset."""
        self.update(eval_pred.predictions, eval_pred.label_ids)
        if not compute_result:
            return {}
        metrics = self.compute()
        self.reset()
        return metrics
