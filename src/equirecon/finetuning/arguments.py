"""Arguments of `equirecon finetune`, as dataclasses for `HfArgumentParser` (the run_image_classification layout:
model, data, training)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from transformers import TrainingArguments

from ..modeling.configuration_equirecon import SEGMENTATION_HEADS
from ..run_directory import RunOutputArguments
from .data import BUILTIN_DATASETS, DEFAULT_DATASETS

__all__ = ["FinetuneDataArguments", "FinetuneModelArguments", "FinetuneTrainingArguments"]


@dataclass
class FinetuneModelArguments:
    """Which checkpoint to start from and how to attach the head."""

    task: str | None = field(
        default=None,
        metadata={"help": "classification or segmentation (also accepted as the first, positional argument)."},
    )
    model: str | None = field(
        default=None,
        metadata={
            "help": "Checkpoint to fine-tune: an EquiRecon pretraining or fine-tuned directory, or any transformers "
            "model with an image-classification / semantic-segmentation head (Hub id or folder).",
            "aliases": ["--model_name_or_path"],
        },
    )
    revision: str | None = field(default=None, metadata={"help": "Hub revision (branch, tag or commit) of --model."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow custom code from --model."})
    freeze_backbone: bool = field(
        default=False, metadata={"help": "Train only the head (linear probing); the encoder gets no gradient."}
    )
    head_init: str = field(
        default="probe",
        metadata={
            "help": "How a frozen encoder's new linear classification head starts: `probe` (logistic regression on "
            "the frozen features of the training images, as `equirecon evaluate linear`; the epochs then adapt it "
            "to the augmentations) or `random`.",
            "choices": ["probe", "random"],
        },
    )
    segmentation_head: str | None = field(
        default=None,
        metadata={
            "help": f"EquiRecon segmentation head, one of {SEGMENTATION_HEADS} (default: a segmentation checkpoint's "
            "own head, else linear, DINOv2's protocol)."
        },
    )
    out_indices: list[int] | None = field(
        default=None, metadata={"help": "Encoder layers the UPerNet head reads (4 hidden-state indices)."}
    )
    use_auxiliary_head: bool | None = field(
        default=None, metadata={"help": "UPerNet's FCN auxiliary head (default: the checkpoint's)."}
    )
    image_size: int | None = field(
        default=None,
        metadata={"help": "Training and evaluation resolution (default: the checkpoint's image processor or config)."},
    )
    ignore_mismatched_sizes: bool = field(
        default=False, metadata={"help": "Re-initialise a head whose shape differs (another number of classes)."}
    )
    config_overrides: str | None = field(
        default=None,
        metadata={
            "help": "Comma-separated config fields for the new head, e.g. 'segmentation_channels=128,"
            "auxiliary_loss_weight=0.2'."
        },
    )


@dataclass
class FinetuneDataArguments:
    """Where the labelled images come from (see `equirecon.training.downstream_data`)."""

    dataset: str | None = field(
        default=None,
        metadata={
            "help": f"Built-in name ({', '.join(BUILTIN_DATASETS)}), a folder (save_to_disk, image folder with "
            "class sub-folders, or images/ + annotations/), or a Hub dataset. Default: "
            f"{DEFAULT_DATASETS['classification']} / {DEFAULT_DATASETS['segmentation']}."
        },
    )
    dataset_config_name: str | None = field(default=None, metadata={"help": "Hub dataset configuration name."})
    train_split: str = field(default="train", metadata={"help": "Split to train on."})
    eval_split: str | None = field(
        default=None, metadata={"help": "Split to evaluate on (default: validation/val/test, else split off)."}
    )
    validation_fraction: float = field(
        default=0.15, metadata={"help": "Fraction of the training split held out when there is no evaluation split."}
    )
    image_column: str | None = field(default=None, metadata={"help": "Image column (default: found automatically)."})
    label_column: str | None = field(
        default=None, metadata={"help": "Label column: class ids, or label maps for segmentation (default: found)."}
    )
    id2label: str | None = field(
        default=None, metadata={"help": "Local JSON file of class names ({'0': 'wall', ...}) or a list of names."}
    )
    num_labels: int | None = field(
        default=None, metadata={"help": "Segmentation classes when the dataset names none (names become 0..N-1)."}
    )
    reduce_labels: bool = field(
        default=False, metadata={"help": "ADE20K convention: label 0 ('other') is ignored, k becomes k - 1."}
    )
    max_train_samples: int | None = field(default=None, metadata={"help": "Train on a random subset this large."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Evaluate on the first N examples."})
    crop_scale: list[float] | None = field(
        default=None,
        metadata={
            "help": "Classification: RandomResizedCrop area range (default: DINOv2's 0.08 1.0; 0.5 1.0 for the "
            "built-in 8×8 digits and 25×25 faces, and 1.0 1.0, the whole image, for digits with --freeze_backbone)."
        },
    )
    scale_range: list[float] = field(
        default_factory=lambda: [0.5, 2.0],
        metadata={"help": "Segmentation: random rescale range before the crop (mmsegmentation's ADE20K 0.5 2.0)."},
    )
    horizontal_flip: bool | None = field(
        default=None, metadata={"help": "Random horizontal flips (default: on, except for digits)."}
    )


@dataclass
class FinetuneTrainingArguments(RunOutputArguments, TrainingArguments):
    """`TrainingArguments` with the defaults a fine-tuning run needs (raw columns kept for the transforms, metrics
    computed batch by batch) and that finish the offline default in a few minutes on a CPU."""

    output_dir: str | None = field(
        default=None, metadata={"help": "Where the model is written (default: runs/equirecon-<task>)."}
    )
    remove_unused_columns: bool = field(
        default=False, metadata={"help": "Keep the image/label columns: the transforms need them."}
    )
    batch_eval_metrics: bool = field(
        default=True, metadata={"help": "Accumulate metrics batch by batch instead of holding every logit."}
    )
    eval_strategy: str = field(default="epoch", metadata={"help": "When to evaluate."})
    save_strategy: str = field(default="epoch", metadata={"help": "When to checkpoint."})
    save_total_limit: int | None = field(default=1, metadata={"help": "Checkpoints kept."})
    num_train_epochs: float = field(default=3.0, metadata={"help": "Passes over the training set."})
    per_device_train_batch_size: int = field(default=32, metadata={"help": "Batch size per device."})
    per_device_eval_batch_size: int = field(default=64, metadata={"help": "Evaluation batch size per device."})
    learning_rate: float = field(default=1e-4, metadata={"help": "Peak learning rate."})
    weight_decay: float = field(default=0.05, metadata={"help": "AdamW weight decay."})
    lr_scheduler_type: str = field(default="cosine", metadata={"help": "Learning-rate schedule."})
    warmup_steps: float = field(default=0.1, metadata={"help": "Warm-up steps, or a fraction of training if < 1."})
    logging_steps: float = field(default=10, metadata={"help": "Log every N steps."})

    def __post_init__(self) -> None:
        if self.max_steps == 0 or self.max_steps < -1:
            raise ValueError(f"--max_steps must be >= 1 (or -1: --num_train_epochs decides), got {self.max_steps}.")
        if self.num_train_epochs <= 0:
            raise ValueError(f"--num_train_epochs must be > 0, got {self.num_train_epochs}.")
        super().__post_init__()
        if self.dataloader_pin_memory and not torch.cuda.is_available():
            self.dataloader_pin_memory = False  # nothing to pin for; silences DataLoader's warning on CPU
