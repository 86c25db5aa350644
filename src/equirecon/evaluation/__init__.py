"""Evaluation of frozen encoders: the equivariance R² benchmark, k-NN and linear probes, and metrics.

Every function works on any transformers vision encoder (EquiRecon, ViT, DINOv2, ...), so baselines run through
the same code. Metrics are plain functions, a streaming confusion matrix for segmentation, and ``evaluate``
modules shipped in the package (:func:`load_metric`), all offline.

The command line is ``equirecon evaluate equivariance|knn|linear`` (:mod:`equirecon.evaluation.command`).
"""

from .cache import FeatureCache
from .equivariance import (
    DEFAULT_FAMILIES,
    EquivarianceResult,
    FamilyResult,
    run_equivariance_benchmark,
    score_feature_pairs,
)
from .features import FEATURE_KINDS, FeatureExtractor, encode_images, num_prefix_tokens, pool_features
from .labelled import LabelledImages, load_labelled_images
from .loading import InputSpec, load_model
from .metric_modules import load_metric, metric_path
from .metrics import accuracy, r2_score, top_k_accuracy
from .plotting import plot_equivariance
from .probes import KNNProbeResult, LinearProbeResult, knn_probe, linear_probe
from .regression import MLPRegressor, RegressorConfig, fit_mlp_regressor, fit_mlp_regressors
from .scores import score_families
from .segmentation_metrics import (
    ConfusionMatrix,
    SegmentationMetric,
    confusion_matrix,
    mean_iou,
    metrics_from_confusion_matrix,
)

__all__ = [
    "DEFAULT_FAMILIES",
    "FEATURE_KINDS",
    "ConfusionMatrix",
    "EquivarianceResult",
    "FamilyResult",
    "FeatureCache",
    "FeatureExtractor",
    "InputSpec",
    "KNNProbeResult",
    "LabelledImages",
    "LinearProbeResult",
    "MLPRegressor",
    "RegressorConfig",
    "SegmentationMetric",
    "accuracy",
    "confusion_matrix",
    "encode_images",
    "fit_mlp_regressor",
    "fit_mlp_regressors",
    "knn_probe",
    "linear_probe",
    "load_labelled_images",
    "load_metric",
    "load_model",
    "mean_iou",
    "metric_path",
    "metrics_from_confusion_matrix",
    "num_prefix_tokens",
    "plot_equivariance",
    "pool_features",
    "r2_score",
    "run_equivariance_benchmark",
    "score_families",
    "score_feature_pairs",
    "top_k_accuracy",
]
