"""The EquiRecon model family (transformers-compatible; these files also travel as Hub custom code)."""

from .configuration_equirecon import SSL_OBJECTIVES, EquiReconConfig
from .modeling_equirecon import (
    EquiReconBackbone,
    EquiReconForImageClassification,
    EquiReconForPreTraining,
    EquiReconForPreTrainingOutput,
    EquiReconForSemanticSegmentation,
    EquiReconModel,
    EquiReconModelOutput,
    EquiReconPreTrainedModel,
)
from .presets import PRESETS

__all__ = [
    "PRESETS",
    "SSL_OBJECTIVES",
    "EquiReconBackbone",
    "EquiReconConfig",
    "EquiReconForImageClassification",
    "EquiReconForPreTraining",
    "EquiReconForPreTrainingOutput",
    "EquiReconForSemanticSegmentation",
    "EquiReconModel",
    "EquiReconModelOutput",
    "EquiReconPreTrainedModel",
]
