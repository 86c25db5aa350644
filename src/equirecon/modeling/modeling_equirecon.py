# Copyright 2026 The equirecon developers. Licensed under the Apache License, Version 2.0.
"""PyTorch EquiRecon models.

Wang et al., "Self-Supervised Learning Based on Transformed Image Reconstruction for Equivariance-Coherent Feature
Representation", AAAI 2026. The encoder is a stock transformers ViT-family model; a per-token linear head splits its
features into an invariant part (host SSL objective) and an equivariant part, from which K decoders reconstruct the
images at intermediate points of the transformation linking the two views.

The sibling modules it is made of, by job, and why they import nothing else: `docs/architecture.md`, *The modeling
package*.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModel, PreTrainedModel
from transformers import initialization as init
from transformers.modeling_outputs import BackboneOutput, ImageClassifierOutput, SemanticSegmenterOutput
from transformers.processing_utils import Unpack
from transformers.utils import ModelOutput, TransformersKwargs, can_return_tuple, logging

try:
    from transformers.backbone_utils import BackboneMixin
except ImportError:  # transformers releases before the module moved
    from transformers.utils.backbone_utils import BackboneMixin

from .configuration_equirecon import EquiReconConfig
from .decoders import EquiReconDecoder, counted_target_mask, masked_mse
from .dino_heads import WeightNormalizedLinear
from .heads import (
    EquiReconLinearSegmentationHead,
    EquiReconUperNetSegmentationHead,
    running_statistics_for_single_values,
)
from .objectives import build_objective
from .pretraining_inputs import check_views, reconstructed_pairs, student_masks
from .teacher import EquiReconTeacher, EquiReconTeacherMixin, TeacherCentering
from .warm_start import from_pretrained_backbone, without_pooler

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
    reconstructed_pairs (`torch.BoolTensor` of shape `(batch_size,)`, returned when `bool_masked_pos` is given):
        The pairs the reconstruction loss counts, those whose views are both unmasked (`reconstructed_pairs`).
    hidden_states, attentions:
        As in `EquiReconModelOutput`, for the two views stacked along the batch (first view first).
    """

    loss: torch.FloatTensor | None = None
    ssl_loss: torch.FloatTensor | None = None
    reconstruction_loss: torch.FloatTensor | None = None
    reconstructions: torch.FloatTensor | None = None
    pooled_invariant_embeds: torch.FloatTensor | None = None
    equivariant_embeds: torch.FloatTensor | None = None
    reconstructed_pairs: torch.BoolTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None


def build_backbone(config: EquiReconConfig) -> PreTrainedModel:
    """The transformers encoder described by `config.backbone_config`, without a pooling head (EquiRecon pools the
    CLS token itself; an unused pooler would only idle under DDP), and with a mask token when the host objective
    masks patch tokens (ViT and DeiT take it as an argument; Dinov2 reads `use_mask_token` from its config)."""
    model_class = AutoModel._model_mapping[type(config.backbone_config)]
    kwargs = without_pooler(model_class)
    if config.uses_masks and "use_mask_token" in inspect.signature(model_class.__init__).parameters:
        kwargs["use_mask_token"] = True
    return model_class(config.backbone_config, **kwargs)


class EquiReconPreTrainedModel(PreTrainedModel):
    config_class = EquiReconConfig
    config: EquiReconConfig
    base_model_prefix = "equirecon"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    supports_gradient_checkpointing = True
    _no_split_modules = ["EquiReconDecoder"]
    # The attention implementations of transformers' Dinov2 and ViT encoders; the setting reaches them through
    # `backbone_config`.
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    # `forward` takes `TransformersKwargs` but its losses are batch means: Trainer must still divide them by the
    # gradient-accumulation steps (it would not for a model that normalises by `num_items_in_batch`).
    accepts_loss_kwargs = False
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
            module._known_copied = False
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            gain = getattr(module, "init_gain", None)
            if gain is None:
                init.trunc_normal_(module.weight, mean=0.0, std=self.config.initializer_range)
            else:
                init.normal_(module.weight, mean=0.0, std=gain / module.weight[0].numel() ** 0.5)
            if module.bias is not None:
                init.zeros_(module.bias)

    def _resolve_output_flags(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        """`kwargs` with `output_hidden_states` and `output_attentions` resolved: the keyword argument, else this
        config's flag. Passed on explicitly (as `UperNetForSemanticSegmentation` does): the encoder reads the flags
        of its own `backbone_config`, never this config's."""
        flags = ("output_hidden_states", "output_attentions")
        return {**kwargs, **{name: getattr(self.config, name) for name in flags if kwargs.get(name) is None}}

    from_pretrained_backbone = classmethod(from_pretrained_backbone)  # warm starts, see `warm_start.py`

    @classmethod
    def from_pretrained(cls, *args: Any, **kwargs: Any):
        # transformers re-creates loaded tensors as trainable parameters, undoing the freezes done in __init__.
        loaded = super().from_pretrained(*args, **kwargs)
        (loaded[0] if isinstance(loaded, tuple) else loaded)._freeze_again()  # output_loading_info=True: a tuple
        return loaded

    def _freeze_again(self) -> None:
        """Freeze what `__init__` froze (the downstream heads' frozen encoder, the EMA teacher); nothing here."""


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
        self._backbone_takes_interpolate = (
            "interpolate_pos_encoding" in inspect.signature(self.backbone.forward).parameters
        )
        self.post_init()

    @property
    def num_prefix_tokens(self) -> int:
        """Tokens before the patch tokens (`EquiReconConfig.num_prefix_tokens`)."""
        return self.config.num_prefix_tokens

    def get_input_embeddings(self) -> nn.Module:
        return self.backbone.get_input_embeddings()

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.Tensor,
        bool_masked_pos: torch.Tensor | None = None,
        interpolate_pos_encoding: bool | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> EquiReconModelOutput:
        r"""
        bool_masked_pos (`torch.BoolTensor` of shape `(batch_size, num_patches)`, *optional*):
            Patch tokens to replace by the encoder's mask token (iBOT/DINOv2 students); needs an encoder built with
            one (`EquiReconConfig.uses_masks`).
        interpolate_pos_encoding (`bool`, *optional*):
            Resize the position embeddings to the input's patch grid, for images of another size than the
            pretraining size. Dinov2 backbones always do.
        """
        kwargs = self._resolve_output_flags(kwargs)
        if bool_masked_pos is not None:
            kwargs["bool_masked_pos"] = bool_masked_pos
        if interpolate_pos_encoding is not None and self._backbone_takes_interpolate:
            kwargs["interpolate_pos_encoding"] = interpolate_pos_encoding
        outputs = self.backbone(pixel_values, **kwargs)
        sequence_output = outputs.last_hidden_state
        invariant = equivariant = None
        if self.projection is not None:
            invariant, equivariant = self.projection(sequence_output).split(
                [self.config.d_inv, self.config.d_equi], dim=-1
            )
        return EquiReconModelOutput(
            last_hidden_state=sequence_output,
            pooler_output=sequence_output[:, 0],
            invariant_embeds=invariant,
            equivariant_embeds=equivariant,
            hidden_states=getattr(outputs, "hidden_states", None),
            attentions=getattr(outputs, "attentions", None),
        )


def patch_feature_maps(
    encoder: EquiReconModel, outputs: EquiReconModelOutput, indices: list[int], grid_size: tuple[int, int]
) -> list[torch.Tensor]:
    """The patch tokens of hidden states `indices` (0 = embeddings, i = layer i) as (batch, hidden, h, w) maps, each
    through the encoder's final norm, as `Dinov2Backbone` does (so that the norm is trained)."""
    norm = getattr(encoder.backbone, "layernorm", nn.Identity())
    states = [norm(outputs.hidden_states[i])[:, encoder.num_prefix_tokens :] for i in indices]
    return [s.transpose(1, 2).reshape(s.shape[0], -1, *grid_size) for s in states]


class EquiReconBackbone(BackboneMixin, EquiReconPreTrainedModel):
    """The EquiRecon encoder as a transformers backbone (`AutoBackbone`): feature maps of the stages named by
    `config.out_features` / `out_indices`, for any head built on a backbone, e.g. `UperNetForSemanticSegmentation`
    with `UperNetConfig(backbone_config=equirecon_config)`. Loads the encoder of any EquiRecon checkpoint.

    Example:

    ```python
    >>> backbone = EquiReconBackbone.from_pretrained("runs/equirecon-tiny", out_indices=[2, 4, 6])
    >>> [list(m.shape) for m in backbone(pixel_values).feature_maps]  # (batch, hidden, h, w) per stage
    ```"""

    # Every other part of an EquiRecon checkpoint (projection, decoders, SSL heads, teacher, task heads).
    _keys_to_ignore_on_load_unexpected = [r"^(?!equirecon\.backbone\.)"]

    def __init__(self, config: EquiReconConfig):
        super().__init__(config)
        self.equirecon = EquiReconModel(config, add_projection=False)
        self.num_features = [config.hidden_size] * len(self.stage_names)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.equirecon.get_input_embeddings()

    @can_return_tuple
    def forward(self, pixel_values: torch.Tensor, **kwargs: Unpack[TransformersKwargs]) -> BackboneOutput:
        kwargs = self._resolve_output_flags(kwargs)
        output_hidden_states = kwargs.pop("output_hidden_states")
        outputs = self.equirecon(pixel_values, output_hidden_states=True, return_dict=True, **kwargs)
        patch = self.config.patch_size
        grid_size = (pixel_values.shape[-2] // patch, pixel_values.shape[-1] // patch)
        return BackboneOutput(
            feature_maps=tuple(patch_feature_maps(self.equirecon, outputs, self.out_indices, grid_size)),
            hidden_states=outputs.hidden_states if output_hidden_states else None,
            attentions=outputs.attentions,
        )


class EquiReconForPreTraining(EquiReconTeacherMixin, EquiReconPreTrainedModel):
    """EquiRecon pretraining: the host SSL objective on the invariant part and, unless `reconstruction_weight` is 0,
    K decoders reconstructing the intermediate transformed images from both views' equivariant parts.

    DINO, iBOT and DINOv2 hosts keep an EMA teacher (`teacher`: see `EquiReconTeacherMixin` for its life cycle) that
    sees both views unmasked and gets no reconstruction loss. It is saved under `teacher.*`, which the encoder and
    the downstream heads skip when they load; `export_teacher` returns it as an `EquiReconModel` of its own."""

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
            EquiReconTeacher(EquiReconModel(config), self.ssl_objective.make_teacher_heads())
            if self.ssl_objective.needs_teacher
            else None
        )
        self.post_init()

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.Tensor,
        transformed_pixel_values: torch.Tensor,
        intermediate_pixel_values: torch.Tensor | None = None,
        intermediate_mask: torch.Tensor | None = None,
        return_loss: bool = True,
        output_reconstructions: bool = False,
        bool_masked_pos: torch.Tensor | None = None,
        local_pixel_values: torch.Tensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> EquiReconForPreTrainingOutput:
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
            reconstruction loss (`reconstructed_pairs`), so the decoders learn only from unmasked features.
        local_pixel_values (`torch.FloatTensor` of shape `(batch_size, M, 3, size, size)`, *optional*):
            Multi-crop local crops (DINO family): the student encodes them and distils their CLS token from the
            teacher's two global views; the teacher and the decoders never see them.
        """
        batch_size = pixel_values.shape[0]
        has_teacher = self.teacher is not None
        grid_size = check_views(self.config, has_teacher, pixel_values, transformed_pixel_values, local_pixel_values)
        masks = student_masks(self.config, bool_masked_pos, batch_size, grid_size, return_loss)

        # Both views in one encoder call: one pass over the weights, and batch statistics stay per view in the heads.
        views = torch.cat([pixel_values, transformed_pixel_values], dim=0)
        outputs = self.equirecon(views, bool_masked_pos=masks, return_dict=True, **kwargs)
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
        pairs = reconstructed_pairs(bool_masked_pos)
        wants_reconstruction = output_reconstructions or (return_loss and intermediate_pixel_values is not None)
        if wants_reconstruction and len(self.decoders) > 0:
            reconstructions = self.reconstruct(equivariant, grid_size)
            if return_loss and intermediate_pixel_values is not None:
                reconstruction_loss = self.reconstruction_loss(
                    reconstructions, intermediate_pixel_values, intermediate_mask, pairs
                )
                loss = loss + self.config.reconstruction_weight * reconstruction_loss

        return EquiReconForPreTrainingOutput(
            loss=loss,
            ssl_loss=ssl_loss,
            reconstruction_loss=reconstruction_loss,
            reconstructions=reconstructions if output_reconstructions else None,
            pooled_invariant_embeds=pooled_invariant,
            equivariant_embeds=equivariant,
            reconstructed_pairs=pairs,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )

    def reconstruct(self, equivariant_embeds: torch.Tensor, grid_size: tuple[int, int]) -> torch.Tensor:
        """The K intermediate states (batch, K, 3, h·p, w·p) from both views' per-patch equivariant parts
        (2, batch, h·w, d_equi), as `forward`'s `equivariant_embeds`. The trainer's unpaired control passes another
        pair's first view here."""
        decoder_input = torch.cat([equivariant_embeds[0], equivariant_embeds[1]], dim=-1)
        return torch.stack([decoder(decoder_input, grid_size) for decoder in self.decoders], dim=1)

    def reconstruction_loss(
        self,
        reconstructions: torch.Tensor,
        intermediate_pixel_values: torch.Tensor,
        intermediate_mask: torch.Tensor | None = None,
        pairs: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """`forward`'s `reconstruction_loss` of `reconstruct`'s output: the masked MSE against the K targets over their
        valid pixels in the `pairs` counted (`forward`'s `reconstructed_pairs`; None: all), as the trainer's controls."""
        if intermediate_pixel_values.shape != reconstructions.shape:
            raise ValueError(
                f"`intermediate_pixel_values` has shape {tuple(intermediate_pixel_values.shape)}, expected "
                f"{tuple(reconstructions.shape)} (batch, K=num_intermediates, channels, height, width)."
            )
        return masked_mse(reconstructions, intermediate_pixel_values, counted_target_mask(intermediate_mask, pairs))


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
        self._freeze_again()

    def _freeze_again(self) -> None:
        if self.config.freeze_backbone:
            self.freeze_backbone()

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

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.Tensor,
        labels: torch.Tensor | None = None,
        interpolate_pos_encoding: bool | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> ModelOutput:
        r"""
        labels (`torch.LongTensor`, *optional*):
            Classification: class indices `(batch_size,)` (single-label), multi-hot `(batch_size, num_labels)`
            targets (multi-label) or values (`num_labels == 1`: regression); the loss follows `config.problem_type`.
            Segmentation: a class index per pixel `(batch_size, height, width)`; `config.semantic_loss_ignore_index`
            (255) marks pixels left out of the loss.
        """
        kwargs = self._resolve_output_flags(kwargs)
        output_hidden_states = kwargs.pop("output_hidden_states")
        outputs = self.equirecon(
            pixel_values,
            output_hidden_states=output_hidden_states or self._needs_hidden_states(),
            interpolate_pos_encoding=interpolate_pos_encoding,
            return_dict=True,
            **kwargs,
        )
        with running_statistics_for_single_values(self, exclude=self.equirecon, batch_size=pixel_values.shape[0]):
            loss, logits = self._predict(outputs, pixel_values, labels)
        return self._output_class(
            loss=loss,
            logits=logits,
            hidden_states=outputs.hidden_states if output_hidden_states else None,
            attentions=outputs.attentions,
        )


class EquiReconForImageClassification(EquiReconDownstreamModel):
    """EquiRecon encoder with a linear classifier on the CLS token concatenated with the mean patch token, the
    DINOv2 linear-evaluation recipe (as `Dinov2ForImageClassification`)."""

    _output_class = ImageClassifierOutput
    # A pretraining or another encoder's checkpoint has no feature statistics: they start as the identity.
    _keys_to_ignore_on_load_missing = [r"^feature_norm\."]

    def __init__(self, config: EquiReconConfig):
        super().__init__(config)
        self._build_encoder(config)
        # Per-feature standardisation over the batch (no parameters; running statistics at inference), as MAE's
        # linear probe: an encoder's tokens share a large image-independent part, which a plain linear head at
        # fine-tuning learning rates needs hundreds of steps to see past. Checkpoints without it load with the
        # identity statistics (running mean 0, variance 1).
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


class EquiReconForSemanticSegmentation(EquiReconDownstreamModel):
    """EquiRecon encoder with a linear or UPerNet segmentation head (`config.segmentation_head`; UPerNet reads the
    stages `config.segmentation_out_indices`). Logits come at the head's resolution; the loss upsamples them to the
    label size and ignores `semantic_loss_ignore_index`."""

    _output_class = SemanticSegmenterOutput

    def __init__(self, config: EquiReconConfig):
        super().__init__(config)
        self._build_encoder(config)
        if config.segmentation_head == "linear":
            self.head = EquiReconLinearSegmentationHead(config.hidden_size, config.num_labels)
        else:
            self.head = EquiReconUperNetSegmentationHead(
                config.hidden_size,
                config.num_labels,
                config.segmentation_channels,
                config.pool_scales,
                config.auxiliary_channels if config.use_auxiliary_head else None,
            )
        self._finish_init()

    def _needs_hidden_states(self) -> bool:
        return self.config.segmentation_head == "upernet"

    def _predict(
        self, outputs: EquiReconModelOutput, pixel_values: torch.Tensor, labels: torch.Tensor | None
    ) -> tuple[torch.Tensor | None, torch.Tensor]:
        if labels is not None and self.num_labels < 2:
            raise ValueError(f"Semantic segmentation needs num_labels >= 2, got {self.num_labels}.")
        patch = self.config.patch_size
        grid_size = (pixel_values.shape[-2] // patch, pixel_values.shape[-1] // patch)
        if self.config.segmentation_head == "linear":
            last = outputs.last_hidden_state[:, self.config.num_prefix_tokens :]
            feature_maps = [last.transpose(1, 2).reshape(last.shape[0], -1, *grid_size)]
        else:
            indices = self.config.segmentation_out_indices
            feature_maps = patch_feature_maps(self.equirecon, outputs, indices, grid_size)
        logits, auxiliary_logits = self.head(feature_maps)
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
    "EquiReconBackbone",
    "EquiReconForImageClassification",
    "EquiReconForPreTraining",
    "EquiReconForSemanticSegmentation",
    "EquiReconModel",
    "EquiReconPreTrainedModel",
    "EquiReconTeacher",
]
