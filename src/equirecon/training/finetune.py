"""`equirecon finetune classification|segmentation`: fine-tune or probe a checkpoint on a labelled dataset.

    equirecon finetune classification --model runs/equirecon-tiny                     # offline default: digits
    equirecon finetune classification --model DIR --config recipes/finetune-linear-probe.json
    equirecon finetune segmentation --model DIR --config recipes/segmentation-upernet.json \\
        --dataset /data/ADEChallengeData2016 --id2label ade20k-id2label.json

The run_image_classification / run_semantic_segmentation recipe on ``Trainer``: the checkpoint is loaded into
``AutoModelForImageClassification`` / ``AutoModelForSemanticSegmentation`` (an EquiRecon pretraining directory
gives its encoder; only the new head is initialised), albumentations augmentations feed it, accuracy or mean IoU
are computed batch by batch on the device (``batch_eval_metrics``), and the output directory receives the model,
an image processor that makes ``pipeline(...)`` work, the metrics and a model card. Any ``TrainingArguments`` flag
is accepted; a JSON/YAML recipe given with ``--config`` sets defaults that later flags override.

Recipes (``recipes/``), the usual protocols:

=============================  ======================================================================================
``finetune-linear-probe.json``  encoder frozen, linear classifier on CLS + mean patch token; AdamW 1e-3, no weight
                                decay, cosine, 10 epochs, batch 128, random-resized-crop + flip
``finetune-full.json``          everything trained; AdamW 1e-4, weight decay 0.05, 10% warm-up, cosine, label
                                smoothing 0.1, 10 epochs, batch 64 (no layer-wise lr decay: Trainer has none)
``segmentation-linear.json``    DINOv2's ADE20K linear protocol: encoder frozen, BatchNorm + 1×1 conv on the last
                                layer, 512², 40k steps, batch 16, AdamW 1e-3, poly schedule, 1.5k warm-up steps
``segmentation-upernet.json``   mmsegmentation's ViT + UPerNet ADE20K schedule: everything trained, auxiliary FCN
                                head (0.4), 512², 160k steps, batch 16, AdamW 6e-5, weight decay 0.01, poly
=============================  ======================================================================================

The segmentation recipes set ADE20K's label convention (``reduce_labels``, 150 classes) and need ``--dataset``.
Evaluation resizes each image to the training size (the saved processor's geometry), not mmsegmentation's
sliding window at full resolution, so its mIoU is not the number ADE20K papers report.
"""

from __future__ import annotations

import logging
import math
import os
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import EvalResult, ModelCard
from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModelForImageClassification,
    AutoModelForSemanticSegmentation,
    EvalPrediction,
    HfArgumentParser,
    PreTrainedModel,
    SegformerImageProcessorPil,
    Trainer,
    TrainingArguments,
    ViTImageProcessorPil,
)
from transformers.image_utils import PILImageResampling

from ..evaluation.loading import InputSpec
from ..evaluation.segmentation import ConfusionMatrix, SegmentationMetric
from ..modeling.configuration_equirecon import SEGMENTATION_HEADS
from .command_line import (
    ArgumentError,
    check_output_dir,
    parse_config_overrides,
    parse_dataclass_arguments,
    pop_config_file,
)
from .downstream_data import (
    BUILTIN_DATASETS,
    DEFAULT_DATASETS,
    TASKS,
    DownstreamData,
    DownstreamTransform,
    build_transform,
    collate_downstream,
    load_downstream_dataset,
    read_id2label,
)

__all__ = [
    "ClassificationMetric",
    "FinetuneDataArguments",
    "FinetuneModelArguments",
    "FinetuneTrainingArguments",
    "image_processor_for",
    "load_model",
    "main",
    "parse_arguments",
    "run",
    "write_model_card",
]

logger = logging.getLogger(__name__)

_PIPELINE_TASKS = {"classification": "image-classification", "segmentation": "image-segmentation"}
# Metrics written to the model card's model-index: (key without "eval_", display name).
_CARD_METRICS = {
    "classification": [("accuracy", "Accuracy"), ("mean_class_accuracy", "Mean per-class accuracy")],
    "segmentation": [
        ("mean_iou", "Mean IoU"),
        ("mean_accuracy", "Mean accuracy"),
        ("overall_accuracy", "Pixel accuracy"),
    ],
}


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
            "built-in 8×8 digits and 25×25 faces)."
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
class FinetuneTrainingArguments(TrainingArguments):
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
        super().__post_init__()
        if self.dataloader_pin_memory and not torch.cuda.is_available():
            self.dataloader_pin_memory = False  # nothing to pin for; silences DataLoader's warning on CPU


# ------------------------------------------------------------------------------------------------------ metrics


class ClassificationMetric:
    """Streaming ``compute_metrics`` for ``TrainingArguments(batch_eval_metrics=True)``: top-1 accuracy and the mean
    per-class accuracy (balanced accuracy), from a confusion matrix that stays on the device.

    Trainer calls it once per evaluation batch with that batch's logits ``(B, C)`` and labels ``(B,)``; the metrics
    come back on the last batch and the matrix is reset for the next evaluation. Labels equal to -100 (Trainer's
    padding across processes) are skipped.
    """

    def __init__(self, num_labels: int) -> None:
        self.confusion = ConfusionMatrix(num_labels, ignore_index=None)

    @torch.no_grad()
    def update(self, logits: Any, labels: Any) -> None:
        if isinstance(logits, tuple | list):
            logits = logits[0]
        logits = torch.as_tensor(logits)
        labels = torch.as_tensor(labels, device=logits.device).reshape(-1)
        predictions = logits.argmax(dim=-1).reshape(-1)
        keep = labels != -100
        self.confusion.update(predictions[keep], labels[keep])

    def compute(self) -> dict[str, float]:
        result = self.confusion.compute()
        return {"accuracy": float(result["overall_accuracy"]), "mean_class_accuracy": float(result["mean_accuracy"])}

    def __call__(self, eval_pred: EvalPrediction, compute_result: bool = True) -> dict[str, float]:
        self.update(eval_pred.predictions, eval_pred.label_ids)
        if not compute_result:
            return {}
        metrics = self.compute()
        self.confusion.reset()
        return metrics


# ------------------------------------------------------------------------------------------------------ arguments


def parse_arguments(
    argv: list[str],
) -> tuple[FinetuneModelArguments, FinetuneDataArguments, FinetuneTrainingArguments]:
    """``[task] [--config FILE] [flags]``: the recipe's values first, then the command line; one-line
    ``ArgumentError`` for anything unknown or inconsistent."""
    argv = list(argv)
    parser = HfArgumentParser((FinetuneModelArguments, FinetuneDataArguments, FinetuneTrainingArguments))
    if "-h" in argv or "--help" in argv:
        parser.prog = "equirecon finetune"
        parser.usage = "equirecon finetune {classification,segmentation} --model DIR [--config RECIPE] [options]"
        parser.print_help()
        raise SystemExit(0)
    positional_task = argv.pop(0) if argv and not argv[0].startswith("-") else None
    recipe, argv = pop_config_file(argv)
    recipe_task = _last_value(recipe, "--task")
    command_task = _last_value(argv, "--task")
    if positional_task is not None and command_task is not None and positional_task != command_task:
        raise ArgumentError(f"task given twice: {positional_task!r} and --task {command_task!r}")
    task = positional_task or command_task or recipe_task
    if task is None:
        raise ArgumentError("name the task: `equirecon finetune classification|segmentation --model DIR ...`")
    if task not in TASKS:
        raise ArgumentError(f"unknown task {task!r}; choose one of {list(TASKS)}")
    if recipe_task is not None and recipe_task != task:
        raise ArgumentError(f"the --config recipe is for {recipe_task}, not {task}")
    argv = recipe + argv + ["--task", task]
    if "--output_dir" not in argv:
        argv += ["--output_dir", f"runs/equirecon-{task}"]
    model_args, data_args, training_args = parse_dataclass_arguments(parser, argv, "finetune")
    _check_arguments(model_args, data_args)
    return model_args, data_args, training_args


def _last_value(argv: list[str], flag: str) -> str | None:
    values = [argv[i + 1] for i, arg in enumerate(argv[:-1]) if arg == flag]
    return values[-1] if values else None


def _check_arguments(model_args: FinetuneModelArguments, data_args: FinetuneDataArguments) -> None:
    if not model_args.model:
        raise ArgumentError("--model is required: an EquiRecon checkpoint directory (e.g. runs/equirecon-tiny)")
    if model_args.segmentation_head is not None and model_args.segmentation_head not in SEGMENTATION_HEADS:
        raise ArgumentError(
            f"--segmentation_head must be one of {SEGMENTATION_HEADS}, got {model_args.segmentation_head!r}"
        )
    if model_args.task == "classification":
        for name in ("segmentation_head", "out_indices", "use_auxiliary_head"):
            if getattr(model_args, name) is not None:
                raise ArgumentError(f"--{name} is a segmentation option")
    if model_args.image_size is not None and model_args.image_size < 1:
        raise ArgumentError(f"--image_size must be positive, got {model_args.image_size}")
    for name, values in (("crop_scale", data_args.crop_scale), ("scale_range", data_args.scale_range)):
        if values is not None and len(values) != 2:
            raise ArgumentError(f"--{name} takes two numbers (low high), got {values}")
    if data_args.num_labels is not None and data_args.num_labels < 2:
        raise ArgumentError(f"--num_labels must be >= 2, got {data_args.num_labels}")


# --------------------------------------------------------------------------------------------------------- model


def load_model(
    model_args: FinetuneModelArguments, id2label: dict[int, str], task: str
) -> tuple[PreTrainedModel, list[str]]:
    """The checkpoint with a ``num_labels`` head for ``task``, and the parameter names it had to initialise."""
    hub_kwargs: dict[str, Any] = {"revision": model_args.revision, "trust_remote_code": model_args.trust_remote_code}
    try:
        config = AutoConfig.from_pretrained(model_args.model, **hub_kwargs)
    except (OSError, ValueError) as error:
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ArgumentError(f"--model {model_args.model}: cannot load a config ({first})") from error
    is_equirecon = config.model_type == "equirecon"
    overrides: dict[str, Any] = {
        "num_labels": len(id2label),
        "id2label": {int(k): v for k, v in id2label.items()},
        "label2id": {v: int(k) for k, v in id2label.items()},
    }
    if task == "classification":
        overrides["problem_type"] = "single_label_classification"
    equirecon_only = {
        "segmentation_head": model_args.segmentation_head,
        "out_indices": model_args.out_indices,
        "use_auxiliary_head": model_args.use_auxiliary_head,
    }
    given = {key: value for key, value in equirecon_only.items() if value is not None}
    if given and not is_equirecon:
        raise ArgumentError(
            f"--{next(iter(given))} applies to EquiRecon checkpoints; {model_args.model} is {config.model_type}"
        )
    overrides.update(given)
    if is_equirecon and task == "segmentation" and "segmentation_head" not in given:
        # A pretraining checkpoint's `segmentation_head` is only the config default, not a choice: start from the
        # light DINOv2 linear protocol; a segmentation checkpoint keeps the head its weights are for.
        if "EquiReconForSemanticSegmentation" not in (config.architectures or []):
            overrides["segmentation_head"] = "linear"
    extra = parse_config_overrides(model_args.config_overrides)
    unknown = sorted(key for key in extra if not hasattr(config, key))
    if unknown:
        raise ArgumentError(f"--config_overrides: {config.model_type} configs have no field(s) {unknown}")
    overrides.update(extra)
    if is_equirecon:
        overrides["freeze_backbone"] = model_args.freeze_backbone
    auto_class = AutoModelForImageClassification if task == "classification" else AutoModelForSemanticSegmentation
    try:
        model, info = auto_class.from_pretrained(
            model_args.model,
            ignore_mismatched_sizes=model_args.ignore_mismatched_sizes,
            output_loading_info=True,
            **hub_kwargs,
            **overrides,
        )
    except ValueError as error:  # unsupported architecture, bad config override
        raise ArgumentError(f"--model {model_args.model}: {str(error).splitlines()[0]}") from error
    except RuntimeError as error:  # size mismatch of an existing head
        raise ArgumentError(
            f"--model {model_args.model}: its head does not fit {len(id2label)} classes; pass "
            "--ignore_mismatched_sizes to start a new head"
        ) from error
    if model_args.freeze_backbone:
        if hasattr(model, "freeze_backbone"):
            model.freeze_backbone()
        else:  # a non-EquiRecon model: freeze its base model, train what sits on top
            model.base_model.requires_grad_(False)
    new = sorted(set(info["missing_keys"]) | {key for key, *_ in info.get("mismatched_keys", [])})
    return model, new


def _summarise_keys(keys: list[str]) -> str:
    """``['classifier.bias', 'classifier.weight']`` → ``'classifier (2 tensors)'``."""
    groups = Counter(key.split(".")[0] for key in keys)
    return ", ".join(f"{name} ({count} tensor{'s' if count > 1 else ''})" for name, count in sorted(groups.items()))


def _input_spec(model_args: FinetuneModelArguments, model: PreTrainedModel) -> InputSpec:
    try:
        processor = AutoImageProcessor.from_pretrained(
            model_args.model, revision=model_args.revision, trust_remote_code=model_args.trust_remote_code
        )
    except (OSError, ValueError, KeyError):  # no preprocessor_config.json: the config's size, ImageNet statistics
        processor = None
    return InputSpec.from_model(model, processor).with_size(model_args.image_size)


def image_processor_for(task: str, spec: InputSpec, reduce_labels: bool = False) -> Any:
    """The stock image processor saved with the fine-tuned model: resize to the training size, normalise.

    Classification gets a ``ViTImageProcessor``. Segmentation gets a ``SegformerImageProcessor``, the same
    resize/normalise plus the ``post_process_semantic_segmentation`` that ``pipeline("image-segmentation")`` calls
    (``ViTImageProcessor`` has none). The PIL classes are built (no torchvision needed, no fallback warning); they
    save the stock ``image_processor_type``, so ``AutoImageProcessor`` picks the torchvision backend where it exists.
    """
    height, width = spec.image_size
    common = {
        "do_resize": True,
        "size": {"height": height, "width": width},
        "resample": PILImageResampling.BILINEAR,
        "do_rescale": True,
        "do_normalize": True,
        "image_mean": list(spec.image_mean),
        "image_std": list(spec.image_std),
    }
    if task == "classification":
        return ViTImageProcessorPil(**common)
    return SegformerImageProcessorPil(**common, do_reduce_labels=reduce_labels)


# ---------------------------------------------------------------------------------------------------------- run


def _load_data(model_args: FinetuneModelArguments, data_args: FinetuneDataArguments, seed: int) -> DownstreamData:
    try:
        id2label = read_id2label(data_args.id2label) if data_args.id2label else None
        data = load_downstream_dataset(
            model_args.task,
            data_args.dataset,
            config_name=data_args.dataset_config_name,
            train_split=data_args.train_split,
            eval_split=data_args.eval_split,
            validation_fraction=data_args.validation_fraction,
            image_column=data_args.image_column,
            label_column=data_args.label_column,
            id2label=id2label,
            num_labels=data_args.num_labels,
            reduce_labels=data_args.reduce_labels,
            max_train_samples=data_args.max_train_samples,
            max_eval_samples=data_args.max_eval_samples,
            seed=seed,
        )
    except (ValueError, FileNotFoundError) as error:
        raise ArgumentError(f"--dataset {data_args.dataset or DEFAULT_DATASETS[model_args.task]}: {error}") from error
    if data_args.dataset is None:
        logger.warning("No --dataset given: using the built-in offline default %r, %s.", data.name, data.description)
    else:
        logger.info("Dataset: %s.", data.description)
    return data


def _protocol(model_args: FinetuneModelArguments, model: PreTrainedModel) -> str:
    probe = "linear probe (encoder frozen)" if model_args.freeze_backbone else "full fine-tuning"
    if model_args.task == "segmentation" and getattr(model.config, "segmentation_head", None):
        head = (
            "linear head on the last layer's patch grid"
            if model.config.segmentation_head == "linear"
            else (f"UPerNet head on layers {model.config.segmentation_out_indices}")
        )
        return f"{probe}, {head}"
    return f"{probe}, linear classifier on the CLS token and the mean patch token"


def run(
    model_args: FinetuneModelArguments, data_args: FinetuneDataArguments, training_args: FinetuneTrainingArguments
) -> dict[str, float]:
    """Fine-tune, evaluate, and write the model directory (model, image processor, metrics, model card).

    Everything that can be wrong with the arguments (output directory, dataset columns and labels, checkpoint) is
    checked before the first step. Returns the final evaluation metrics.
    """
    task = model_args.task
    check_output_dir(training_args.output_dir)
    data = _load_data(model_args, data_args, training_args.seed)
    model, new_keys = load_model(model_args, data.id2label, task)
    spec = _input_spec(model_args, model)
    logger.info(
        "Newly initialised from %s: %s.", model_args.model, _summarise_keys(new_keys) if new_keys else "nothing"
    )
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    logger.info(
        "%s: %s; training %d of %d parameters at %d×%d.",
        type(model).__name__,
        _protocol(model_args, model),
        trainable,
        model.num_parameters(),
        *spec.image_size,
    )

    ignore_index = int(getattr(model.config, "semantic_loss_ignore_index", 255))
    flip = data.flip_invariant if data_args.horizontal_flip is None else data_args.horizontal_flip
    crop_scale = tuple(data_args.crop_scale) if data_args.crop_scale is not None else data.crop_scale
    common = {"size": spec.image_size, "image_mean": spec.image_mean, "image_std": spec.image_std}

    def transform(train: bool) -> DownstreamTransform:
        pipeline = build_transform(
            task,
            train=train,
            crop_scale=crop_scale,
            scale_range=tuple(data_args.scale_range),
            horizontal_flip=flip,
            ignore_index=ignore_index,
            **common,
        )
        return DownstreamTransform(
            task,
            pipeline,
            image_column=data.image_column,
            label_column=data.label_column,
            reduce_labels=data.reduce_labels,
            ignore_index=ignore_index,
            seed=training_args.seed,
            rank=training_args.process_index,
        )

    try:
        train_transform, eval_transform = transform(train=True), transform(train=False)
    except ValueError as error:
        raise ArgumentError(str(error)) from error
    augmentation = _augmentation_summary(task, crop_scale, tuple(data_args.scale_range), flip, ignore_index)
    logger.info("Training augmentation: %s.", augmentation)
    metric = (
        ClassificationMetric(data.num_labels)
        if task == "classification"
        else SegmentationMetric(data.num_labels, ignore_index=ignore_index, id2label=data.id2label)
    )
    processor = image_processor_for(task, spec, data.reduce_labels)
    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=data.train.with_transform(train_transform),
        eval_dataset=data.eval.with_transform(eval_transform),
        data_collator=collate_downstream,
        processing_class=processor,
        compute_metrics=metric if training_args.batch_eval_metrics else _whole_set_metric(metric),
    )
    train_result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    trainer.save_model()
    trainer.log_metrics("train", train_result.metrics)
    metrics = trainer.evaluate()
    trainer.log_metrics("eval", metrics)
    if trainer.is_world_process_zero():
        trainer.save_metrics("train", train_result.metrics)
        trainer.save_metrics("eval", metrics)
        trainer.save_state()
        write_model_card(trainer, model_args, data, spec, metrics, augmentation)
    headline = "eval_accuracy" if task == "classification" else "eval_mean_iou"
    logger.info(
        "Saved the fine-tuned model to %s (%s = %.4f); use it with pipeline(%r, model=%r).",
        training_args.output_dir,
        headline,
        metrics.get(headline, float("nan")),
        _PIPELINE_TASKS[task],
        training_args.output_dir,
    )
    return metrics


def _augmentation_summary(
    task: str, crop_scale: tuple[float, float], scale_range: tuple[float, float], flip: bool, ignore_index: int
) -> str:
    flips = "horizontal flips" if flip else "no flips"
    if task == "classification":
        return f"random resized crops of {crop_scale[0]:g}-{crop_scale[1]:g} of the area, {flips}"
    return (
        f"random rescaling by {scale_range[0]:g}-{scale_range[1]:g}, padding (labels: {ignore_index}, ignored) and "
        f"random crops to the input size, {flips}"
    )


def _whole_set_metric(metric: ClassificationMetric | SegmentationMetric):
    """``--batch_eval_metrics False``: Trainer hands over the whole set at once; the same metric folds it in."""

    def compute(eval_pred: EvalPrediction) -> dict[str, float]:
        return metric(eval_pred, compute_result=True)

    return compute


def write_model_card(
    trainer: Trainer,
    model_args: FinetuneModelArguments,
    data: DownstreamData,
    spec: InputSpec,
    metrics: dict[str, float],
    augmentation: str,
) -> Path:
    """``Trainer.create_model_card`` (hyperparameters, training log, framework versions, model-index), with its
    "More information needed" sections filled from the run: what was fine-tuned how, on which data, with which
    measured results."""
    task = model_args.task
    local_base = os.path.isdir(model_args.model)
    tags = [
        "equirecon",
        "vision",
        _PIPELINE_TASKS[task],
        "linear-probe" if model_args.freeze_backbone else "fine-tuned",
    ]
    trainer.create_model_card(
        model_name=Path(trainer.args.output_dir).name,
        finetuned_from=None if local_base else model_args.model,
        tasks=_PIPELINE_TASKS[task],
        dataset=data.name,
        dataset_tags=data.name,  # without a tag Trainer writes an empty model-index
        tags=tags,
    )
    path = Path(trainer.args.output_dir) / "README.md"
    card = path.read_text()
    base = f"the local checkpoint `{model_args.model}`" if local_base else f"`{model_args.model}`"
    default_note = (
        " No `--dataset` was given, so the built-in offline default was used; the figures show that the pipeline "
        "works, not what the encoder is worth on real data."
        if data.builtin
        else ""
    )
    height, width = spec.image_size
    description = (
        f"{type(trainer.model).__name__} fine-tuned from {base}: {_protocol(model_args, trainer.model)}. "
        f"Inputs are {height}×{width}, normalised with mean {list(spec.image_mean)} and std {list(spec.image_std)} "
        f"(the saved image processor does this). Training augmentation: {augmentation}."
    )
    uses = (
        f"```python\nimport equirecon  # or trust_remote_code=True without the package\nfrom transformers import "
        f'pipeline\n\npipe = pipeline("{_PIPELINE_TASKS[task]}", model="{trainer.args.output_dir}")\n```'
    )
    data_text = f"{data.description}.{default_note}"
    results = _results_table(task, data, metrics)
    replacements = {
        "trained from scratch on": f"fine-tuned from {base} on",
        "## Model description\n\nMore information needed": f"## Model description\n\n{description}",
        "## Intended uses & limitations\n\nMore information needed": f"## Intended uses & limitations\n\n{uses}",
        "## Training and evaluation data\n\nMore information needed": (
            f"## Training and evaluation data\n\n{data_text}\n\n{results}"
        ),
    }
    for old, new in replacements.items():
        if old in card:
            card = card.replace(old, new, 1)
        elif old.startswith("##"):  # a future transformers changed its template: keep the information anyway
            card += f"\n{new}\n"
    model_card = ModelCard(card)
    # Trainer's model-index only knows a fixed list of metric names (no mean IoU): write our own results.
    model_card.data.eval_results = [
        EvalResult(
            task_type=_PIPELINE_TASKS[task],
            task_name=_PIPELINE_TASKS[task].replace("-", " ").capitalize(),
            dataset_type=data.name,
            dataset_name=data.name,
            dataset_split=data.eval_split,
            metric_type=metric,
            metric_name=label,
            metric_value=float(metrics[f"eval_{metric}"]),
        )
        for metric, label in _CARD_METRICS[task]
        if math.isfinite(metrics.get(f"eval_{metric}", float("nan")))
    ]
    model_card.data.model_name = Path(trainer.args.output_dir).name
    model_card.save(path)
    return path


def _results_table(task: str, data: DownstreamData, metrics: dict[str, float]) -> str:
    if task == "classification":
        return (
            "| metric | value |\n|---|---|\n"
            f"| accuracy | {metrics.get('eval_accuracy', float('nan')):.4f} |\n"
            f"| mean per-class accuracy | {metrics.get('eval_mean_class_accuracy', float('nan')):.4f} |"
        )
    rows = ["| class | IoU | accuracy |", "|---|---|---|"]
    for _, name in sorted(data.id2label.items()):
        iou, accuracy = (
            metrics.get(f"eval_iou_{name}", float("nan")),
            metrics.get(f"eval_accuracy_{name}", float("nan")),
        )
        rows.append(f"| {name} | {iou:.4f} | {accuracy:.4f} |")
    rows.append(
        f"| **mean** | **{metrics.get('eval_mean_iou', float('nan')):.4f}** | "
        f"**{metrics.get('eval_mean_accuracy', float('nan')):.4f}** |"
    )
    note = "Absent classes (NaN) are left out of the means. Pixel accuracy: "
    return "\n".join(rows) + f"\n\n{note}{metrics.get('eval_overall_accuracy', float('nan')):.4f}."


def main(argv: list[str] | None = None) -> int:
    """Entry point of `equirecon finetune` (``argv``: the arguments after ``finetune``); returns the exit status."""
    argv = sys.argv[1:] if argv is None else argv
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    try:
        model_args, data_args, training_args = parse_arguments(argv)
        run(model_args, data_args, training_args)
    except SystemExit as exit_:  # --help
        return int(exit_.code or 0)
    except ArgumentError as error:
        print(f"equirecon finetune: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
