"""Pretraining end to end with `EquiReconTrainer`: the model (training flags for λ, K and the SSL weight become
config overrides before it is built), the data, training, and the run directory (weights, config, preprocessor, Hub
custom code, logs, a picture of the reconstructions, the run record and a model card).

The equivariance benchmark at the end is evaluation's, one layer up: `run` takes it as `evaluate_equivariance`,
which `equirecon pretrain` (:mod:`equirecon.commands.pretrain`) passes.
"""

from __future__ import annotations

import copy
import inspect
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, NamedTuple

import torch
from transformers import ViTImageProcessorPil, set_seed
from transformers.image_processing_utils import ImageProcessingMixin
from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from ..command_line import (
    ArgumentError,
    check_output_dir,
    finish_run,
    last_checkpoint,
    parse_config_overrides,
    start_run,
)
from ..imaging.sources import find_image_column, load_images
from ..imaging.transformations import TransformationConfig
from ..model_card import EQUIVARIANCE_FILE, RUN_FILE, write_model_card
from ..modeling import EquiReconConfig, EquiReconForPreTraining
from ..modeling.presets import PRESETS
from ..modeling.warm_start import pretrained_encoder_config
from ..publishing import push_output_directory, save_model_without_pushing
from ..reporting import pairing_control, reconstruction_controls
from .arguments import DataArguments, EquiReconTrainingArguments, EvaluationArguments, ModelArguments
from .data import build_transform_pair_dataset, collate_transform_pairs
from .figures import save_reconstruction_figure
from .masking import BlockMaskGenerator
from .run_record import run_record
from .trainer import EquiReconTrainer
from .views import TransformPairMaker

logger = logging.getLogger(__name__)


Arguments = tuple[ModelArguments, DataArguments, EquiReconTrainingArguments, EvaluationArguments]


def build_model(model_args: ModelArguments, training_args: EquiReconTrainingArguments) -> EquiReconForPreTraining:
    """A new model from a preset or a transformers encoder checkpoint (`--init_from`), or an EquiRecon checkpoint to
    continue."""
    overrides = parse_config_overrides(model_args.config_overrides)
    for name in ("num_intermediates", "reconstruction_weight", "ssl_weight"):  # the config owns them
        if getattr(training_args, name) is not None:
            overrides[name] = getattr(training_args, name)
    if model_args.init_from:
        return warm_start(model_args, overrides)
    if model_args.image_size is not None:
        overrides["image_size"] = model_args.image_size
    try:
        if model_args.model_name_or_path:
            config = EquiReconConfig.from_pretrained(model_args.model_name_or_path)
            config = with_overrides(config, overrides)
            return EquiReconForPreTraining.from_pretrained(
                model_args.model_name_or_path, config=config, trust_remote_code=model_args.trust_remote_code
            )
        config = with_overrides(EquiReconConfig.from_preset(model_args.preset or "tiny"), overrides)
    except (ValueError, TypeError) as error:
        raise ArgumentError(str(error)) from error
    return EquiReconForPreTraining(config)


#: The fields `EquiReconConfig` itself defines; every other override must name a field of the encoder's config.
OWN_FIELDS = frozenset(inspect.signature(EquiReconConfig.__init__).parameters) - {"self", "kwargs", "backbone_config"}


def with_overrides(config: EquiReconConfig, overrides: dict[str, Any]) -> EquiReconConfig:
    """`config` with `--config_overrides` applied and validated again: EquiRecon fields (`d_patch`, `ssl_objective`,
    ...) on the config, encoder fields (`drop_path_rate`, `num_hidden_layers`, ...) on its backbone config. A key that
    is neither is refused, as transformers' `PretrainedConfig.update_from_string` refuses one, rather than stored
    where nothing reads it."""
    fields = config.to_dict()
    encoder = fields["backbone_config"]
    refuse_unknown_overrides(overrides, encoder, encoder.get("model_type", "encoder"))
    for key, value in overrides.items():
        (fields if key in OWN_FIELDS or key == "backbone_config" else encoder)[key] = value
    if "num_hidden_layers" in overrides:  # the stages follow the depth, unless set too
        for key in ("stage_names", "out_features", "out_indices"):
            if key not in overrides:
                encoder.pop(key, None)
                fields.pop(key, None)
    return EquiReconConfig(**fields)


def refuse_unknown_overrides(overrides: dict[str, Any], encoder_fields: dict[str, Any], encoder_type: str) -> None:
    """Refuse the override keys that are neither EquiReconConfig fields nor encoder config fields, as transformers'
    `PretrainedConfig.update_from_string` refuses them."""
    unknown = [key for key in overrides if key not in {*OWN_FIELDS, "backbone_config", *encoder_fields}]
    if unknown:
        raise ArgumentError(
            f"--config_overrides sets {', '.join(unknown)}, which is neither an EquiReconConfig field nor a field of "
            f"the {encoder_type} encoder's config: check the spelling (EquiReconConfig fields: "
            f"{', '.join(sorted(OWN_FIELDS))})."
        )


#: Encoder sizes a preset fixes; with `--init_from` they are the checkpoint's, and a preset must agree.
ENCODER_SIZES = ("hidden_size", "num_hidden_layers", "num_attention_heads", "patch_size", "image_size")


def warm_start(model_args: ModelArguments, overrides: dict[str, Any]) -> EquiReconForPreTraining:
    """The encoder of `--init_from` with fresh heads and decoders: EquiRecon fields from the preset (if one is named)
    and the overrides, the encoder's architecture from the checkpoint. Anything that would set the architecture too
    is refused, naming both, before the weights are loaded."""
    source = model_args.init_from
    try:
        checkpoint = pretrained_encoder_config(source, trust_remote_code=False)
    except (OSError, ValueError) as error:
        raise ArgumentError(f"--init_from {source}: {error}") from error
    # Stochastic depth is a training setting, not architecture: a preset's or the overrides' value is kept.
    drop_path_rate = overrides.pop("drop_path_rate", None)
    refuse_unknown_overrides(overrides, checkpoint.to_dict(), checkpoint.model_type)
    encoder_overrides = [key for key in overrides if key not in OWN_FIELDS]
    if encoder_overrides:
        raise ArgumentError(
            f"--config_overrides sets {', '.join(encoder_overrides)}, but with --init_from {source} the encoder's "
            "architecture is the checkpoint's: drop them (--image_size changes the input size)."
        )
    fields: dict[str, Any] = {}
    if model_args.preset:
        if model_args.preset not in PRESETS:
            raise ArgumentError(f"Unknown preset {model_args.preset!r}; choose one of {sorted(PRESETS)}.")
        preset = copy.deepcopy(PRESETS[model_args.preset])
        preset_encoder = preset.pop("backbone_config")
        compared = [name for name in ENCODER_SIZES if name != "image_size" or model_args.image_size is None]
        differ = [name for name in compared if preset_encoder.get(name) != getattr(checkpoint, name, None)]
        if differ:
            ours = ", ".join(f"{name}={preset_encoder.get(name)}" for name in differ)
            theirs = ", ".join(f"{name}={getattr(checkpoint, name, None)}" for name in differ)
            raise ArgumentError(
                f"--preset {model_args.preset} ({ours}) conflicts with --init_from {source} ({theirs}): the encoder's "
                "architecture is the checkpoint's. Leave out --preset (--preset None after a recipe) to get "
                "EquiReconConfig's heads, and set them with --config_overrides"
                + (", the size with --image_size." if "image_size" in differ else ".")
            )
        fields.update(preset)
        preset_drop_path = preset_encoder.get("drop_path_rate")
        if drop_path_rate is None and preset_drop_path:
            if hasattr(checkpoint, "drop_path_rate"):
                drop_path_rate = preset_drop_path
            else:
                logger.warning(
                    "--preset %s sets drop_path_rate=%s, but a %s encoder has no stochastic depth: training without it.",
                    model_args.preset,
                    preset_drop_path,
                    checkpoint.model_type,
                )
    fields.update(overrides)
    try:
        return EquiReconForPreTraining.from_pretrained_backbone(
            source,
            image_size=model_args.image_size,
            backbone_kwargs={"trust_remote_code": False},
            drop_path_rate=drop_path_rate,
            **fields,
        )
    except (OSError, ValueError, TypeError) as error:
        raise ArgumentError(f"--init_from {source}: {error}") from error


def image_statistics(model_args: ModelArguments) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of the model inputs: a checkpoint's own (ViT checkpoints use 0.5, DINOv2 ImageNet's),
    so that a warm-started encoder sees what it was trained on; ImageNet's for a new model."""
    source = model_args.init_from or model_args.model_name_or_path
    if source:
        try:
            processor, _ = ImageProcessingMixin.get_image_processor_dict(source)
        except OSError:
            processor = {}
        if processor.get("image_mean") and processor.get("image_std"):
            return tuple(processor["image_mean"]), tuple(processor["image_std"])
        logger.warning("%s has no image processor with image_mean and image_std: normalising as ImageNet.", source)
    return tuple(IMAGENET_DEFAULT_MEAN), tuple(IMAGENET_DEFAULT_STD)


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


class StartingPoint(NamedTuple):
    """The encoder a run started from, rebuilt after training as the benchmark's reference row."""

    label: str
    encoder: torch.nn.Module


def starting_point(model_args: ModelArguments, training_args: EquiReconTrainingArguments) -> StartingPoint | None:
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
    return StartingPoint(f"start ({source})" if source else "random initialisation", model.equirecon)


#: `evaluate_equivariance(model, data_args, evaluation_args, seed, output_dir, reference) -> results`, as
#: `equirecon.commands.pretrain.evaluate_equivariance`.
EquivarianceEvaluator = Callable[
    [EquiReconForPreTraining, DataArguments, EvaluationArguments, int, Path, StartingPoint | None], dict[str, Any]
]


def run(
    model_args: ModelArguments,
    data_args: DataArguments,
    training_args: EquiReconTrainingArguments,
    evaluation_args: EvaluationArguments | None = None,
    *,
    evaluate_equivariance: EquivarianceEvaluator | None = None,
) -> dict:
    """Pretrain, evaluate and write the run directory (model, preprocessor, logs, picture, model card); returns the
    final metrics.

    The equivariance benchmark (``evaluation_args.equivariance_benchmark``) needs ``evaluate_equivariance``; use
    :func:`equirecon.commands.pretrain.run`, which passes it, or turn the benchmark off."""
    evaluation_args = evaluation_args or EvaluationArguments()
    wants_benchmark = bool(
        evaluation_args.equivariance_benchmark and evaluation_args.equivariance_families and data_args.validation_split
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
    try:
        transformation = training_args.transformation_config(config.transformation)
    except ValueError as error:
        raise ArgumentError(str(error)) from error
    config.transformation = transformation.to_dict()
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
    save_model_without_pushing(trainer)  # pushed with its card, results and picture once they are written
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
        if eval_dataset:
            save_reconstruction_figure(
                trained,
                collate_transform_pairs(eval_dataset[:4]),
                transformation,
                output_dir / "reconstructions.png",
                image_mean=image_mean,
                image_std=image_std,
                blend_coefficients=trainer.blend_coefficients,
            )
        record = run_record(
            model_args, data_args, training_args, config, transformation, trainer, metrics, time.time() - started
        )
        if wants_benchmark:
            reference = starting_point(model_args, training_args) if evaluation_args.equivariance_reference else None
            equivariance = evaluate_equivariance(
                trained, data_args, evaluation_args, training_args.seed, output_dir, reference
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
