"""Pretraining: transform pairs from images (CPU, per example), g_θ on the device (per batch), and the Trainer.

g_θ and the image sources live in :mod:`equirecon.imaging`; they are re-exported here, where they were first
published.
"""

from ..imaging.sources import embedded_photos, image_folder_to_parquet, load_images
from ..imaging.transformations import (
    FAMILIES,
    TransformationConfig,
    TransformedPair,
    apply_transformation,
    make_transformed_pair,
)
from .arguments import DataArguments, EquiReconTrainingArguments, EvaluationArguments, ModelArguments
from .data import build_transform_pair_dataset, collate_transform_pairs
from .masking import BlockMaskGenerator
from .teacher import TeacherCallback
from .trainer import EquiReconTrainer, NonFiniteLossError
from .views import VIEW_PRESETS, TransformPairMaker, build_view_transform

__all__ = [
    "FAMILIES",
    "VIEW_PRESETS",
    "BlockMaskGenerator",
    "DataArguments",
    "EquiReconTrainer",
    "EquiReconTrainingArguments",
    "EvaluationArguments",
    "ModelArguments",
    "NonFiniteLossError",
    "TeacherCallback",
    "TransformPairMaker",
    "TransformationConfig",
    "TransformedPair",
    "apply_transformation",
    "build_transform_pair_dataset",
    "build_view_transform",
    "collate_transform_pairs",
    "embedded_photos",
    "image_folder_to_parquet",
    "load_images",
    "make_transformed_pair",
]
