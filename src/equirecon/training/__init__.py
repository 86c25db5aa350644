"""Pretraining: transform pairs from images (CPU, per example), g_θ on the device (per batch), and the Trainer."""

from .arguments import DataArguments, EquiReconTrainingArguments, EvaluationArguments, ModelArguments
from .data import (
    build_transform_pair_dataset,
    collate_transform_pairs,
    embedded_photos,
    image_folder_to_parquet,
    load_images,
)
from .trainer import EquiReconTrainer, NonFiniteLossError
from .transformations import (
    FAMILIES,
    TransformationConfig,
    TransformedPair,
    apply_transformation,
    make_transformed_pair,
)
from .views import VIEW_PRESETS, TransformPairMaker, build_view_transform

__all__ = [
    "FAMILIES",
    "VIEW_PRESETS",
    "DataArguments",
    "EquiReconTrainer",
    "EquiReconTrainingArguments",
    "EvaluationArguments",
    "ModelArguments",
    "NonFiniteLossError",
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
