"""The record a pretraining run leaves (`equirecon_run.json`): what the model card is written from, so every line of
the card is a measured or recorded fact of the run, interruptions and skipped images included."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

from ..imaging.transformations import TransformationConfig
from ..modeling import EquiReconConfig
from .arguments import DataArguments, EquiReconTrainingArguments, ModelArguments
from .trainer import EquiReconTrainer

__all__ = ["RECORDED_TRAINING_ARGUMENTS", "run_record"]

#: The training arguments the card reports.
RECORDED_TRAINING_ARGUMENTS = frozenset(
    {
        "max_steps",
        "per_device_train_batch_size",
        "gradient_accumulation_steps",
        "learning_rate",
        "base_learning_rate",
        "weight_decay",
        "lr_scheduler_type",
        "warmup_steps",
        "seed",
        "bf16",
        "fp16",
        "view_preset",
        "crop_scale",
        "context_fill",
    }
)


def run_record(
    model_args: ModelArguments,
    data_args: DataArguments,
    training_args: EquiReconTrainingArguments,
    config: EquiReconConfig,
    transformation: TransformationConfig,
    trainer: EquiReconTrainer,
    metrics: dict[str, Any],
    wall_time_seconds: float,
) -> dict[str, Any]:
    """The run's arguments, recipe, metrics and last losses; `resumed` (None, or the checkpoint, its step and the
    training time before the interruption: `wall_time_seconds` is this session's) and `skipped_images` (the
    undecodable images the run skipped, by name)."""
    return {
        "model_arguments": asdict(model_args),
        "data_arguments": asdict(data_args),
        "training_arguments": {
            key: value for key, value in training_args.to_dict().items() if key in RECORDED_TRAINING_ARGUMENTS
        },
        "init_from": _initialisation_record(model_args.init_from, config),
        "effective_batch_size": training_args.effective_batch_size,
        "world_size": training_args.world_size,
        "reconstruction_weight": config.reconstruction_weight,
        "ssl_weight": config.ssl_weight,
        "transformation": transformation.to_dict(),
        "wall_time_seconds": wall_time_seconds,
        "resumed": trainer.training_time.resumed,
        "skipped_images": trainer.skipped_images,
        "metrics": metrics,
        "final_train_losses": _last_logged_losses(trainer.state.log_history),
    }


def _initialisation_record(source: str | None, config: EquiReconConfig) -> dict[str, Any] | None:
    """Which checkpoint the encoder started from, for the model card (`local`: a directory, not a Hub id)."""
    if not source:
        return None
    return {
        "checkpoint": source,
        "local": Path(source).expanduser().is_dir(),
        "model_type": config.backbone_config.model_type,
    }


def _last_logged_losses(history: list[dict[str, Any]]) -> dict[str, float]:
    for entry in reversed(history):
        if "loss" in entry:
            return {key: entry[key] for key in ("loss", "ssl_loss", "reconstruction_loss") if key in entry}
    return {}
