"""equirecon: equivariance-coherent self-supervised learning as a transformers model family.

Importing the package registers the EquiRecon classes with the transformers Auto classes.
"""

from .modeling import (
    PRESETS,
    SSL_OBJECTIVES,
    EquiReconConfig,
    EquiReconForImageClassification,
    EquiReconForPreTraining,
    EquiReconForPreTrainingOutput,
    EquiReconForSemanticSegmentation,
    EquiReconModel,
    EquiReconModelOutput,
    EquiReconPreTrainedModel,
)
from .registration import register_auto_classes

__version__ = "0.1.0"

register_auto_classes()

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
    "register_auto_classes",
]
