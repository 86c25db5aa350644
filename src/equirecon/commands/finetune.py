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

import sys

from transformers import HfArgumentParser

from ..argument_checks import ArgumentError, check_model_path
from ..finetuning.arguments import FinetuneDataArguments, FinetuneModelArguments, FinetuneTrainingArguments
from ..finetuning.transforms import TASKS
from ..modeling.configuration_equirecon import SEGMENTATION_HEADS
from .parsing import config_action, format_help, parse_dataclass_arguments, pop_config_file
from .runner import run_command

__all__ = ["main", "parse_arguments"]


def parse_arguments(
    argv: list[str],
) -> tuple[FinetuneModelArguments, FinetuneDataArguments, FinetuneTrainingArguments]:
    """``[task] [--config FILE] [flags]``: the recipe's values first, then the command line; one-line
    ``ArgumentError`` for anything unknown or inconsistent."""
    argv = list(argv)
    parser = HfArgumentParser((FinetuneModelArguments, FinetuneDataArguments, FinetuneTrainingArguments))
    if "-h" in argv or "--help" in argv:
        print(
            format_help(
                parser,
                usage="equirecon finetune {classification,segmentation} --model DIR [--config RECIPE] [options]",
                description="Fine-tune or linearly probe a checkpoint with Trainer, then write the model, its image "
                "processor, metrics and a model card. Without --dataset: digits (classification) or generated "
                "shapes (segmentation), offline.",
                example="equirecon finetune classification --model runs/equirecon-tiny --freeze_backbone",
                own=(FinetuneModelArguments, FinetuneDataArguments, FinetuneTrainingArguments),
                extra=[config_action()],
            )
        )
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
    check_model_path(model_args.model)
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


def main(argv: list[str] | None = None) -> int:
    """Entry point of `equirecon finetune` (``argv``: the arguments after ``finetune``); returns the exit status."""
    from ..finetuning.run import run

    return run_command("finetune", argv, parse_arguments, run)


if __name__ == "__main__":
    sys.exit(main())
