"""Pretraining end to end with `EquiReconTrainer`: the model (training flags for λ, K and the SSL weight become
config overrides before it is built), the data, training, and the run directory (weights, config, preprocessor, Hub
custom code, logs, pictures of the reconstructions and the loss curves, the run record and a model card).

The equivariance benchmark at the end is evaluation's, one layer up: `run` takes it as `evaluate_equivariance`,
which `equirecon pretrain` (:mod:`equirecon.commands.pretrain`) passes.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, NamedTuple

import torch
from transformers import ViTImageProcessorPil, set_seed
from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from ..argument_checks import ArgumentError
from ..imaging.sources import find_image_column, load_images
from ..imaging.transformations import TransformationConfig
from ..model_card import EQUIVARIANCE_FILE, LOSS_CURVES_FILE, RECONSTRUCTIONS_FILE, RUN_FILE, write_model_card
from ..modeling import EquiReconForPreTraining
from ..publishing import push_output_directory, save_model_without_pushing
from ..reporting import pairing_control, reconstruction_controls
from ..run_directory import check_output_dir, finish_run, last_checkpoint, start_run
from .arguments import DataArguments, EquiReconTrainingArguments, EvaluationArguments, ModelArguments
from .data import build_transform_pair_dataset, collate_transform_pairs
from .figures import save_loss_curves, save_reconstruction_figure
from .masking import BlockMaskGenerator
from .model_setup import build_model, image_statistics
from .run_record import run_record
from .trainer import EquiReconTrainer
from .views import TransformPairMaker

logger = logging.getLogger(__name__)


Arguments = tuple[ModelArguments, DataArguments, EquiReconTrainingArguments, EvaluationArguments]


def build_datasets(
    data_args: DataArguments,
    training_args: EquiReconTrainingArguments,
    transformation: TransformationConfig,
    image_size: int,
    image_mean: Sequence[float] = IMAGENET_DEFAULT_MEAN,
    image_std: Sequence[float] = IMAGENET_DEFAULT_STD,
    mask_generator: BlockMaskGenerator | None = None,
    local_size: int | None = None,
) -> tuple[Any, list[dict[str, torch.Tensor]] | None]:
    """The endless training stream of transform pairs and a fixed, map-style evaluation set (or None), normalised
    with `image_mean` and `image_std`; with a `mask_generator` (iBOT, DINOv2), every pair carries the student's
    `bool_masked_pos`, and with `--local_crops_number` its `local_pixel_values` (`local_size` pixels square)."""
    load_kwargs = {"name": data_args.dataset_config_name} if data_args.dataset_config_name else {}
    try:
        train_images = load_images(
            data_args.dataset, split=data_args.train_split, streaming=data_args.streaming, **load_kwargs
        )
        column = find_image_column(train_images, data_args.image_column)
    except (ValueError, FileNotFoundError, TypeError) as error:
        raise ArgumentError(f"--dataset {data_args.dataset}: {error}") from error

    def pair_maker(seed: int, preset: str) -> TransformPairMaker:
        return TransformPairMaker(
            transformation,
            view_preset=preset,
            size=image_size,
            image_mean=image_mean,
            image_std=image_std,
            crop_scale=tuple(training_args.crop_scale),
            context_fill=training_args.context_fill,
            seed=seed,
            # Every process gets its own augmentation stream (Trainer seeds all ranks alike).
            rank=training_args.process_index,
            mask_generator=mask_generator,
            num_local_crops=training_args.local_crops_number,
            local_size=local_size or image_size,
            local_crop_scale=tuple(training_args.local_crops_scale),
        )

    try:
        train = build_transform_pair_dataset(
            train_images,
            pair_maker(training_args.seed, training_args.view_preset),
            image_column=column,
            num_shards=data_args.num_shards,
            shuffle_seed=training_args.seed,
            buffer_size=data_args.shuffle_buffer_size,
            repeat=None,
        )
    except ValueError as error:
        raise ArgumentError(str(error)) from error
    evaluation = None
    if data_args.validation_split:
        try:
            eval_images = load_images(
                data_args.dataset, split=data_args.validation_split, streaming=False, **load_kwargs
            )
        except (ValueError, FileNotFoundError) as error:
            logger.warning(
                "No validation split %r (%s): training without held-out losses or the equivariance benchmark.",
                data_args.validation_split,
                str(error).splitlines()[0],
            )
            return train, None
        stream = build_transform_pair_dataset(
            eval_images,
            pair_maker(training_args.seed + 1, training_args.view_preset),
            image_column=data_args.image_column,
            num_shards=1,
            shuffle_seed=None,
            repeat=None,
        )
        evaluation = list(stream.take(data_args.max_eval_samples))
    return train, evaluation


class ReferenceEncoder(NamedTuple):
    """The encoder a run started from, rebuilt after training as the equivariance benchmark's reference row."""

    label: str
    encoder: torch.nn.Module


def rebuild_reference_encoder(
    model_args: ModelArguments, training_args: EquiReconTrainingArguments
) -> ReferenceEncoder | None:
    """The encoder `run` trained, as it was before its first step: built again the same way, from the same seed, so a
    new model gets the same random weights and a warm start the same checkpoint (with the run's freshly initialised
    head). What a run added is measured against this, not against a random encoder when it started from trained
    weights. None, with a warning, when the start cannot be rebuilt: its checkpoint is gone, or lies in the output
    directory, which now holds the trained model."""
    source = model_args.init_from or model_args.model_name_or_path
    output_dir = Path(training_args.output_dir).resolve()
    if source and Path(source).exists() and Path(source).resolve().is_relative_to(output_dir):
        logger.warning("No reference row: the run started from %s, inside its output directory.", source)
        return None
    set_seed(training_args.seed)
    quiet = logging.getLogger("equirecon")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # the build's messages were logged before training
    try:
        model = build_model(model_args, training_args)
    except (OSError, ValueError, ArgumentError) as error:
        logger.warning("No reference row: the model the run started from cannot be rebuilt (%s).", error)
        return None
    finally:
        quiet.setLevel(level)
    return ReferenceEncoder(f"start ({source})" if source else "random initialisation", model.equirecon)


#: `evaluate_equivariance(model, image_processor, data_args, evaluation_args, seed, output_dir, reference) ->
#: results`, as `equirecon.commands.pretrain.evaluate_equivariance`.
EquivarianceEvaluator = Callable[..., dict[str, Any]]


def run(
    model_args: ModelArguments,
    data_args: DataArguments,
    training_args: EquiReconTrainingArguments,
    evaluation_args: EvaluationArguments | None = None,
    *,
    evaluate_equivariance: EquivarianceEvaluator | None = None,
) -> dict:
    """Pretrain, evaluate and write the run directory (model, preprocessor, logs, pictures, model card); returns the
    final metrics.

    The equivariance benchmark (``evaluation_args.equivariance_benchmark``) needs ``evaluate_equivariance``; use
    :func:`equirecon.commands.pretrain.run`, which passes it, or turn the benchmark off."""
    evaluation_args = evaluation_args or EvaluationArguments()
    wants_benchmark = bool(
        evaluation_args.equivariance_benchmark
        and evaluation_args.equivariance_families != []  # None: the benchmark's own
        and data_args.validation_split
    )
    if wants_benchmark and evaluate_equivariance is None:
        raise ArgumentError(
            "the equivariance benchmark runs from equirecon.commands.pretrain.run (or pass evaluate_equivariance=); "
            "equirecon.training.pretrain.run alone needs EvaluationArguments(equivariance_benchmark=False)"
        )
    started = time.time()
    resume = training_args.resume_from_checkpoint
    check_output_dir(
        training_args.output_dir, command="pretrain", resume=resume, overwrite=training_args.overwrite_output_dir
    )
    # Every process builds the same initial model: FSDP shards each process's own copy, where DDP broadcasts rank 0's.
    set_seed(training_args.seed)
    model = build_model(model_args, training_args)
    config = model.config
    transformation = TransformationConfig.from_dict(config.transformation)
    image_mean, image_std = image_statistics(model_args)
    mask_generator = BlockMaskGenerator.from_config(config) if config.uses_masks else None
    if training_args.local_crops_number and not config.uses_teacher:
        raise ArgumentError(f"--local_crops_number needs a DINO-family ssl_objective, not {config.ssl_objective!r}.")
    local_size = training_args.local_crops_size or config.patch_size * max(
        1, round(config.image_size * 96 / 224 / config.patch_size)
    )
    train_dataset, eval_dataset = build_datasets(
        data_args,
        training_args,
        transformation,
        config.image_size,
        image_mean,
        image_std,
        mask_generator=mask_generator,
        local_size=local_size,
    )
    if eval_dataset is None and data_args.validation_split:  # the source has no such split: record that
        data_args = replace(data_args, validation_split=None)
        wants_benchmark = False

    # The PIL processor saves as "ViTImageProcessor" too (AutoImageProcessor picks torchvision where installed), and
    # needs no torchvision here.
    image_processor = ViTImageProcessorPil(
        size={"height": config.image_size, "width": config.image_size},
        image_mean=list(image_mean),
        image_std=list(image_std),
    )
    trainer = EquiReconTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        data_collator=collate_transform_pairs,
        processing_class=image_processor,
        transformation=transformation,
        image_mean=image_mean,
        image_std=image_std,
    )
    logger.info(
        "Pretraining %s (%d parameters) on %s with g=%s, K=%d, λ=%s, effective batch %d, lr %.3g, %d steps.",
        model_args.model_name_or_path
        or (f"an encoder initialised from {model_args.init_from}" if model_args.init_from else None)
        or model_args.preset
        or "tiny",
        model.num_parameters(),
        data_args.dataset,
        transformation.family,
        config.num_intermediates,
        config.reconstruction_weight,
        training_args.effective_batch_size,
        training_args.learning_rate,
        training_args.max_steps,
    )
    if trainer.is_world_process_zero():
        start_run(training_args.output_dir, command="pretrain", overwrite=training_args.overwrite_output_dir)
    train_result = trainer.train(resume_from_checkpoint=last_checkpoint(training_args.output_dir, resume))
    save_model_without_pushing(trainer)  # pushed with its card, results and pictures once they are written
    metrics = dict(train_result.metrics)
    if eval_dataset:
        metrics.update(trainer.evaluate())
    trainer.log_metrics("all", metrics)
    for line in filter(None, (reconstruction_controls(metrics), pairing_control(metrics))):
        logger.info(line.replace("**", ""))
    if trainer.is_world_process_zero():
        output_dir = Path(training_args.output_dir)
        # Under FSDP the trained model is sharded over the processes, and a forward on this one alone would wait for
        # the others: the figure and the benchmark use the copy `save_model` gathered and wrote.
        trained = (
            EquiReconForPreTraining.from_pretrained(output_dir).to(training_args.device)
            if trainer.is_fsdp_enabled
            else trainer.model
        )
        trainer.save_metrics("all", metrics)
        trainer.save_state()
        (output_dir / "training_log.json").write_text(json.dumps(trainer.state.log_history, indent=2))
        save_loss_curves(trainer.state.log_history, output_dir / LOSS_CURVES_FILE)
        if eval_dataset:
            save_reconstruction_figure(
                trained,
                collate_transform_pairs(eval_dataset[:4]),
                transformation,
                output_dir / RECONSTRUCTIONS_FILE,
                image_mean=image_mean,
                image_std=image_std,
                blend_coefficients=trainer.blend_coefficients,
            )
        record = run_record(
            model_args, data_args, training_args, config, transformation, trainer, metrics, time.time() - started
        )
        if wants_benchmark:
            reference = (
                rebuild_reference_encoder(model_args, training_args)
                if evaluation_args.equivariance_reference
                else None
            )
            equivariance = evaluate_equivariance(
                trained, image_processor, data_args, evaluation_args, training_args.seed, output_dir, reference
            )
            metrics.update({f"equivariance_r2_{name}": value for name, value in equivariance["r2"].items()})
            metrics["equivariance_r2_mean"] = equivariance["mean_r2"]
        else:  # the card shows only this run's results
            (output_dir / EQUIVARIANCE_FILE).unlink(missing_ok=True)
        record["metrics"] = metrics
        record["wall_time_seconds"] = time.time() - started
        (output_dir / RUN_FILE).write_text(json.dumps(record, indent=2, default=str))
        finish_run(output_dir, keep_checkpoints=training_args.keep_checkpoints)
        card = write_model_card(output_dir)
        push_output_directory(trainer)
        logger.info("Wrote %s; the model loads with AutoModel.from_pretrained(%r).", card, str(output_dir))
    return metrics
