# Copyright 2026 The equirecon developers. Licensed under the Apache License, Version 2.0.
"""Warm starts: an EquiRecon encoder initialised from a transformers ViT-family checkpoint (DINOv2, ViT, DeiT, ViTMAE),
and the one way EquiRecon copies an encoder into another (also the EMA teacher from its student)."""

from __future__ import annotations

import copy
import inspect
import os
from typing import TYPE_CHECKING, Any

import torch
from transformers import AutoConfig, AutoModel, PretrainedConfig, PreTrainedModel, ViTConfig, ViTModel
from transformers.utils import logging

from .configuration_equirecon import EquiReconConfig
from .configuration_validation import as_pair

if TYPE_CHECKING:
    from .modeling_equirecon import EquiReconPreTrainedModel

logger = logging.get_logger(__name__)


def without_pooler(model_class: type[PreTrainedModel]) -> dict[str, Any]:
    """The keyword that builds `model_class` without its pooling head, where it has one (EquiRecon pools the CLS token
    itself; an unused pooler would only idle under DDP)."""
    return (
        {"add_pooling_layer": False}
        if "add_pooling_layer" in inspect.signature(model_class.__init__).parameters
        else {}
    )


def pretrained_encoder_config(pretrained_model_name_or_path: str | os.PathLike, **kwargs: Any) -> PretrainedConfig:
    """The config of a transformers ViT-family checkpoint (a local directory or Hub id), read without its weights so
    that a wrong path or architecture is reported before anything is loaded. `kwargs` go to `from_pretrained`.

    Raises `OSError` when there is no checkpoint there, `ValueError` when it is not a ViT-family encoder.
    """
    name = str(pretrained_model_name_or_path)
    if name.startswith((".", "/", "~")) and not os.path.isdir(os.path.expanduser(name)):
        raise OSError(f"{name!r} is not a directory (expected a transformers checkpoint: config.json and weights)")
    try:
        config = AutoConfig.from_pretrained(name, **kwargs)
    except (OSError, ValueError) as error:  # a malformed Hub id is a ValueError
        raise OSError(
            f"no transformers checkpoint at {name!r}, a local directory or Hub model id: {str(error).splitlines()[0]}"
        ) from error
    if config.model_type == EquiReconConfig.model_type:
        raise ValueError(
            f"{name!r} is an EquiRecon checkpoint, not an encoder to start from: continue its pretraining from it "
            "(`EquiReconForPreTraining.from_pretrained`, `equirecon pretrain --model_name_or_path`)."
        )
    absent = [field for field in ("hidden_size", "patch_size", "image_size") if not hasattr(config, field)]
    if absent or type(config) not in AutoModel._model_mapping:
        raise ValueError(
            f"{name!r} is a {config.model_type} checkpoint, not a ViT-family encoder (its config has no "
            f"{', '.join(absent) or 'base model'}): start from a DINOv2, ViT, DeiT or ViTMAE checkpoint."
        )
    return config


def load_pretrained_encoder(pretrained_model_name_or_path: str | os.PathLike, **kwargs: Any) -> PreTrainedModel:
    """The encoder of a transformers ViT-family checkpoint (DINOv2, ViT, DeiT, ViTMAE; a local directory or Hub id)
    as a base model without pooler: task heads are dropped and logged, a ViTMAE becomes the `ViTModel` with its
    weights (see `encoder_backbone_config`). `kwargs` go to `from_pretrained` (`revision`, `token`, ...).

    Raises as `pretrained_encoder_config`, and `ValueError` when the checkpoint is not a complete encoder: a weight
    missing from it would otherwise start random without anyone noticing.
    """
    name = str(pretrained_model_name_or_path)
    config = pretrained_encoder_config(name, **kwargs)
    model_class = AutoModel._model_mapping[type(config)]
    encoder, info = model_class.from_pretrained(
        name, config=config, output_loading_info=True, dtype=torch.float32, **without_pooler(model_class), **kwargs
    )
    incomplete = [*info["missing_keys"], *(str(key) for key in info["mismatched_keys"])]
    if incomplete:
        raise ValueError(
            f"{name!r} does not hold a complete {config.model_type} encoder: {len(incomplete)} weight(s) missing or "
            f"of another shape ({', '.join(sorted(incomplete)[:5])}{', ...' if len(incomplete) > 5 else ''}). Pass "
            "the checkpoint the config describes, or leave the encoder at its random initialisation."
        )
    if info["unexpected_keys"]:
        logger.info("Not used from %s (task heads, poolers): %s", name, ", ".join(sorted(info["unexpected_keys"])))
    if config.model_type == "vit_mae":
        vit = ViTModel(encoder_backbone_config(config), add_pooling_layer=False)
        load_backbone_weights(vit, encoder)
        encoder = vit
    return encoder


def encoder_backbone_config(config: PretrainedConfig) -> PretrainedConfig:
    """The backbone config EquiRecon builds for a checkpoint's: without a mask token (an objective that masks patch
    tokens turns it back on, see `EquiReconConfig`: otherwise it is a weight without a gradient), and a ViTMAE's as a
    ViT's (ViTMAE's forward shuffles and masks the tokens; its encoder weights are a ViT's)."""
    if config.model_type == "vit_mae":
        vit_fields = set(ViTConfig().to_dict()) - {"model_type", "architectures", "transformers_version"}
        return ViTConfig(**{k: v for k, v in config.to_dict().items() if k in vit_fields})
    config = copy.deepcopy(config)
    if getattr(config, "use_mask_token", False):
        config.use_mask_token = False
    return config


def load_backbone_weights(backbone: PreTrainedModel, source: PreTrainedModel) -> None:
    """Copy the encoder `source` into `backbone`, an encoder of the same family and sizes; the position embeddings
    are resized (bicubic, as the encoders do for other inputs) when `backbone` takes another image size. The two
    must hold the same weights, except `source`'s pooler and mask token (unused here).

    The one way EquiRecon initialises an encoder from another: a warm start from a checkpoint
    (`EquiReconPreTrainedModel.from_pretrained_backbone`), and an EMA teacher from its student
    (`load_backbone_weights(teacher.backbone, student.backbone)`).
    """
    state = source.state_dict()
    target = backbone.state_dict()
    position_key = "embeddings.position_embeddings"
    if position_key in target and position_key in state and target[position_key].shape != state[position_key].shape:
        size = as_pair(backbone.config.image_size)[0]
        placeholder = torch.zeros(1, target[position_key].shape[1], target[position_key].shape[-1])
        with torch.no_grad():
            state[position_key] = source.embeddings.interpolate_pos_encoding(placeholder, size, size)
    # A mask token is used only by masking objectives (iBOT, DINOv2): one the source lacks starts fresh, one the
    # backbone lacks is dropped.
    unused = {"embeddings.mask_token"}
    missing = sorted(set(target) - set(state) - unused)
    unexpected = sorted(key for key in set(state) - set(target) if key not in unused and not key.startswith("pooler."))
    mismatched = sorted(key for key in set(target) & set(state) if target[key].shape != state[key].shape)
    if missing or unexpected or mismatched:
        raise ValueError(
            f"The {source.config.model_type} encoder does not fit this {backbone.config.model_type} backbone: "
            f"missing {missing or 'nothing'}, unexpected {unexpected or 'nothing'}, other shapes "
            f"{mismatched or 'none'}. The backbone config must be the checkpoint's (`from_pretrained_backbone` "
            "takes it from there)."
        )
    backbone.load_state_dict({key: state[key] for key in target if key in state}, strict=not set(target) & unused)


def from_pretrained_backbone(
    model_class: type[EquiReconPreTrainedModel],
    pretrained_model_name_or_path: str | os.PathLike,
    config: EquiReconConfig | None = None,
    image_size: int | None = None,
    backbone_kwargs: dict[str, Any] | None = None,
    drop_path_rate: float | None = None,
    **config_kwargs: Any,
) -> EquiReconPreTrainedModel:
    """Build a model whose encoder starts from a pretrained transformers checkpoint (a DINOv2, ViT, DeiT or ViTMAE
    repo id or local directory) while the heads and decoders start fresh (`EquiRecon*.from_pretrained_backbone`).

    The encoder's architecture (sizes, patch size, image size) is the checkpoint's; `config` or `config_kwargs` set
    the EquiRecon fields (`d_patch`, `d_equi`, ...), and a backbone in `config` is replaced. `image_size` pretrains
    at another size, with the position embeddings resized. Loading is strict: every encoder weight comes from the
    checkpoint (see `load_pretrained_encoder`, `load_backbone_weights`). `drop_path_rate` sets the encoder's
    stochastic depth for training (a DINOv2 encoder has it; ViT, DeiT and ViTMAE encoders do not).

    Example:

    ```python
    >>> model = EquiReconForPreTraining.from_pretrained_backbone("facebook/dinov2-small", d_patch=512, d_equi=256)
    ```"""
    backbone_kwargs = backbone_kwargs or {}
    backbone_config = encoder_backbone_config(
        pretrained_encoder_config(pretrained_model_name_or_path, **backbone_kwargs)
    )
    if image_size is not None:
        backbone_config.image_size = image_size
    if drop_path_rate:
        if not hasattr(backbone_config, "drop_path_rate"):
            raise ValueError(
                f"drop_path_rate={drop_path_rate}: a {backbone_config.model_type} encoder has no stochastic depth; "
                "leave it out, or start from a DINOv2 checkpoint."
            )
        backbone_config.drop_path_rate = drop_path_rate
    fields = config.to_dict() if config is not None else {}
    if config is not None and config.backbone_config.num_hidden_layers != backbone_config.num_hidden_layers:
        for key in ("stage_names", "out_features", "out_indices"):  # the stages of `config`'s depth
            fields.pop(key, None)
    # Validated before any weight is read.
    config = EquiReconConfig(**{**fields, **config_kwargs, "backbone_config": backbone_config})
    model = model_class(config)
    base = getattr(model, model_class.base_model_prefix, model)
    load_backbone_weights(base.backbone, load_pretrained_encoder(pretrained_model_name_or_path, **backbone_kwargs))
    logger.info(
        "Encoder initialised from %s (%s, %d layers, hidden size %d, patch %d, %d² inputs); heads and decoders "
        "start fresh.",
        pretrained_model_name_or_path,
        backbone_config.model_type,
        backbone_config.num_hidden_layers,
        backbone_config.hidden_size,
        config.patch_size,
        config.image_size,
    )
    return model


__all__ = [
    "encoder_backbone_config",
    "from_pretrained_backbone",
    "load_backbone_weights",
    "load_pretrained_encoder",
    "pretrained_encoder_config",
    "without_pooler",
]
