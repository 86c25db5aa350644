"""The EquiRecon model family (transformers-compatible; these files also travel as Hub custom code)."""

from .configuration_equirecon import PRESETS, SSL_OBJECTIVES, EquiReconConfig
from .modeling_equirecon import (
    EquiReconForImageClassification,
    EquiReconForPreTraining,
    EquiReconForPreTrainingOutput,
    EquiReconForSemanticSegmentation,
    EquiReconModel,
    EquiReconModelOutput,
    EquiReconPreTrainedModel,
)

__all__ = [
    "PRESETS",
    "SSL_OBJECTIVES",
    "EquiReconConfig",
    "EquiReconForImageClassification",
    "EquiReconForPreTraining",
    "EquiReconForPreTrainingOutput",
    "EquiReconForSemanticSegmentation",
    "EquiReconModel",
    "EquiReconModelOutput",
    "EquiReconPreTrainedModel",
]
