"""Streaming fine-tuning metrics for `Trainer` (``batch_eval_metrics``): classification accuracy here, segmentation
IoU from :class:`equirecon.evaluation.segmentation_metrics.SegmentationMetric`."""

from __future__ import annotations

from typing import Any

import torch
from transformers import EvalPrediction

from ..evaluation.segmentation_metrics import ConfusionMatrix, SegmentationMetric

__all__ = ["ClassificationMetric", "whole_set_metric"]


class ClassificationMetric:
    """Streaming ``compute_metrics`` for ``TrainingArguments(batch_eval_metrics=True)``: top-1 accuracy and the mean
    per-class accuracy (balanced accuracy), from a confusion matrix that stays on the device.

    Trainer calls it once per evaluation batch with that batch's logits ``(B, C)`` and labels ``(B,)``; the metrics
    come back on the last batch and the matrix is reset for the next evaluation. Labels equal to -100 (Trainer's
    padding across processes) are skipped.
    """

    def __init__(self, num_labels: int) -> None:
        self.confusion = ConfusionMatrix(num_labels, ignore_index=None)

    @torch.no_grad()
    def update(self, logits: Any, labels: Any) -> None:
        if isinstance(logits, tuple | list):
            logits = logits[0]
        logits = torch.as_tensor(logits)
        labels = torch.as_tensor(labels, device=logits.device).reshape(-1)
        predictions = logits.argmax(dim=-1).reshape(-1)
        keep = labels != -100
        self.confusion.update(predictions[keep], labels[keep])

    def compute(self) -> dict[str, float]:
        result = self.confusion.compute()
        return {"accuracy": float(result["overall_accuracy"]), "mean_class_accuracy": float(result["mean_accuracy"])}

    def __call__(self, eval_pred: EvalPrediction, compute_result: bool = True) -> dict[str, float]:
        self.update(eval_pred.predictions, eval_pred.label_ids)
        if not compute_result:
            return {}
        metrics = self.compute()
        self.confusion.reset()
        return metrics


def whole_set_metric(metric: ClassificationMetric | SegmentationMetric):
    """``--batch_eval_metrics False``: Trainer hands over the whole set at once; the same metric folds it in."""

    def compute(eval_pred: EvalPrediction) -> dict[str, float]:
        return metric(eval_pred, compute_result=True)

    return compute
