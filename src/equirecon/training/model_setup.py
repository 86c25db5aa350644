"""The model a pretraining run trains, built from the command-line arguments: a preset, an EquiRecon checkpoint to
continue, or a transformers encoder to warm-start from (`--init_from`), with `--config_overrides` and the training
flags the config owns (λ, K, the SSL weight, g_θ) applied once, before the model exists."""

from __future__ import annotations

import copy
import inspect
import logging
from typing import Any

from transformers.image_processing_utils import ImageProcessingMixin
from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from ..argument_checks import ArgumentError, parse_config_overrides
from ..modeling import EquiReconConfig, EquiReconForPreTraining
from ..modeling.configuration_equirecon import DEFAULT_TRANSFORMATION
from ..modeling.presets import PRESETS
from ..modeling.warm_start import pretrained_encoder_config
from .arguments import EquiReconTrainingArguments, ModelArguments

logger = logging.getLogger(__name__)


def build_model(model_args: ModelArguments, training_args: EquiReconTrainingArguments) -> EquiReconForPreTraining:
    """A new model from a preset or a transformers encoder checkpoint (`--init_from`), or an EquiRecon checkpoint to
    continue."""
    overrides = parse_config_overrides(model_args.config_overrides)
    overrides.update(training_args.model_config_overrides())  # the config owns them
    if model_args.init_from:
        return warm_start(model_args, overrides, training_args)
    if model_args.image_size is not None:
        overrides["image_size"] = model_args.image_size
    try:
        if model_args.model_name_or_path:
            config = EquiReconConfig.from_pretrained(model_args.model_name_or_path)
            config = with_overrides(config, {**overrides, **trained_transformation(config.to_dict(), training_args)})
            return EquiReconForPreTraining.from_pretrained(
                model_args.model_name_or_path, config=config, trust_remote_code=model_args.trust_remote_code
            )
        config = EquiReconConfig.from_preset(model_args.preset or "tiny")
        config = with_overrides(config, {**overrides, **trained_transformation(config.to_dict(), training_args)})
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


def trained_transformation(fields: dict[str, Any], training_args: EquiReconTrainingArguments) -> dict[str, Any]:
    """The config override of the g_θ a run trains with, complete (the run record and the card read it): the config
    `fields`' `transformation` (default: `DEFAULT_TRANSFORMATION`) under the flags that set its family and ranges."""
    transformation = fields.get("transformation") or DEFAULT_TRANSFORMATION
    return {"transformation": training_args.transformation_config(transformation).to_dict()}


#: Encoder sizes a preset fixes; with `--init_from` they are the checkpoint's, and a preset must agree.
ENCODER_SIZES = ("hidden_size", "num_hidden_layers", "num_attention_heads", "patch_size", "image_size")


def warm_start(
    model_args: ModelArguments, overrides: dict[str, Any], training_args: EquiReconTrainingArguments
) -> EquiReconForPreTraining:
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
        fields.update(trained_transformation(fields, training_args))
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
