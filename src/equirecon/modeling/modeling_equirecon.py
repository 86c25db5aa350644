# Copyright 2026 The equirecon developers. Licensed under the Apache License, Version 2.0.
"""PyTorch EquiRecon models.

Wang et al., "Self-Supervised Learning Based on Transformed Image Reconstruction for Equivariance-Coherent Feature
Representation", AAAI 2026. The encoder is a stock transformers ViT-family model; a per-token linear head splits its
features into an invariant part (host SSL objective) and an equivariant part, from which K decoders reconstruct the
images at intermediate points of the transformation linking the two views.

Self-contained (torch, transformers and sibling modules only) so that it travels with `save_pretrained` as Hub
custom code.
"""

from __future__ import annotations

import copy
import inspect
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, AutoModel, PretrainedConfig, PreTrainedModel, ViTConfig, ViTModel
from transformers import initialization as init
from transformers.modeling_outputs import ImageClassifierOutput, SemanticSegmenterOutput
from transformers.utils import ModelOutput, logging

from .configuration_equirecon import MASKED_OBJECTIVES, EquiReconConfig, _as_pair
from .objectives import (
    DINOHeads,
    TeacherCentering,
    WeightNormalizedLinear,
    build_objective,
    resolve_steps,
    teacher_momentum_schedule,
)

logger = logging.get_logger(__name__)


@dataclass
class EquiReconModelOutput(ModelOutput):
    r"""
    last_hidden_state (`torch.FloatTensor` of shape `(batch_size, sequence_length, hidden_size)`):
        Encoder output, prefix tokens (CLS, registers) first, then the patch tokens in raster order.
    pooler_output (`torch.FloatTensor` of shape `(batch_size, hidden_size)`):
        The CLS token of `last_hidden_state`.
    invariant_embeds (`torch.FloatTensor` of shape `(batch_size, sequence_length, d_patch - d_equi)`):
        Per-token invariant part of the head, the part trained by the host SSL objective.
    equivariant_embeds (`torch.FloatTensor` of shape `(batch_size, sequence_length, d_equi)`):
        Per-token equivariant part of the head, the part read by the reconstruction decoders.
    hidden_states (`tuple(torch.FloatTensor)`, *optional*, returned when `output_hidden_states=True`):
        The encoder's hidden states (embeddings, then each layer).
    attentions (`tuple(torch.FloatTensor)`, *optional*, returned when `output_attentions=True`):
        The encoder's attention weights (needs `attn_implementation="eager"`).
    """

    last_hidden_state: torch.FloatTensor | None = None
    pooler_output: torch.FloatTensor | None = None
    invariant_embeds: torch.FloatTensor | None = None
    equivariant_embeds: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None


@dataclass
class EquiReconForPreTrainingOutput(ModelOutput):
    r"""
    loss (`torch.FloatTensor` of shape `()`, returned when `return_loss=True`):
        `ssl_weight * ssl_loss + reconstruction_weight * reconstruction_loss`, both weights from the config (the
        reconstruction term when targets are given). `EquiReconTrainer` optimises exactly this.
    ssl_loss (`torch.FloatTensor` of shape `()`):
        Host SSL objective on the pooled invariant features of the two views.
    reconstruction_loss (`torch.FloatTensor` of shape `()`, returned when intermediate targets are given):
        Masked mean squared error of the K reconstructions, averaged over the K decoders.
    reconstructions (`torch.FloatTensor` of shape `(batch_size, K, 3, height, width)`, *optional*):
        Decoder outputs, returned when `output_reconstructions=True`.
    pooled_invariant_embeds (`torch.FloatTensor` of shape `(2, batch_size, d_patch - d_equi)`):
        Invariant features of the first and second view, averaged over the patch tokens (the CLS token's for the
        DINO family): what the host SSL objective reads. (Per-token invariant features are
        `EquiReconModelOutput.invariant_embeds`.)
    equivariant_embeds (`torch.FloatTensor` of shape `(2, batch_size, num_patches, d_equi)`):
        Per-patch equivariant features of the first and second view.
    hidden_states, attentions:
        As in `EquiReconModelOutput`, for the two views stacked along the batch (first view first).
    """

    loss: torch.FloatTensor | None = None
    ssl_loss: torch.FloatTensor | None = None
    reconstruction_loss: torch.FloatTensor | None = None
    reconstructions: torch.FloatTensor | None = None
    pooled_invariant_embeds: torch.FloatTensor | None = None
    equivariant_embeds: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None


def _accepts_argument(module: nn.Module, name: str) -> bool:
    return name in inspect.signature(module.forward).parameters


def build_backbone(config: EquiReconConfig) -> PreTrainedModel:
    """The transformers encoder described by `config.backbone_config`, without a pooling head (EquiRecon pools the
    CLS token itself; an unused pooler would only idle under DDP), and with a mask token when the host objective
    masks patch tokens (ViT and DeiT take it as an argument; Dinov2 reads `use_mask_token` from its config)."""
    model_class = AutoModel._model_mapping[type(config.backbone_config)]
    kwargs = _without_pooler(model_class)
    if config.uses_masks and "use_mask_token" in inspect.signature(model_class.__init__).parameters:
        kwargs["use_mask_token"] = True
    return model_class(config.backbone_config, **kwargs)


def _without_pooler(model_class: type[PreTrainedModel]) -> dict[str, Any]:
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
        name, config=config, output_loading_info=True, dtype=torch.float32, **_without_pooler(model_class), **kwargs
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
    """The backbone config EquiRecon builds for a checkpoint's: without a mask token (unless the objective masks
    patch tokens, `from_pretrained_backbone` turns it back on: otherwise it is a weight without a gradient), and a ViTMAE's as a ViT's (ViTMAE's forward shuffles and
    masks the tokens; its encoder weights are a ViT's)."""
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
        size = _as_pair(backbone.config.image_size)[0]
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


def _is_fully_sharded(module: nn.Module) -> bool:
    """Whether FSDP2 (`torch.distributed.fsdp.fully_shard`, what accelerate and Trainer use by default) wraps `module`."""
    if not torch.distributed.is_available():
        return False
    from torch.distributed.fsdp import FSDPModule

    return isinstance(module, FSDPModule)


def masked_mse(prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean squared error over the valid pixels only (`mask` is 1 where a pixel is valid, broadcast over channels)."""
    squared_error = (prediction.float() - target.float()).pow(2)
    if mask is None:
        return squared_error.mean()
    mask = mask.to(squared_error.dtype).expand_as(squared_error)
    return (squared_error * mask).sum() / mask.sum().clamp_min(1.0)


class EquiReconPreTrainedModel(PreTrainedModel):
    config_class = EquiReconConfig
    config: EquiReconConfig
    base_model_prefix = "equirecon"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    supports_gradient_checkpointing = True
    _no_split_modules = ["EquiReconDecoder"]
    _supports_sdpa = True
    # Checkpoints of one task carry heads the others lack (SSL head and decoders, classifier, segmentation head):
    # loading the encoder or another head from them leaves those out without a report.
    # The EMA teacher of the DINO family is a pretraining-only copy, too.
    _keys_to_ignore_on_load_unexpected = [
        r"^ssl_objective\.",
        r"^decoders\.",
        r"^classifier\.",
        r"^head\.",
        r"^teacher\.",
    ]

    def _init_weights(self, module: nn.Module) -> None:
        """Truncated-normal linear and conv layers (as Dinov2), standard norms; layers that carry an `init_gain`
        (the decoders', see `EquiReconDecoder`) are scaled by fan-in instead. The encoder is a sub-model and
        initialises itself. The DINO family's custom tensors are set here too, since transformers only restores
        tensors missing from a checkpoint through this method: the weight-normalised prototype layers, the centres
        (zero) and the teacher's `initialized` flag (false, so a teacher absent from a checkpoint is copied from
        the student before use)."""
        super()._init_weights(module)
        if isinstance(module, WeightNormalizedLinear):
            init.trunc_normal_(module.weight, mean=0.0, std=self.config.initializer_range)
            if module.weight_g is not None:
                init.ones_(module.weight_g)
        elif isinstance(module, TeacherCentering):
            init.zeros_(module.center)
        elif isinstance(module, EquiReconTeacher):
            init.zeros_(module.initialized)
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            gain = getattr(module, "init_gain", None)
            if gain is None:
                init.trunc_normal_(module.weight, mean=0.0, std=self.config.initializer_range)
            else:
                init.normal_(module.weight, mean=0.0, std=gain / module.weight[0].numel() ** 0.5)
            if module.bias is not None:
                init.zeros_(module.bias)

    @classmethod
    def from_pretrained_backbone(
        cls,
        pretrained_model_name_or_path: str | os.PathLike,
        config: EquiReconConfig | None = None,
        image_size: int | None = None,
        backbone_kwargs: dict[str, Any] | None = None,
        drop_path_rate: float | None = None,
        **config_kwargs: Any,
    ) -> EquiReconPreTrainedModel:
        """Build a model whose encoder starts from a pretrained transformers checkpoint (a DINOv2, ViT, DeiT or ViTMAE
        repo id or local directory) while the heads and decoders start fresh.

        The encoder's architecture (sizes, patch size, image size) is the checkpoint's; `config` or `config_kwargs`
        set the EquiRecon fields (`d_patch`, `d_equi`, ...), and a backbone in `config` is replaced. `image_size`
        pretrains at another size, with the position embeddings resized. Loading is strict: every encoder weight
        comes from the checkpoint (see `load_pretrained_encoder`, `load_backbone_weights`). `drop_path_rate` sets the
        encoder's stochastic depth for training (a DINOv2 encoder has it; ViT, DeiT and ViTMAE encoders do not).

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
        objective = {**fields, **config_kwargs}.get("ssl_objective", EquiReconConfig().ssl_objective)
        if objective in MASKED_OBJECTIVES and hasattr(backbone_config, "use_mask_token"):
            backbone_config.use_mask_token = True  # iBOT and DINOv2 mask patch tokens: a fresh mask token
        # Validated before any weight is read.
        config = EquiReconConfig(**{**fields, **config_kwargs, "backbone_config": backbone_config})
        model = cls(config)
        base = getattr(model, cls.base_model_prefix, model)
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


class EquiReconModel(EquiReconPreTrainedModel):
    """The EquiRecon encoder: a ViT-family backbone and the per-token head splitting invariant and equivariant parts."""

    def __init__(self, config: EquiReconConfig, add_projection: bool = True):
        r"""
        add_projection (`bool`, *optional*, defaults to `True`):
            Build the per-token head that splits invariant and equivariant parts. The fine-tuning heads read the
            encoder's tokens and leave it out, so that every parameter they hold gets a gradient (DDP needs no
            `find_unused_parameters`).
        """
        super().__init__(config)
        self.backbone = build_backbone(config)
        self.projection = nn.Linear(config.hidden_size, config.d_patch) if add_projection else None
        self._backbone_takes_interpolate = _accepts_argument(self.backbone, "interpolate_pos_encoding")
        self.post_init()

    @property
    def num_prefix_tokens(self) -> int:
        """Tokens before the patch tokens (`EquiReconConfig.num_prefix_tokens`)."""
        return self.config.num_prefix_tokens

    def get_input_embeddings(self) -> nn.Module:
        return self.backbone.get_input_embeddings()

    def forward(
        self,
        pixel_values: torch.Tensor,
        bool_masked_pos: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        interpolate_pos_encoding: bool | None = None,
        return_dict: bool | None = None,
    ) -> EquiReconModelOutput | tuple:
        r"""
        bool_masked_pos (`torch.BoolTensor` of shape `(batch_size, num_patches)`, *optional*):
            Patch tokens to replace by the encoder's mask token (iBOT/DINOv2 students); needs an encoder built with
            one (`EquiReconConfig.uses_masks`).
        interpolate_pos_encoding (`bool`, *optional*):
            Resize the position embeddings to the input's patch grid, for images of another size than the
            pretraining size. Dinov2 backbones always do.
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        backbone_kwargs: dict[str, Any] = {}
        if bool_masked_pos is not None:
            backbone_kwargs["bool_masked_pos"] = bool_masked_pos
        if output_hidden_states is not None:
            backbone_kwargs["output_hidden_states"] = output_hidden_states
        if output_attentions is not None:
            backbone_kwargs["output_attentions"] = output_attentions
        if interpolate_pos_encoding is not None and self._backbone_takes_interpolate:
            backbone_kwargs["interpolate_pos_encoding"] = interpolate_pos_encoding
        outputs = self.backbone(pixel_values, **backbone_kwargs)
        sequence_output = outputs.last_hidden_state
        invariant = equivariant = None
        if self.projection is not None:
            invariant, equivariant = self.projection(sequence_output).split(
                [self.config.d_inv, self.config.d_equi], dim=-1
            )
        output = EquiReconModelOutput(
            last_hidden_state=sequence_output,
            pooler_output=sequence_output[:, 0],
            invariant_embeds=invariant,
            equivariant_embeds=equivariant,
            hidden_states=getattr(outputs, "hidden_states", None),
            attentions=getattr(outputs, "attentions", None),
        )
        return output if return_dict else output.to_tuple()


class EquiReconDecoder(nn.Module):
    """One intermediate-state decoder: a linear layer maps each token to its own p×p patch of C channels
    (pixel-shuffled to the input resolution), then four 3×3 convolutions at full resolution produce RGB.

    Each token writing its own patch keeps the receptive field local, so the decoder cannot reconstruct the
    intermediate image by copying neighbouring pixels of the second view: it must be told θ by the encoder
    (an upsampling decoder let the encoder skip θ)."""

    def __init__(self, config: EquiReconConfig):
        super().__init__()
        patch, channels, hidden = config.patch_size, config.decoder_patch_channels, config.decoder_hidden_channels
        self.patch_size = patch
        self.to_patches = nn.Linear(2 * config.d_equi, channels * patch * patch)
        self.convs = nn.Sequential(
            nn.Conv2d(channels, hidden, 3, padding=1),
            nn.GELU(),
            nn.Conv2d(hidden, hidden, 3, padding=1),
            nn.GELU(),
            nn.Conv2d(hidden, hidden, 3, padding=1),
            nn.GELU(),
            nn.Conv2d(hidden, config.backbone_config.num_channels, 3, padding=1),
        )
        # Fan-in scaled initialisation (He before a GELU, LeCun elsewhere), read by `_init_weights`, so the
        # output and the gradient reaching the encoder have the inputs' scale from the first step. With the encoder's
        # 0.02 std, five layers in a row gave outputs of ~1e-4 and a reconstruction gradient ~1e-6 of the SSL one:
        # the auxiliary task waited tens of steps to start (`benchmarks/reconstruction_signal.py`).
        layers = [self.to_patches, *(layer for layer in self.convs if isinstance(layer, nn.Conv2d))]
        for index, layer in enumerate(layers):
            layer.init_gain = 2**0.5 if 0 < index < len(layers) - 1 else 1.0

    def forward(self, patch_features: torch.Tensor, grid_size: tuple[int, int]) -> torch.Tensor:
        """`patch_features` (B, h·w, 2·d_equi) in raster order → image (B, 3, h·p, w·p)."""
        batch_size = patch_features.shape[0]
        patches = self.to_patches(patch_features)  # (B, h·w, C·p·p)
        patches = patches.transpose(1, 2).reshape(batch_size, -1, *grid_size)
        return self.convs(F.pixel_shuffle(patches, self.patch_size))


class EquiReconTeacher(nn.Module):
    """The EMA teacher of the DINO family: an `EquiReconModel` and prototype heads shaped like the student's, updated
    only by `EquiReconForPreTraining.update_teacher`.

    Its parameters never require gradients, so DDP leaves them out of gradient synchronisation (DDP reduces only
    parameters with `requires_grad`) and the Trainer's optimizer never sees them, while DDP still broadcasts them
    from rank 0 when it wraps the model, so every process starts with the same teacher. It always runs in eval
    mode (no dropout or drop path, as the reference teachers). `initialized` records whether the weights have been
    copied from the student: a teacher absent from a checkpoint (a student-only or encoder-only start) is copied
    before first use instead of starting from random weights."""

    def __init__(self, config: EquiReconConfig, heads: DINOHeads):
        super().__init__()
        self.equirecon = EquiReconModel(config)
        self.heads = heads
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))
        self.requires_grad_(False)

    def train(self, mode: bool = True) -> EquiReconTeacher:
        return super().train(False)


class EquiReconForPreTraining(EquiReconPreTrainedModel):
    """EquiRecon pretraining: the host SSL objective on the invariant part and, unless `reconstruction_weight` is 0,
    K decoders reconstructing the intermediate transformed images from both views' equivariant parts.

    DINO, iBOT and DINOv2 hosts keep an EMA teacher (`EquiReconTeacher`, attribute `teacher`) that sees both views
    unmasked and gets no reconstruction loss. `EquiReconTrainer` drives it: `set_training_progress` at the start of
    each optimizer step (teacher-temperature schedule), `update_teacher` after it (EMA with a cosine momentum
    schedule, and the centres, from every micro-batch of the step), both functions of `global_step`, so a resumed run
    continues them exactly; the teacher's weights and centres are saved in every checkpoint. A training loop of
    one's own calls `update_teacher` once per optimizer step, or the teacher and its centres never move.
    `save_pretrained` writes the teacher next to the student under `teacher.*`, which the encoder and the downstream
    heads skip when they load; `export_teacher` returns it as an `EquiReconModel` of its own (DINO evaluates the
    teacher)."""

    def __init__(self, config: EquiReconConfig):
        super().__init__(config)
        self.equirecon = EquiReconModel(config)
        self.ssl_objective = build_objective(config)
        self.decoders = nn.ModuleList(
            [EquiReconDecoder(config) for _ in range(config.num_intermediates)]
            if config.reconstruction_weight > 0
            else []
        )
        self.teacher = (
            EquiReconTeacher(config, self.ssl_objective.make_teacher_heads())
            if self.ssl_objective.needs_teacher
            else None
        )
        self.post_init()

    @classmethod
    def from_pretrained(cls, *args: Any, **kwargs: Any):
        # transformers re-creates loaded tensors as trainable parameters, undoing the teacher's freeze.
        loaded = super().from_pretrained(*args, **kwargs)
        model = loaded[0] if isinstance(loaded, tuple) else loaded  # output_loading_info=True gives a tuple
        if model.teacher is not None:
            model.teacher.requires_grad_(False)
        return loaded

    def _student_parts(self) -> list[nn.Module]:
        """The student modules the teacher mirrors, in the order of `teacher.equirecon`, `teacher.heads`."""
        return [self.equirecon, self.ssl_objective.heads]

    def _teacher_parts(self) -> list[nn.Module]:
        return [self.teacher.equirecon, self.teacher.heads]

    def _require_teacher(self) -> EquiReconTeacher:
        if self.teacher is None:
            raise ValueError(
                f"ssl_objective {self.config.ssl_objective!r} has no EMA teacher; only the DINO family "
                "('dino', 'ibot', 'dinov2') does."
            )
        return self.teacher

    def _paired_tensors(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(student, teacher) pairs of the tensors the teacher mirrors, as stored (no copy). Under FSDP2 (`fully_shard`)
        both are DTensors sharded alike, on dim 0 over the same mesh whichever FSDP group holds them, so each process
        pairs its own shards and the teacher's updates need no communication."""
        pairs = []
        for student_part, teacher_part in zip(self._student_parts(), self._teacher_parts(), strict=True):
            student_state = student_part.state_dict()
            pairs.extend((student_state[name], tensor) for name, tensor in teacher_part.state_dict().items())
        return pairs

    @torch.no_grad()
    def reset_teacher(self) -> None:
        """Copy the student's encoder and heads into the teacher (the start of DINO training). The copy is in place,
        tensor by tensor, so that it also works on a model sharded with FSDP2, between steps."""
        teacher = self._require_teacher()
        for student_tensor, teacher_tensor in self._paired_tensors():
            teacher_tensor.copy_(student_tensor)
        teacher.initialized.fill_(True)

    def ensure_teacher_initialized(self) -> None:
        """Copy the student into a teacher that has not been copied yet (a fresh model; a loaded checkpoint keeps its
        teacher). `EquiReconTrainer` calls it at the start of training, before any forward: a model sharded with FSDP
        cannot make the copy inside its forward, where the parameters are gathered."""
        if not bool(self._require_teacher().initialized):
            self.reset_teacher()

    @torch.no_grad()
    def update_teacher(self, step: int, total_steps: int) -> float:
        """The EMA update after optimizer step `step` (0-based) of `total_steps`:
        `teacher ← m·teacher + (1 − m)·student` with `m = teacher_momentum_schedule(step, total_steps,
        config.teacher_momentum)` (`facebookresearch/dino:main_dino.py`, "EMA update for the teacher"; one fused
        update per dtype as `facebookresearch/dinov2:dinov2/train/ssl_meta_arch.py: update_teacher`). Integer
        buffers are copied. The objective's centres move here too, from the scores of every micro-batch of the step.
        On a model sharded with FSDP2 each process updates its own shards. Returns m."""
        self.ensure_teacher_initialized()
        self.ssl_objective.step_centres()
        momentum = teacher_momentum_schedule(step, total_steps, self.config.teacher_momentum)
        teacher_tensors: dict[torch.dtype, list[torch.Tensor]] = {}
        student_tensors: dict[torch.dtype, list[torch.Tensor]] = {}
        for student_tensor, teacher_tensor in self._paired_tensors():
            if teacher_tensor.is_floating_point():
                teacher_tensors.setdefault(teacher_tensor.dtype, []).append(teacher_tensor)
                student_tensors.setdefault(teacher_tensor.dtype, []).append(student_tensor.to(teacher_tensor.dtype))
            else:
                teacher_tensor.copy_(student_tensor)
        for dtype, tensors in teacher_tensors.items():
            torch._foreach_mul_(tensors, momentum)
            torch._foreach_add_(tensors, student_tensors[dtype], alpha=1 - momentum)
        return momentum

    def set_training_progress(self, step: int, total_steps: int) -> None:
        """Tell the objective which optimizer step (0-based) of `total_steps` is about to run: the DINO family's
        teacher temperature is a function of it. Other objectives ignore it."""
        if self.teacher is not None:
            self.ssl_objective.set_progress(step, total_steps)

    def cancel_last_layer_gradients(self, step: int, total_steps: int) -> bool:
        """Drop the gradients of the student heads' last layers during the first `config.dino_freeze_last_layer_steps`
        (DINO's `cancel_gradients_last_layer`, `facebookresearch/dino:utils.py`; DINOv2 sets their learning rate to
        0 instead, the same update). Call between backward and the optimizer step. Returns whether it did."""
        if self.teacher is None or step >= resolve_steps(self.config.dino_freeze_last_layer_steps, total_steps):
            return False
        for layer in self.ssl_objective.last_layers():
            for parameter in layer.parameters():
                parameter.grad = None
        return True

    def export_teacher(self) -> EquiReconModel:
        """The teacher's encoder and head as a stand-alone `EquiReconModel` (on the teacher's device, eval mode),
        e.g. to evaluate or `save_pretrained` it as DINO does."""
        self.ensure_teacher_initialized()
        config = EquiReconConfig.from_dict(self.config.to_dict())
        model = EquiReconModel(config)
        model.load_state_dict(self.teacher.equirecon.state_dict())
        return model.to(self.teacher.initialized.device).eval()

    def forward(
        self,
        pixel_values: torch.Tensor,
        transformed_pixel_values: torch.Tensor,
        intermediate_pixel_values: torch.Tensor | None = None,
        intermediate_mask: torch.Tensor | None = None,
        return_loss: bool = True,
        output_reconstructions: bool = False,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        return_dict: bool | None = None,
        bool_masked_pos: torch.Tensor | None = None,
        local_pixel_values: torch.Tensor | None = None,
    ) -> EquiReconForPreTrainingOutput | tuple:
        r"""
        pixel_values (`torch.FloatTensor` of shape `(batch_size, 3, height, width)`):
            The first view v1 = A1(I).
        transformed_pixel_values (`torch.FloatTensor` of shape `(batch_size, 3, height, width)`):
            The second view v2 = g_θ(A2(I)).
        intermediate_pixel_values (`torch.FloatTensor` of shape `(batch_size, K, 3, height, width)`, *optional*):
            Targets u_k = g_{kθ/(K+1)}(A2(I)), k = 1..K, in the model's input space. Needed for the reconstruction
            loss; without them only the SSL loss is computed.
        intermediate_mask (`torch.FloatTensor` broadcastable to `(batch_size, K, 1, height, width)`, *optional*):
            1 where a target pixel is valid, 0 where a geometric transformation moved it in from outside the image.
        return_loss (`bool`, *optional*, defaults to `True`):
            Compute the losses. Trainer relies on this flag to report an evaluation loss without labels.
        output_reconstructions (`bool`, *optional*, defaults to `False`):
            Return the decoders' outputs.
        bool_masked_pos (`torch.BoolTensor` of shape `(batch_size, 2, num_patches)`, *optional*):
            Patch tokens of the first and second view that the student sees as its mask token (iBOT, DINOv2; needed
            for their loss). The teacher sees the views unmasked. A pair with any masked token is left out of the
            reconstruction loss, so the decoders learn only from unmasked features.
        local_pixel_values (`torch.FloatTensor` of shape `(batch_size, M, 3, size, size)`, *optional*):
            Multi-crop local crops (DINO family): the student encodes them and distils their CLS token from the
            teacher's two global views; the teacher and the decoders never see them.
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        if pixel_values.shape != transformed_pixel_values.shape:
            raise ValueError(
                f"`pixel_values` {tuple(pixel_values.shape)} and `transformed_pixel_values` "
                f"{tuple(transformed_pixel_values.shape)} must have the same shape (both views at one size)."
            )
        batch_size, _, height, width = pixel_values.shape
        patch = self.config.patch_size
        if height % patch or width % patch:
            raise ValueError(f"Image size {height}×{width} must be a multiple of the patch size {patch}.")
        grid_size = (height // patch, width // patch)
        student_masks = self._check_masks(bool_masked_pos, batch_size, grid_size, return_loss)
        if local_pixel_values is not None and self.teacher is None:
            raise ValueError(
                f"`local_pixel_values` (multi-crop) needs a DINO-family ssl_objective, got {self.config.ssl_objective!r}."
            )
        if local_pixel_values is not None and (
            local_pixel_values.ndim != 5
            or local_pixel_values.shape[0] != batch_size
            or local_pixel_values.shape[2] != 3
        ):
            raise ValueError(
                f"`local_pixel_values` has shape {tuple(local_pixel_values.shape)}, expected (batch_size={batch_size}, "
                "num_local_crops, 3, size, size)."
            )

        # Both views in one encoder call: one pass over the weights, and batch statistics stay per view in the heads.
        views = torch.cat([pixel_values, transformed_pixel_values], dim=0)
        outputs = self.equirecon(
            views,
            bool_masked_pos=student_masks,
            output_hidden_states=output_hidden_states,
            output_attentions=output_attentions,
            return_dict=True,
        )
        num_prefix = self.config.num_prefix_tokens
        invariant = outputs.invariant_embeds.unflatten(0, (2, batch_size))
        pooled_invariant = invariant[:, :, 0] if self.teacher is not None else invariant[:, :, num_prefix:].mean(dim=2)
        equivariant = outputs.equivariant_embeds[:, num_prefix:].unflatten(0, (2, batch_size))

        ssl_loss = reconstruction_loss = loss = None
        if return_loss:
            if self.teacher is not None:
                ssl_loss = self._distillation_loss(views, invariant, bool_masked_pos, local_pixel_values)
            else:
                ssl_loss = self.ssl_objective(pooled_invariant[0], pooled_invariant[1])
            loss = self.config.ssl_weight * ssl_loss

        reconstructions = None
        wants_reconstruction = output_reconstructions or (return_loss and intermediate_pixel_values is not None)
        if wants_reconstruction and len(self.decoders) > 0:
            reconstructions = self.reconstruct(equivariant, grid_size)
            if return_loss and intermediate_pixel_values is not None:
                expected = (batch_size, len(self.decoders), 3, height, width)
                if tuple(intermediate_pixel_values.shape) != expected:
                    raise ValueError(
                        f"`intermediate_pixel_values` has shape {tuple(intermediate_pixel_values.shape)}, expected "
                        f"{expected} (batch, K=num_intermediates, channels, height, width)."
                    )
                if bool_masked_pos is not None:  # only pairs whose views are both unmasked
                    unmasked = ~bool_masked_pos.flatten(1).any(dim=1)
                    pair_mask = unmasked.to(reconstructions.dtype).view(batch_size, 1, 1, 1, 1)
                    intermediate_mask = pair_mask if intermediate_mask is None else intermediate_mask * pair_mask
                reconstruction_loss = masked_mse(reconstructions, intermediate_pixel_values, intermediate_mask)
                loss = loss + self.config.reconstruction_weight * reconstruction_loss

        output = EquiReconForPreTrainingOutput(
            loss=loss,
            ssl_loss=ssl_loss,
            reconstruction_loss=reconstruction_loss,
            reconstructions=reconstructions if output_reconstructions else None,
            pooled_invariant_embeds=pooled_invariant,
            equivariant_embeds=equivariant,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )
        return output if return_dict else output.to_tuple()

    def reconstruct(self, equivariant_embeds: torch.Tensor, grid_size: tuple[int, int]) -> torch.Tensor:
        """The K intermediate states (batch, K, 3, h·p, w·p) from both views' per-patch equivariant parts
        (2, batch, h·w, d_equi), as `forward`'s `equivariant_embeds`. The trainer's unpaired control passes another
        pair's first view here."""
        decoder_input = torch.cat([equivariant_embeds[0], equivariant_embeds[1]], dim=-1)
        return torch.stack([decoder(decoder_input, grid_size) for decoder in self.decoders], dim=1)

    def _check_masks(
        self, bool_masked_pos: torch.Tensor | None, batch_size: int, grid_size: tuple[int, int], return_loss: bool
    ) -> torch.Tensor | None:
        """Validate `bool_masked_pos` (batch, 2, N) and return the student's masks in the views' order (2·batch, N)."""
        if bool_masked_pos is None:
            if return_loss and self.config.uses_masks:
                raise ValueError(
                    f"ssl_objective {self.config.ssl_objective!r} distils masked patch tokens: pass `bool_masked_pos` "
                    "(batch, 2, num_patches). The pretraining data pipeline makes it when given a mask generator "
                    "(`equirecon.training.BlockMaskGenerator.from_config(config)`, as `equirecon pretrain` does)."
                )
            return None
        if not self.config.uses_masks:
            raise ValueError(
                f"`bool_masked_pos` was given, but ssl_objective {self.config.ssl_objective!r} does not mask patch "
                f"tokens (only {('ibot', 'dinov2')} do)."
            )
        expected = (batch_size, 2, grid_size[0] * grid_size[1])
        if tuple(bool_masked_pos.shape) != expected:
            raise ValueError(
                f"`bool_masked_pos` has shape {tuple(bool_masked_pos.shape)}, expected {expected} (batch, the two "
                "views, patches in raster order)."
            )
        return bool_masked_pos.bool().transpose(0, 1).flatten(0, 1)

    def _distillation_loss(
        self,
        views: torch.Tensor,
        invariant: torch.Tensor,
        bool_masked_pos: torch.Tensor | None,
        local_pixel_values: torch.Tensor | None,
    ) -> torch.Tensor:
        """The DINO-family loss: the teacher encodes the unmasked global views without gradient, the student its
        local crops (a second encoder call: they have another size), and the objective compares."""
        if not bool(self._require_teacher().initialized) and _is_fully_sharded(self):
            raise RuntimeError(
                "The EMA teacher of a model sharded with FSDP must be copied from the student before its first forward "
                "(`ensure_teacher_initialized()`, as EquiReconTrainer does at the start of training): inside the "
                "forward the parameters are gathered, and the copy would be lost."
            )
        self.ensure_teacher_initialized()
        with torch.no_grad():
            teacher_invariant = self.teacher.equirecon(views, return_dict=True).invariant_embeds
        local_cls = None
        if local_pixel_values is not None:
            batch_size, num_crops = local_pixel_values.shape[:2]
            local = self.equirecon(local_pixel_values.flatten(0, 1), interpolate_pos_encoding=True, return_dict=True)
            local_cls = local.invariant_embeds[:, 0].unflatten(0, (batch_size, num_crops)).transpose(0, 1)
        masks = bool_masked_pos.bool().transpose(0, 1) if bool_masked_pos is not None else None
        return self.ssl_objective(
            invariant, teacher_invariant.unflatten(0, invariant.shape[:2]), self.teacher.heads, masks, local_cls
        )


@contextmanager
def running_statistics_for_single_values(model: nn.Module, exclude: nn.Module, batch_size: int) -> Iterator[None]:
    """Inside, a BatchNorm layer of `model` (outside `exclude`) that gets one value per channel in training normalises
    it with its running statistics and leaves them unchanged, where PyTorch would raise. This happens only with a
    batch of one example (the classifier's features, UPerNet's globally pooled map), which the last batch of an epoch
    can be (33 images at batch size 32); norms that see more than one value per channel train as usual."""
    if not (model.training and batch_size == 1):
        yield
        return
    switched: list[nn.Module] = []

    def use_running_statistics(norm: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        if norm.training and args[0].numel() == args[0].shape[1]:
            norm.train(False)
            switched.append(norm)

    def restore(norm: nn.Module, args: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        if switched and switched[-1] is norm:
            switched.pop().train(True)

    excluded = set(exclude.modules())
    norms = [m for m in model.modules() if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)) and m not in excluded]
    handles = [
        hook
        for norm in norms
        for hook in (norm.register_forward_pre_hook(use_running_statistics), norm.register_forward_hook(restore))
    ]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
        for norm in switched:
            norm.train(True)


class EquiReconDownstreamModel(EquiReconPreTrainedModel):
    """Shared behaviour of the fine-tuning heads: they load the encoder of any EquiRecon checkpoint (pretraining
    decoders, SSL heads and the invariant/equivariant projection are dropped silently: a head reads the encoder's
    tokens), can freeze it for probing, and share one `forward` (encode, then the subclass's `_predict`). A training
    batch of one example goes through the heads' BatchNorm layers that would see one value per channel on their
    running statistics."""

    _keys_to_ignore_on_load_unexpected = [
        *EquiReconPreTrainedModel._keys_to_ignore_on_load_unexpected,
        r"^equirecon\.projection\.",
    ]
    #: The output class of `forward`.
    _output_class: type[ModelOutput] = ModelOutput

    def _build_encoder(self, config: EquiReconConfig) -> None:
        self.num_labels = config.num_labels
        self.equirecon = EquiReconModel(config, add_projection=False)

    def _finish_init(self) -> None:
        self.post_init()
        if self.config.freeze_backbone:
            self.freeze_backbone()

    @classmethod
    def from_pretrained(cls, *args: Any, **kwargs: Any):
        # transformers re-creates loaded tensors as trainable parameters, undoing the freeze done in __init__.
        loaded = super().from_pretrained(*args, **kwargs)
        model = loaded[0] if isinstance(loaded, tuple) else loaded  # output_loading_info=True gives a tuple
        if model.config.freeze_backbone:
            model.freeze_backbone()
        return loaded

    def freeze_backbone(self, freeze: bool = True) -> None:
        """Stop (or restart) gradients to the encoder, e.g. for a linear probe; also recorded in the config."""
        self.config.freeze_backbone = freeze
        self.equirecon.requires_grad_(not freeze)

    def _needs_hidden_states(self) -> bool:
        return False

    def _predict(
        self, outputs: EquiReconModelOutput, pixel_values: torch.Tensor, labels: torch.Tensor | None
    ) -> tuple[torch.Tensor | None, torch.Tensor]:
        """(loss or None, logits) from the encoder's outputs."""
        raise NotImplementedError

    def forward(
        self,
        pixel_values: torch.Tensor,
        labels: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        interpolate_pos_encoding: bool | None = None,
        return_dict: bool | None = None,
    ) -> ModelOutput | tuple:
        r"""
        labels (`torch.LongTensor`, *optional*):
            Classification: class indices `(batch_size,)` (single-label), multi-hot `(batch_size, num_labels)`
            targets (multi-label) or values (`num_labels == 1`: regression); the loss follows `config.problem_type`.
            Segmentation: a class index per pixel `(batch_size, height, width)`; `config.semantic_loss_ignore_index`
            (255) marks pixels left out of the loss.
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        outputs = self.equirecon(
            pixel_values,
            output_hidden_states=True if self._needs_hidden_states() else output_hidden_states,
            output_attentions=output_attentions,
            interpolate_pos_encoding=interpolate_pos_encoding,
            return_dict=True,
        )
        with running_statistics_for_single_values(self, exclude=self.equirecon, batch_size=pixel_values.shape[0]):
            loss, logits = self._predict(outputs, pixel_values, labels)
        output = self._output_class(
            loss=loss,
            logits=logits,
            hidden_states=outputs.hidden_states if output_hidden_states else None,
            attentions=outputs.attentions,
        )
        return output if return_dict else output.to_tuple()


class EquiReconForImageClassification(EquiReconDownstreamModel):
    """EquiRecon encoder with a linear classifier on the CLS token concatenated with the mean patch token, the
    DINOv2 linear-evaluation recipe (as `Dinov2ForImageClassification`)."""

    _output_class = ImageClassifierOutput
    _keys_to_ignore_on_load_missing = [r"^feature_norm\."]  # older checkpoints: the identity statistics

    def __init__(self, config: EquiReconConfig):
        super().__init__(config)
        self._build_encoder(config)
        # Per-feature standardisation over the batch (no parameters; running statistics at inference), as MAE's
        # linear probe: an encoder's tokens share a large image-independent part (a 5-step tiny model: the images
        # differ by 14% of the feature scale), which a plain linear head at fine-tuning learning rates needs hundreds
        # of steps to see past. Checkpoints without it load as before (running mean 0, variance 1: the identity).
        self.feature_norm = nn.BatchNorm1d(2 * config.hidden_size, affine=False)
        self.classifier = (
            nn.Linear(2 * config.hidden_size, config.num_labels) if config.num_labels > 0 else nn.Identity()
        )
        self._finish_init()

    def _predict(
        self, outputs: EquiReconModelOutput, pixel_values: torch.Tensor, labels: torch.Tensor | None
    ) -> tuple[torch.Tensor | None, torch.Tensor]:
        sequence_output = outputs.last_hidden_state
        patch_tokens = sequence_output[:, self.config.num_prefix_tokens :]
        features = torch.cat([sequence_output[:, 0], patch_tokens.mean(dim=1)], dim=-1)
        logits = self.classifier(self.feature_norm(features))
        loss = self.loss_function(labels, logits, self.config) if labels is not None else None
        return loss, logits


class EquiReconLinearSegmentationHead(nn.Module):
    """The DINOv2 linear protocol: BatchNorm and a 1×1 convolution on the last layer's patch grid."""

    def __init__(self, config: EquiReconConfig):
        super().__init__()
        self.norm = nn.BatchNorm2d(config.hidden_size)
        self.classifier = nn.Conv2d(config.hidden_size, config.num_labels, kernel_size=1)

    def forward(self, feature_maps: list[torch.Tensor]) -> tuple[torch.Tensor, None]:
        """(logits, no auxiliary logits), the shape of every segmentation head's output."""
        return self.classifier(self.norm(feature_maps[-1])), None


class EquiReconFeaturePyramid(nn.Module):
    """A ViT's single-scale maps turned into a 4-level pyramid (×4, ×2, ×1, ×½), as BEiT and ViTDet do for UPerNet."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.up4 = nn.Sequential(
            nn.ConvTranspose2d(hidden_size, hidden_size, kernel_size=2, stride=2),
            nn.BatchNorm2d(hidden_size),
            nn.GELU(),
            nn.ConvTranspose2d(hidden_size, hidden_size, kernel_size=2, stride=2),
        )
        self.up2 = nn.ConvTranspose2d(hidden_size, hidden_size, kernel_size=2, stride=2)
        self.down2 = nn.MaxPool2d(kernel_size=2, stride=2)

    def forward(self, feature_maps: list[torch.Tensor]) -> list[torch.Tensor]:
        return [self.up4(feature_maps[0]), self.up2(feature_maps[1]), feature_maps[2], self.down2(feature_maps[3])]


class EquiReconUperNetSegmentationHead(nn.Module):
    """UPerNet (pyramid pooling + FPN) over a pyramid built from four encoder layers; transformers' UperNet modules
    do the head itself."""

    def __init__(self, config: EquiReconConfig):
        super().__init__()
        from types import SimpleNamespace

        from transformers.models.upernet.modeling_upernet import UperNetFCNHead, UperNetHead

        head_config = SimpleNamespace(
            pool_scales=tuple(config.pool_scales),
            hidden_size=config.segmentation_channels,
            num_labels=config.num_labels,
            auxiliary_in_channels=None,
            auxiliary_channels=config.auxiliary_channels,
            auxiliary_num_convs=1,
            auxiliary_concat_input=False,
        )
        in_channels = [config.hidden_size] * 4
        self.pyramid = EquiReconFeaturePyramid(config.hidden_size)
        self.decode_head = UperNetHead(head_config, in_channels=in_channels)
        self.auxiliary_head = (
            UperNetFCNHead(head_config, in_channels=in_channels, in_index=2) if config.use_auxiliary_head else None
        )

    def forward(self, feature_maps: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(logits, auxiliary logits in training with the auxiliary head, else None)."""
        pyramid = self.pyramid(feature_maps)
        auxiliary = self.auxiliary_head(pyramid) if self.auxiliary_head is not None and self.training else None
        return self.decode_head(pyramid), auxiliary


class EquiReconForSemanticSegmentation(EquiReconDownstreamModel):
    """EquiRecon encoder with a linear or UPerNet segmentation head (`config.segmentation_head`). Logits come at the
    head's resolution; the loss upsamples them to the label size and ignores `semantic_loss_ignore_index`."""

    _output_class = SemanticSegmenterOutput

    def __init__(self, config: EquiReconConfig):
        super().__init__(config)
        self._build_encoder(config)
        if config.segmentation_head == "linear":
            self.head = EquiReconLinearSegmentationHead(config)
        else:
            self.head = EquiReconUperNetSegmentationHead(config)
        self._finish_init()

    def _needs_hidden_states(self) -> bool:
        return self.config.segmentation_head == "upernet"

    def _feature_maps(self, outputs: EquiReconModelOutput, grid_size: tuple[int, int]) -> list[torch.Tensor]:
        """Patch tokens of the layers the head reads, as (B, hidden, h, w) maps."""
        if self.config.segmentation_head == "linear":
            states = [outputs.last_hidden_state]
        else:  # each layer through the encoder's final norm, as `Dinov2Backbone` does (and so the norm is trained)
            norm = getattr(self.equirecon.backbone, "layernorm", nn.Identity())
            states = [norm(outputs.hidden_states[i]) for i in self.config.segmentation_out_indices]
        num_prefix = self.config.num_prefix_tokens
        return [s[:, num_prefix:].transpose(1, 2).reshape(s.shape[0], -1, *grid_size) for s in states]

    def _predict(
        self, outputs: EquiReconModelOutput, pixel_values: torch.Tensor, labels: torch.Tensor | None
    ) -> tuple[torch.Tensor | None, torch.Tensor]:
        if labels is not None and self.num_labels < 2:
            raise ValueError(f"Semantic segmentation needs num_labels >= 2, got {self.num_labels}.")
        patch = self.config.patch_size
        grid_size = (pixel_values.shape[-2] // patch, pixel_values.shape[-1] // patch)
        logits, auxiliary_logits = self.head(self._feature_maps(outputs, grid_size))
        loss = None
        if labels is not None:
            loss = self._segmentation_loss(logits, labels)
            if auxiliary_logits is not None:
                loss = loss + self.config.auxiliary_loss_weight * self._segmentation_loss(auxiliary_logits, labels)
        return loss, logits

    def _segmentation_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        upsampled = F.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=False)
        return F.cross_entropy(
            upsampled, labels.to(upsampled.device).long(), ignore_index=self.config.semantic_loss_ignore_index
        )


__all__ = [
    "EquiReconForImageClassification",
    "EquiReconForPreTraining",
    "EquiReconForSemanticSegmentation",
    "EquiReconModel",
    "EquiReconPreTrainedModel",
    "EquiReconTeacher",
]
