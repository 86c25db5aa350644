"""Fine-tuning end to end with `Trainer`: data, model, augmentations, metric, training, evaluation, and the model
directory (model, image processor, metrics, model card)."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import datasets
import tokenizers
import torch
import transformers
from transformers import Trainer
from transformers.modelcard import extract_hyperparameters_from_trainer

from ..argument_checks import ArgumentError
from ..evaluation.loading import InputSpec
from ..model_card import PIPELINE_TASKS, RUN_FILE, write_model_card
from ..process_group import LeaveProcessGroupAtExit
from ..publishing import push_output_directory, save_model_without_pushing
from ..run_directory import check_output_dir, finish_run, last_checkpoint, start_run
from .arguments import FinetuneDataArguments, FinetuneModelArguments, FinetuneTrainingArguments
from .data import DEFAULT_DATASETS, DownstreamData, load_downstream_dataset, read_id2label
from .head_init import initialise_linear_head
from .metrics import ClassificationMetric, SegmentationMetric, whole_set_metric
from .models import describe_protocol, image_processor_for, input_spec, load_config, load_model, summarise_keys
from .transforms import DownstreamTransform, build_transform, collate_downstream

__all__ = ["run"]

logger = logging.getLogger(__name__)


def load_data(model_args: FinetuneModelArguments, data_args: FinetuneDataArguments, seed: int) -> DownstreamData:
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


def run(
    model_args: FinetuneModelArguments, data_args: FinetuneDataArguments, training_args: FinetuneTrainingArguments
) -> dict[str, float]:
    """Fine-tune, evaluate, and write the model directory (model, image processor, metrics, model card).

    Everything that can be wrong with the arguments (output directory, dataset columns and labels, checkpoint) is
    checked before the first step. Returns the final evaluation metrics.
    """
    task = model_args.task
    resume = training_args.resume_from_checkpoint
    check_output_dir(
        training_args.output_dir, command="finetune", resume=resume, overwrite=training_args.overwrite_output_dir
    )
    config = load_config(model_args)  # a bad --model fails before the data is read
    data = load_data(model_args, data_args, training_args.seed)
    model, new_keys = load_model(model_args, data.id2label, task, config=config)
    spec = input_spec(model_args, model)
    logger.info(
        "Newly initialised from %s: %s.", model_args.model, summarise_keys(new_keys) if new_keys else "nothing"
    )
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    logger.info(
        "%s: %s; training %d of %d parameters at %d×%d.",
        type(model).__name__,
        describe_protocol(model_args, model),
        trainable,
        model.num_parameters(),
        *spec.image_size,
    )

    ignore_index = int(getattr(model.config, "semantic_loss_ignore_index", 255))
    flip = data.flip_invariant if data_args.horizontal_flip is None else data_args.horizontal_flip
    crop_scale = data.probe_crop_scale if model_args.freeze_backbone and data.probe_crop_scale else data.crop_scale
    crop_scale = tuple(data_args.crop_scale) if data_args.crop_scale is not None else crop_scale
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
        compute_metrics=metric if training_args.batch_eval_metrics else whole_set_metric(metric),
    )
    trainer.add_callback(LeaveProcessGroupAtExit(trainer))  # several processes: leave the group cleanly at exit
    if trainer.is_world_process_zero():
        start_run(training_args.output_dir, command="finetune", overwrite=training_args.overwrite_output_dir)
    if model_args.freeze_backbone and task == "classification" and model_args.head_init == "probe" and not resume:
        probe_batches = torch.utils.data.DataLoader(
            data.train.with_transform(eval_transform),
            batch_size=training_args.per_device_eval_batch_size,
            collate_fn=collate_downstream,
        )
        initialise_linear_head(trainer.model, probe_batches, num_labels=data.num_labels, seed=training_args.seed)
    train_result = trainer.train(resume_from_checkpoint=last_checkpoint(training_args.output_dir, resume))
    save_model_without_pushing(trainer)  # pushed with its card and results once they are written
    trainer.log_metrics("train", train_result.metrics)
    metrics = trainer.evaluate()
    trainer.log_metrics("eval", metrics)
    if trainer.is_world_process_zero():
        trainer.save_metrics("train", train_result.metrics)
        trainer.save_metrics("eval", metrics)
        trainer.save_state()
        finish_run(training_args.output_dir, keep_checkpoints=training_args.keep_checkpoints)
        record = _run_record(trainer, model_args, spec, augmentation, data, metrics)
        (Path(training_args.output_dir) / RUN_FILE).write_text(json.dumps(record, indent=2, default=str))
        write_model_card(training_args.output_dir)
        push_output_directory(trainer)
    headline = "eval_accuracy" if task == "classification" else "eval_mean_iou"
    logger.info(
        "Saved the fine-tuned model to %s (%s = %.4f); use it with pipeline(%r, model=%r).",
        training_args.output_dir,
        headline,
        metrics.get(headline, float("nan")),
        PIPELINE_TASKS[task],
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


def _run_record(
    trainer: Trainer,
    model_args: FinetuneModelArguments,
    spec: InputSpec,
    augmentation: str,
    data: DownstreamData,
    metrics: dict[str, float],
) -> dict[str, Any]:
    """What the model card of a fine-tuned model is built from (`equirecon_run.json`): the base model and protocol,
    the data, the measured results, the hyperparameters, the training log and the framework versions."""
    height, width = spec.image_size
    return {
        "command": "finetune",
        "base_model": model_args.model,
        "local_base": os.path.isdir(model_args.model),
        "linear_probe": model_args.freeze_backbone,
        "description": (
            f"{describe_protocol(model_args, trainer.model)}. Inputs are {height}×{width}, normalised with mean "
            f"{list(spec.image_mean)} and std {list(spec.image_std)} (the saved image processor does this). "
            f"Training augmentation: {augmentation}."
        ),
        "data": {
            "name": data.name,
            "description": data.description,
            "eval_split": data.eval_split,
            "builtin": data.builtin,
        },
        "metrics": metrics,
        "hyperparameters": extract_hyperparameters_from_trainer(trainer),
        "log_history": trainer.state.log_history,  # in logging order (trainer_state.json sorts the keys)
        "framework_versions": {
            "Transformers": transformers.__version__,
            "Pytorch": torch.__version__,
            "Datasets": datasets.__version__,
            "Tokenizers": tokenizers.__version__,
        },
    }
