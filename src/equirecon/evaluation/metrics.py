"""Scalar metrics for classification and regression: accuracy and the coefficient of determination R².

They are plain functions on numpy arrays, torch tensors or lists, so that they can be called from a Trainer's
``compute_metrics``, from the probes in this package, and from the ``evaluate`` modules shipped with it
(``equirecon.evaluation.metric_modules``). No Hub metric is ever loaded.

R² has two conventions in the equivariance literature, and the difference matters for multi-parameter
transformations (translation, SE(2), colour jitter):

* ``"global"`` (the default, as in SIE's reference code, ``facebookresearch/SIE:eval_angle_prediction.py``):
  ``1 - Σ(y - ŷ)² / Σ(y - ȳ)²`` where ``ȳ`` is **one** mean over all samples and all outputs. Outputs with a
  large range dominate, and a predictor that only gets each output's mean right already scores above zero when
  the outputs' means differ.
* ``"per_output"``: R² of each output against its own mean, then averaged (scikit-learn's
  ``multioutput="uniform_average"``). Every parameter counts equally.

``"raw_values"`` returns the per-output values themselves.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch

ArrayLike = np.ndarray | torch.Tensor | list | tuple
R2Convention = Literal["global", "per_output", "raw_values"]

__all__ = ["ArrayLike", "R2Convention", "accuracy", "r2_score", "top_k_accuracy"]


def _to_numpy(values: ArrayLike, *, dtype: type | None = None) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu()
        if values.dtype == torch.bfloat16:
            values = values.float()
        values = values.numpy()
    array = np.asarray(values)
    return array.astype(dtype, copy=False) if dtype is not None else array


def accuracy(
    predictions: ArrayLike,
    references: ArrayLike,
    *,
    normalize: bool = True,
    sample_weight: ArrayLike | None = None,
) -> float:
    """Fraction (or, with ``normalize=False``, count) of predictions equal to their reference label.

    ``predictions`` may be class indices with the same shape as ``references``, or scores/logits with one more
    trailing dimension (then the arg-max is taken), so a Trainer's ``EvalPrediction`` can be passed as is.
    """
    preds = _to_numpy(predictions)
    refs = _to_numpy(references)
    if preds.ndim == refs.ndim + 1:
        preds = preds.argmax(axis=-1)
    if preds.shape != refs.shape:
        raise ValueError(
            f"predictions {preds.shape} and references {refs.shape} must have the same shape "
            "(or predictions one extra trailing class dimension)."
        )
    if refs.size == 0:
        raise ValueError("accuracy of an empty set is undefined.")
    correct = (preds == refs).astype(np.float64).reshape(-1)
    if sample_weight is not None:
        weights = _to_numpy(sample_weight, dtype=np.float64).reshape(-1)
        if weights.shape != correct.shape:
            raise ValueError(f"sample_weight has {weights.size} entries for {correct.size} predictions.")
        return float((correct * weights).sum() / weights.sum()) if normalize else float((correct * weights).sum())
    return float(correct.mean()) if normalize else float(correct.sum())


def top_k_accuracy(scores: ArrayLike, references: ArrayLike, k: int) -> float:
    """Fraction of samples whose reference label is among the ``k`` highest ``scores`` (shape ``(N, C)``)."""
    scores_np = _to_numpy(scores, dtype=np.float64)
    refs = _to_numpy(references).reshape(-1)
    if scores_np.ndim != 2 or scores_np.shape[0] != refs.shape[0]:
        raise ValueError(f"scores must have shape (N, C) with N = {refs.shape[0]}, got {scores_np.shape}.")
    k = min(k, scores_np.shape[1])
    top = np.argpartition(-scores_np, k - 1, axis=1)[:, :k]
    return float((top == refs[:, None]).any(axis=1).mean())


def _r2(residual: np.ndarray, total: np.ndarray) -> np.ndarray:
    # scikit-learn's force_finite convention for constant targets: a perfect fit scores 1, anything else 0.
    with np.errstate(divide="ignore", invalid="ignore"):
        r2 = 1.0 - residual / total
    constant = total == 0
    return np.where(constant, np.where(residual == 0, 1.0, 0.0), r2)


def r2_score(
    *,
    y_true: ArrayLike,
    y_pred: ArrayLike,
    multioutput: R2Convention = "global",
) -> float | np.ndarray:
    """Coefficient of determination ``1 - RSS / TSS`` of ``y_pred`` against ``y_true``, with scikit-learn's names.

    The arguments are keyword-only (``r2_score(y_true=..., y_pred=...)``): R² is not symmetric, and swapped
    positional arguments would give a wrong number without an error.

    Args:
        y_true: shape ``(N,)`` or ``(N, P)``.
        y_pred: same shape as ``y_true``.
        multioutput: ``"global"`` (one mean over all outputs, SIE's convention and the paper's), ``"per_output"``
            (mean of the per-output R²), or ``"raw_values"`` (the per-output R² as an array of shape ``(P,)``).
            See the module docstring for why they differ.

    Returns:
        A float, or an array for ``"raw_values"``. A perfect predictor scores 1; predicting the mean that the
        convention uses (the global mean, or each output's own mean) scores 0; worse predictors are negative.
        Constant targets follow scikit-learn: 1 for a perfect fit, 0 otherwise.
    """
    preds = _to_numpy(y_pred, dtype=np.float64)
    tgts = _to_numpy(y_true, dtype=np.float64)
    if preds.shape != tgts.shape:
        raise ValueError(f"y_pred {preds.shape} and y_true {tgts.shape} must have the same shape.")
    if tgts.ndim == 1:
        preds, tgts = preds[:, None], tgts[:, None]
    if tgts.ndim != 2:
        raise ValueError(f"expected targets of shape (N,) or (N, P), got {tgts.shape}.")
    if tgts.shape[0] < 2:
        raise ValueError("R² needs at least two samples.")
    residual = ((tgts - preds) ** 2).sum(axis=0)
    if multioutput == "global":
        total = ((tgts - tgts.mean()) ** 2).sum()
        return float(_r2(residual.sum(), total))
    per_output = _r2(residual, ((tgts - tgts.mean(axis=0)) ** 2).sum(axis=0))
    if multioutput == "per_output":
        return float(per_output.mean())
    if multioutput == "raw_values":
        return per_output
    raise ValueError(f"multioutput must be 'global', 'per_output' or 'raw_values', got {multioutput!r}.")
