"""The EquiRecon model family, transformers-compatible.

Every module here travels with `save_pretrained` as Hub custom code, so it imports only torch, transformers and its
siblings (`tests/test_architecture.py` checks it); `docs/architecture.md` (*The modeling package*) says which module
does what.
"""

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
