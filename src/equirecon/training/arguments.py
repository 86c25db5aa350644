"""Arguments of `equirecon pretrain`, as dataclasses for `HfArgumentParser` (the run_mae layout: model, data,
training)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, make_dataclass
from typing import Any

import torch
from transformers import TrainingArguments
from transformers.integrations import get_available_reporting_integrations

from ..imaging.transformations import FAMILIES, RANGE_FIELDS, TransformationConfig
from ..run_directory import RunOutputArguments
from .views import VIEW_PRESETS


@dataclass
class ModelArguments:
    """Which model to pretrain: a preset from the paper, an existing EquiRecon checkpoint to continue, or a
    transformers encoder checkpoint to start from (`init_from`)."""

    preset: str | None = field(
        default=None,
        metadata={
            "help": "Named configuration (EquiReconConfig.from_preset): tiny, vicreg-vit-s16, ... Default: tiny; "
            "with --init_from, EquiReconConfig's defaults (the paper's heads) around the checkpoint's encoder."
        },
    )
    model_name_or_path: str | None = field(
        default=None, metadata={"help": "An EquiRecon pretraining checkpoint (directory or Hub id) to continue from."}
    )
    init_from: str | None = field(
        default=None,
        metadata={
            "help": "A transformers DINOv2, ViT, DeiT or ViTMAE checkpoint (directory or Hub id) to start the encoder "
            "from: its architecture, patch and image size and normalisation are kept, the heads and decoders start "
            "fresh. A --preset must have the same encoder sizes."
        },
    )
    config_overrides: str | None = field(
        default=None,
        metadata={
            "help": "Comma-separated EquiReconConfig or encoder fields, e.g. 'd_patch=512,d_equi=256,ssl_objective="
            "simclr' (d_patch: width of the per-token head, not a patch size; d_equi: its last channels, the "
            "equivariant part)."
        },
    )
    image_size: int | None = field(
        default=None,
        metadata={
            "help": "Pretraining image size (default: the preset's, or the --init_from checkpoint's; another size "
            "resizes the checkpoint's position embeddings)."
        },
    )
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow custom code from model_name_or_path."})

    def __post_init__(self) -> None:
        if self.preset in ("None", "none", ""):  # how a recipe's preset is taken back on the command line
            self.preset = None
        if self.init_from and self.model_name_or_path:
            raise ValueError(
                f"--init_from {self.init_from} and --model_name_or_path {self.model_name_or_path} both give the "
                "weights: --init_from starts a new model from a transformers encoder, --model_name_or_path continues "
                "an EquiRecon checkpoint; pass one."
            )


@dataclass
class DataArguments:
    """Where images come from. Anything `equirecon.imaging.load_images` reads: "embedded" (the photos that
    ship with scikit-image and scikit-learn), a Hub dataset name, an image folder, Parquet files."""

    dataset: str = field(
        default="embedded", metadata={"help": "Dataset: 'embedded', a Hub name, a folder or Parquet."}
    )
    dataset_config_name: str | None = field(default=None, metadata={"help": "Hub dataset configuration name."})
    train_split: str = field(default="train", metadata={"help": "Split to pretrain on."})
    validation_split: str | None = field(
        default="validation",
        metadata={
            "help": "Held-out split: held-out losses and the equivariance benchmark for the card. None, or a source "
            "without it (a plain image folder): the run trains, skips both, and its card says it was not evaluated."
        },
    )
    image_column: str | None = field(default=None, metadata={"help": "Image column (default: found automatically)."})
    streaming: bool = field(default=False, metadata={"help": "Stream the training split instead of downloading it."})
    num_shards: int | None = field(
        default=None, metadata={"help": "Shards for an in-memory dataset (parallel workers, multi-process split)."}
    )
    shuffle_buffer_size: int = field(default=1000, metadata={"help": "Shuffle buffer of the streamed dataset."})
    max_eval_samples: int = field(default=256, metadata={"help": "Transform pairs in the fixed evaluation set."})

    def __post_init__(self) -> None:
        if self.validation_split in ("None", "none", ""):  # the help's spelling of "no evaluation"
            self.validation_split = None
        if self.max_eval_samples < 1:
            raise ValueError(f"--max_eval_samples must be >= 1, got {self.max_eval_samples}.")


def default_dataloader_workers() -> int:
    """DataLoader workers when none are asked for: with CUDA, this process's share of the CPU cores less the one it
    runs on (at most 16), so that the pair pipeline keeps up with the device (decoding a photo costs more than a
    ViT-S/16 step spends on it); without CUDA none, as the cores would be taken from the model."""
    if not torch.cuda.is_available():
        return 0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(16, cores // int(os.environ.get("LOCAL_WORLD_SIZE", 1)) - 1))


#: The training flags that set model config fields (K, λ and the SSL weight): the config owns them, so
#: `equirecon pretrain` builds the model with them and `EquiReconTrainer` refuses a model whose config disagrees.
MODEL_CONFIG_FLAGS: tuple[str, ...] = ("num_intermediates", "reconstruction_weight", "ssl_weight")

#: One optional flag per range of `TransformationConfig` (`RANGE_FIELDS`), with its help: each given one takes
#: precedence over the model config's `transformation`.
TransformationRangeArguments = make_dataclass(
    "TransformationRangeArguments",
    [
        (f.name, list[float] | None, field(default=None, metadata={"help": f.metadata["help"]}))
        for f in TransformationConfig.range_fields()
    ],
)


@dataclass
class EquiReconTrainingArguments(RunOutputArguments, TransformationRangeArguments, TrainingArguments):
    """`TrainingArguments` plus the method's own: the learning-rate scaling rule, the loss weights, the
    transformation g_θ and its ranges (`TransformationRangeArguments`), K, and the base-view augmentations."""

    base_learning_rate: float | None = field(
        default=None,
        metadata={"help": "If set, learning_rate = base_learning_rate × effective batch size / 256 (as run_mae)."},
    )
    # λ, K and the SSL weight belong to the model config (`MODEL_CONFIG_FLAGS`).
    ssl_weight: float | None = field(
        default=None, metadata={"help": "Weight of the host SSL loss, set in the model config (default: its, 1.0)."}
    )
    reconstruction_weight: float | None = field(
        default=None,
        metadata={"help": "λ, weight of the reconstruction loss, set in the model config (default: the config's)."},
    )
    num_intermediates: int | None = field(
        default=None,
        metadata={"help": "K intermediate targets, set in the model config (default: its; must match a checkpoint)."},
    )
    transformation_family: str | None = field(
        default=None, metadata={"help": f"g_θ family, one of {FAMILIES} (default: the model config's)."}
    )
    transformation_components: list[str] | None = field(
        default=None, metadata={"help": "Families composed when transformation_family is 'composite'."}
    )
    view_preset: str = field(default="all", metadata={"help": f"Base augmentations A1/A2, one of {VIEW_PRESETS}."})
    crop_scale: list[float] = field(default_factory=lambda: [0.32, 1.0], metadata={"help": "RandomResizedCrop scale."})
    context_fill: str = field(
        default="reflect",
        metadata={
            "help": "What g_θ draws in from beyond the photo's border: its reflection (natural photos) or black "
            "(objects on a black background, e.g. fashion_mnist).",
            "choices": ["reflect", "black"],
        },
    )
    local_crops_number: int = field(
        default=0,
        metadata={"help": "Multi-crop: local crops per image, seen by the student only (DINO family; DINOv2 uses 8)."},
    )
    local_crops_scale: list[float] = field(
        default_factory=lambda: [0.05, 0.32], metadata={"help": "RandomResizedCrop scale of the local crops."}
    )
    local_crops_size: int | None = field(
        default=None, metadata={"help": "Local crop side (default: 96/224 of the image size, in whole patches)."}
    )
    # Defaults that SSL batches need (no labels, extra columns) and that suit a first run.
    remove_unused_columns: bool = field(default=False, metadata={"help": "Keep the transform-pair columns."})
    label_names: list[str] | None = field(default_factory=list, metadata={"help": "SSL batches carry no labels."})
    output_dir: str | None = field(default="runs/equirecon-tiny", metadata={"help": "Where the run is written."})
    max_steps: int = field(default=200, metadata={"help": "Optimizer steps (a streamed dataset has no length)."})
    per_device_train_batch_size: int = field(default=32, metadata={"help": "Batch size per device."})
    learning_rate: float = field(default=5e-4, metadata={"help": "Peak learning rate (see base_learning_rate)."})
    weight_decay: float = field(default=0.05, metadata={"help": "AdamW weight decay."})
    lr_scheduler_type: str = field(default="cosine", metadata={"help": "Learning-rate schedule."})
    warmup_steps: float = field(default=0.1, metadata={"help": "Warm-up steps, or a fraction of max_steps if < 1."})
    logging_steps: float = field(default=10, metadata={"help": "Log every N steps."})
    save_steps: float = field(default=100, metadata={"help": "Checkpoint every N steps."})
    save_total_limit: int | None = field(default=2, metadata={"help": "Checkpoints kept."})
    dataloader_num_workers: int = field(
        default_factory=default_dataloader_workers,
        metadata={"help": "DataLoader worker processes (default: with CUDA, the process's share of the cores - 1)."},
    )
    accelerator_config: dict | str | None = field(
        # Each process reads its own shards of a streamed dataset instead of rank 0 reading for everyone.
        default_factory=lambda: {"dispatch_batches": False},
        metadata={"help": "accelerate settings (default: every process reads its own shards)."},
    )

    def __post_init__(self) -> None:
        if self.dataloader_pin_memory and not torch.cuda.is_available():
            self.dataloader_pin_memory = False  # pinning needs an accelerator; torch warns on every loader otherwise
        if self.max_steps < 1:  # the stream is endless: only max_steps ends the run
            raise ValueError(f"--max_steps must be >= 1 (the training stream has no end), got {self.max_steps}.")
        super().__post_init__()
        if self.base_learning_rate is not None:
            self.learning_rate = self.base_learning_rate * self.effective_batch_size / 256
        if self.view_preset not in VIEW_PRESETS:
            raise ValueError(f"--view_preset must be one of {VIEW_PRESETS}, got {self.view_preset!r}.")
        if any(weight is not None and weight < 0 for weight in (self.ssl_weight, self.reconstruction_weight)):
            raise ValueError("--ssl_weight and --reconstruction_weight must be >= 0.")
        if self.local_crops_number < 0:
            raise ValueError(f"--local_crops_number must be >= 0, got {self.local_crops_number}.")
        if self.num_intermediates is not None and self.num_intermediates < 1:
            raise ValueError(f"--num_intermediates must be >= 1, got {self.num_intermediates}.")
        installed = get_available_reporting_integrations()
        missing = [name for name in self.report_to if name not in installed]
        if missing:  # otherwise Trainer fails with a traceback once the model is built
            raise ValueError(
                f"--report_to {' '.join(missing)}: not installed here (e.g. `pip install {missing[0]}`); installed "
                f"loggers: {', '.join(installed) or 'none'}."
            )

    @property
    def effective_batch_size(self) -> int:
        """Images per optimizer step over all processes: per-device batch × accumulation × world size."""
        return self.per_device_train_batch_size * self.gradient_accumulation_steps * self.world_size

    def model_config_overrides(self) -> dict[str, Any]:
        """The model config fields these arguments set: the `MODEL_CONFIG_FLAGS` given."""
        return {name: getattr(self, name) for name in MODEL_CONFIG_FLAGS if getattr(self, name) is not None}

    def transformation_config(self, model_transformation: dict[str, Any]) -> TransformationConfig:
        """The g_θ to train with: the model config's, with the ranges and family given here taking precedence."""
        fields_ = dict(model_transformation)
        if self.transformation_family is not None:
            fields_["family"] = self.transformation_family
        if self.transformation_components is not None:
            fields_["components"] = self.transformation_components
        for name in RANGE_FIELDS:
            value = getattr(self, name)
            if value is not None:
                if len(value) != 2:
                    raise ValueError(f"--{name} takes two numbers (low high), got {value}.")
                fields_[name] = value
        return TransformationConfig.from_dict(fields_)


@dataclass
class EvaluationArguments:
    """The evaluation `equirecon pretrain` runs at the end: the paper's equivariance R² benchmark on held-out photos,
    whose results go into the model card. It is `equirecon evaluate equivariance`'s: what is not set here (None) is
    that command's default, which `equirecon.commands.pretrain` reads from its arguments."""

    equivariance_benchmark: bool = field(default=True, metadata={"help": "Run the benchmark after pretraining."})
    equivariance_families: list[str] | None = field(
        default=None,
        metadata={"help": "Families of the equivariance benchmark (default: equirecon evaluate equivariance's)."},
    )
    equivariance_features: list[str] = field(
        default_factory=lambda: ["mean_patch", "equivariant"],
        metadata={
            "help": "Feature read-outs scored (the first is the card's headline): the backbone's mean patch token "
            "and the head's equivariant part, where reconstruction acts; also cls, pooled, invariant."
        },
    )
    equivariance_reference: bool = field(
        default=True,
        metadata={
            "help": "Also score the model the run started from (its random initialisation, the --init_from encoder "
            "or the --model_name_or_path checkpoint): the reference row."
        },
    )
    equivariance_num_crops: int | None = field(
        default=None,
        metadata={
            "help": "Crops of the benchmark: 3/5 fit the θ regressor, 1/5 stops it early, 1/5 is scored (default: "
            "equirecon evaluate equivariance's)."
        },
    )
    equivariance_epochs: int | None = field(
        default=None,
        metadata={
            "help": "Epochs of the θ regressor at most, early-stopped on held-out photos (default: equirecon "
            "evaluate equivariance's)."
        },
    )
    equivariance_max_images: int = field(default=500, metadata={"help": "Photos of the evaluation split used."})
