# Copyright 2026 The equirecon developers. Licensed under the Apache License, Version 2.0.
"""EquiRecon model configuration.

Self-contained on purpose (imports only transformers and its siblings): `save_pretrained` copies this file and its
siblings next to the weights so that `AutoConfig.from_pretrained(dir, trust_remote_code=True)` works where `equirecon` is not
installed.
"""

from __future__ import annotations

import copy
from typing import Any

from transformers import AutoConfig, Dinov2Config, PretrainedConfig

try:
    from transformers.backbone_utils import BackboneConfigMixin
except ImportError:  # transformers releases before the module moved
    from transformers.utils.backbone_utils import BackboneConfigMixin

from .configuration_validation import (
    DINO_CENTERINGS,
    MASKED_OBJECTIVES,
    SEGMENTATION_HEADS,
    SSL_OBJECTIVES,
    TEACHER_OBJECTIVES,
    EquiReconConfigValidationMixin,
    as_pair,
)
from .presets import DEFAULT_BACKBONE, PRESETS

# Transformation the pretraining data pipeline applies when the config does not name one (paper: SE(2) on real images).
DEFAULT_TRANSFORMATION = {"family": "se2"}

# Hub custom code: every saved directory maps all the Auto classes, not only the class that was saved.
AUTO_MAP = {
    "AutoConfig": "configuration_equirecon.EquiReconConfig",
    "AutoModel": "modeling_equirecon.EquiReconModel",
    "AutoBackbone": "modeling_equirecon.EquiReconBackbone",
    "AutoModelForPreTraining": "modeling_equirecon.EquiReconForPreTraining",
    "AutoModelForImageClassification": "modeling_equirecon.EquiReconForImageClassification",
    "AutoModelForSemanticSegmentation": "modeling_equirecon.EquiReconForSemanticSegmentation",
}


def _build_backbone_config(backbone_config: PretrainedConfig | dict[str, Any] | None) -> PretrainedConfig:
    if backbone_config is None:
        return Dinov2Config(**{k: v for k, v in DEFAULT_BACKBONE.items() if k != "model_type"})
    if isinstance(backbone_config, dict):
        backbone_config = copy.deepcopy(backbone_config)
        model_type = backbone_config.pop("model_type", None)
        if model_type is None:
            raise ValueError(
                "`backbone_config` dict has no 'model_type': name the encoder family, e.g. "
                "{'model_type': 'dinov2', 'hidden_size': 384, ...}."
            )
        return AutoConfig.for_model(model_type, **backbone_config)
    if not isinstance(backbone_config, PretrainedConfig):
        raise ValueError(
            f"`backbone_config` must be a transformers PretrainedConfig, a dict or None, got "
            f"{type(backbone_config).__name__}."
        )
    return backbone_config


class EquiReconConfig(EquiReconConfigValidationMixin, BackboneConfigMixin, PretrainedConfig):
    r"""
    Configuration of an EquiRecon model: a transformers vision encoder whose tokens are projected to `d_patch`
    channels, split into an invariant part (host SSL objective) and an equivariant part (`d_equi` channels, read by
    the reconstruction decoders).

    Args:
        backbone_config (`PretrainedConfig` or `dict`, *optional*):
            Config of the encoder, any transformers ViT-family model (`dinov2`, `dinov2_with_registers`, `vit`, `deit`,
            ...). Defaults to a ViT-S/16 `Dinov2Config` at 224². An objective that masks patch tokens (iBOT, DINOv2)
            turns its mask token on.
        d_patch (`int`, *optional*, defaults to 512):
            Channels of the per-token linear head on the encoder output.
        d_equi (`int`, *optional*, defaults to 256):
            Trailing channels of the head that form the equivariant part; the first `d_patch - d_equi` are invariant.
        num_intermediates (`int`, *optional*, defaults to 2):
            K, the number of intermediate states reconstructed (at θ·k/(K+1), k = 1..K), one decoder each.
        reconstruction_weight (`float`, *optional*, defaults to 1.0):
            λ in `loss = ssl_weight·ssl_loss + λ·reconstruction_loss`. `0.0` gives the host method alone, without
            decoders. The reconstruction loss is the masked mean squared error **per pixel and channel**, averaged
            over the K decoders, so λ means the same at every image size (a per-image sum is the same loss times
            3·H·W: 12 288 at 64², 150 528 at 224²). At the paper's λ = 1 the two terms pull the encoder with
            comparable strength (`benchmarks/reconstruction_signal.py`, `docs/results.md`); λ > 5 lets
            reconstruction dominate, the regime the paper found unstable.
        ssl_objective (`str`, *optional*, defaults to `"vicreg"`):
            Host SSL objective on the invariant part, one of `SSL_OBJECTIVES`.
        ssl_weight (`float`, *optional*, defaults to 1.0):
            Weight of the host SSL loss in the pretraining loss (the paper keeps it at 1).
        vicreg_sim_coeff, vicreg_std_coeff, vicreg_cov_coeff (`float`, *optional*, defaults to 10, 10, 1):
            VICReg loss weights (SIE's configuration).
        vicreg_expander_dims (`list[int]`, *optional*, defaults to `[2048, 2048, 2048]`):
            Widths of the VICReg expander's linear layers.
        simclr_temperature (`float`, *optional*, defaults to 0.1):
            InfoNCE temperature.
        simclr_projector_dims (`list[int]`, *optional*, defaults to `[2048, 128]`):
            Widths of the SimCLR projector's linear layers.
        dino_out_dim (`int`, *optional*, defaults to 65536):
            Prototypes of the DINO head on the CLS token (DINO and DINOv2: 65 536; iBOT: 8192). DINO, iBOT and DINOv2
            read the CLS token's invariant part; their EMA teacher is described in `EquiReconForPreTraining`.
        dino_hidden_dim, dino_bottleneck_dim (`int`, *optional*, defaults to 2048, 256):
            Width of the DINO head's 3-layer MLP and of its L2-normalised bottleneck.
        dino_norm_last_layer (`bool`, *optional*, defaults to `True`):
            Fix the norm of the head's weight-normalised last layer at 1 (DINO's `norm_last_layer`).
        dino_student_temperature (`float`, *optional*, defaults to 0.1):
            Student softmax temperature.
        dino_teacher_temperature, dino_warmup_teacher_temperature (`float`, *optional*, defaults to 0.07, 0.04):
            Teacher temperature after and at the start of its linear warm-up.
        dino_warmup_teacher_temperature_steps (`float`, *optional*, defaults to 0.3):
            Length of the teacher-temperature warm-up: optimizer steps if >= 1, else a fraction of the run
            (the papers' 30 epochs: 0.3 of 100 epochs, 30/800 for iBOT's 800).
        dino_center_momentum (`float`, *optional*, defaults to 0.9):
            Momentum of the EMA centre of the teacher's scores.
        dino_centering (`str`, *optional*, defaults to `"centering"`):
            `"centering"` (EMA centre, DINO/iBOT) or `"sinkhorn_knopp"` (DINOv2's option).
        dino_sinkhorn_iterations (`int`, *optional*, defaults to 3):
            Sinkhorn-Knopp iterations.
        dino_freeze_last_layer_steps (`float`, *optional*, defaults to 0.01):
            The student heads' last layers get no update for this long (steps if >= 1, else a fraction of the run;
            the papers freeze them for their first epoch).
        teacher_momentum (`float`, *optional*, defaults to 0.996):
            EMA momentum of the teacher at the first step, raised to 1 along a half cosine over the run.
        ibot_loss_weight (`float`, *optional*, defaults to 1.0):
            Weight of the masked-patch distillation term (iBOT, DINOv2).
        ibot_separate_head (`bool`, *optional*, defaults to `False`):
            Give the patch tokens their own head (DINOv2's `separate_head`) instead of sharing the CLS head.
        ibot_out_dim (`int`, *optional*, defaults to 8192):
            Prototypes of the separate patch head.
        mask_ratio_range (`list[float]`, *optional*, defaults to `[0.1, 0.5]`):
            Fraction of a masked view's patch tokens that block masking hides (iBOT, DINOv2), drawn uniformly.
        mask_probability (`float`, *optional*, defaults to 0.5):
            Probability that a pair's student views are masked. The two views of a pair are masked together and
            the reconstruction loss counts only unmasked pairs, so the decoders learn from unmasked features only
            (`docs/architecture.md`).
        koleo_loss_weight (`float`, *optional*, defaults to 0.1):
            Weight of DINOv2's KoLeo regulariser on the student's CLS features (DINOv2 only).
        decoder_patch_channels (`int`, *optional*, defaults to 8):
            Channels per pixel written by a decoder's linear layer, which maps each token to its own p×p patch.
        decoder_hidden_channels (`int`, *optional*, defaults to 8):
            Width of the decoder's three hidden convolutions. The convolutions run at full resolution, so their
            width sets the cost of the auxiliary task (`benchmarks/step_overhead.py`); `docs/results.md` gives the
            step time of 8/8 and compares it with 16/32 for the effect itself. The decoders
            are initialised by fan-in, not with `initializer_range`, so their gradient reaches the encoder from
            the first step.
        decoder_kernel_size (`int`, *optional*, defaults to 3):
            Kernel size (odd) of the decoder's four convolutions, with 'same' padding.
        decoder_dilation (`int`, *optional*, defaults to 1):
            Dilation of the decoder's four convolutions. With `decoder_kernel_size`, the decoders' reach: each token
            writes its own patch; the convolutions reach (kernel_size-1)*dilation/2 pixels per layer beyond it
            (4 pixels in all with the defaults). The short default reach is deliberate: decoders that reach far
            can undo g themselves, and then the encoder keeps less of it (`docs/results.md`, "Decoder reach").
        transformation (`dict`, *optional*):
            The transformation family g and its ranges used in pretraining (see
            `equirecon.training.TransformationConfig`); recorded so evaluation and model cards know it.
        initializer_range (`float`, *optional*, defaults to 0.02):
            Std of the truncated normal initialisation of the heads and decoders.
        freeze_backbone (`bool`, *optional*, defaults to `False`):
            Downstream heads: keep the encoder frozen (linear probing) and train only the head.
        segmentation_head (`str`, *optional*, defaults to `"upernet"`):
            `"linear"` (BatchNorm + 1×1 conv on the last patch grid, the DINOv2 linear protocol) or `"upernet"`
            (feature pyramid from `out_indices` layers, PSP + FPN head).
        out_features, out_indices (`list[str]`, `list[int]`, *optional*):
            The stages (`stage_names`: "stem" = the embeddings, "stageI" = layer I) that `EquiReconBackbone` returns
            and the UPerNet head reads, as in every transformers backbone config. Defaults to four evenly spaced
            layers ending with the last (fewer for an encoder of fewer than four layers).
        segmentation_channels (`int`, *optional*, defaults to 512):
            Width of the UPerNet head.
        pool_scales (`list[int]`, *optional*, defaults to `[1, 2, 3, 6]`):
            Pyramid pooling scales of the UPerNet head.
        use_auxiliary_head (`bool`, *optional*, defaults to `True`):
            Add an FCN auxiliary head on the third pyramid level (UPerNet only).
        auxiliary_loss_weight (`float`, *optional*, defaults to 0.4):
            Weight of the auxiliary head's cross-entropy.
        auxiliary_channels (`int`, *optional*, defaults to 256):
            Width of the auxiliary head.
        semantic_loss_ignore_index (`int`, *optional*, defaults to 255):
            Label value ignored by the segmentation loss.

    Example:

    ```python
    >>> from equirecon import EquiReconConfig, EquiReconForPreTraining

    >>> config = EquiReconConfig.from_preset("vicreg-vit-s16")
    >>> model = EquiReconForPreTraining(config)
    ```"""

    model_type = "equirecon"
    sub_configs = {"backbone_config": AutoConfig}

    def __init__(
        self,
        backbone_config: PretrainedConfig | dict[str, Any] | None = None,
        d_patch: int = 512,
        d_equi: int = 256,
        num_intermediates: int = 2,
        reconstruction_weight: float = 1.0,
        ssl_objective: str = "vicreg",
        ssl_weight: float = 1.0,
        vicreg_sim_coeff: float = 10.0,
        vicreg_std_coeff: float = 10.0,
        vicreg_cov_coeff: float = 1.0,
        vicreg_expander_dims: list[int] | tuple[int, ...] = (2048, 2048, 2048),
        simclr_temperature: float = 0.1,
        simclr_projector_dims: list[int] | tuple[int, ...] = (2048, 128),
        dino_out_dim: int = 65536,
        dino_hidden_dim: int = 2048,
        dino_bottleneck_dim: int = 256,
        dino_norm_last_layer: bool = True,
        dino_student_temperature: float = 0.1,
        dino_teacher_temperature: float = 0.07,
        dino_warmup_teacher_temperature: float = 0.04,
        dino_warmup_teacher_temperature_steps: float = 0.3,
        dino_center_momentum: float = 0.9,
        dino_centering: str = "centering",
        dino_sinkhorn_iterations: int = 3,
        dino_freeze_last_layer_steps: float = 0.01,
        teacher_momentum: float = 0.996,
        ibot_loss_weight: float = 1.0,
        ibot_separate_head: bool = False,
        ibot_out_dim: int = 8192,
        mask_ratio_range: list[float] | tuple[float, float] = (0.1, 0.5),
        mask_probability: float = 0.5,
        koleo_loss_weight: float = 0.1,
        decoder_patch_channels: int = 8,
        decoder_hidden_channels: int = 8,
        decoder_kernel_size: int = 3,
        decoder_dilation: int = 1,
        transformation: dict[str, Any] | None = None,
        initializer_range: float = 0.02,
        freeze_backbone: bool = False,
        segmentation_head: str = "upernet",
        out_features: list[str] | None = None,
        out_indices: list[int] | None = None,
        segmentation_channels: int = 512,
        pool_scales: list[int] | tuple[int, ...] = (1, 2, 3, 6),
        use_auxiliary_head: bool = True,
        auxiliary_loss_weight: float = 0.4,
        auxiliary_channels: int = 256,
        semantic_loss_ignore_index: int = 255,
        **kwargs: Any,
    ) -> None:
        self.backbone_config = _build_backbone_config(backbone_config)
        self.d_patch = d_patch
        self.d_equi = d_equi
        self.num_intermediates = num_intermediates
        self.reconstruction_weight = reconstruction_weight
        self.ssl_objective = ssl_objective
        self.ssl_weight = ssl_weight
        self.vicreg_sim_coeff = vicreg_sim_coeff
        self.vicreg_std_coeff = vicreg_std_coeff
        self.vicreg_cov_coeff = vicreg_cov_coeff
        self.vicreg_expander_dims = list(vicreg_expander_dims)
        self.simclr_temperature = simclr_temperature
        self.simclr_projector_dims = list(simclr_projector_dims)
        self.dino_out_dim = dino_out_dim
        self.dino_hidden_dim = dino_hidden_dim
        self.dino_bottleneck_dim = dino_bottleneck_dim
        self.dino_norm_last_layer = dino_norm_last_layer
        self.dino_student_temperature = dino_student_temperature
        self.dino_teacher_temperature = dino_teacher_temperature
        self.dino_warmup_teacher_temperature = dino_warmup_teacher_temperature
        self.dino_warmup_teacher_temperature_steps = dino_warmup_teacher_temperature_steps
        self.dino_center_momentum = dino_center_momentum
        self.dino_centering = dino_centering
        self.dino_sinkhorn_iterations = dino_sinkhorn_iterations
        self.dino_freeze_last_layer_steps = dino_freeze_last_layer_steps
        self.teacher_momentum = teacher_momentum
        self.ibot_loss_weight = ibot_loss_weight
        self.ibot_separate_head = ibot_separate_head
        self.ibot_out_dim = ibot_out_dim
        self.mask_ratio_range = [float(value) for value in mask_ratio_range]
        self.mask_probability = mask_probability
        self.koleo_loss_weight = koleo_loss_weight
        self.decoder_patch_channels = decoder_patch_channels
        self.decoder_hidden_channels = decoder_hidden_channels
        self.decoder_kernel_size = decoder_kernel_size
        self.decoder_dilation = decoder_dilation
        self.transformation = dict(transformation) if transformation is not None else dict(DEFAULT_TRANSFORMATION)
        self.initializer_range = initializer_range
        self.freeze_backbone = freeze_backbone
        self.segmentation_head = segmentation_head
        self.segmentation_channels = segmentation_channels
        self.pool_scales = list(pool_scales)
        self.use_auxiliary_head = use_auxiliary_head
        self.auxiliary_loss_weight = auxiliary_loss_weight
        self.auxiliary_channels = auxiliary_channels
        self.semantic_loss_ignore_index = semantic_loss_ignore_index
        self._derive_mask_token()
        # The stages follow the encoder's depth (a saved `stage_names` is that of the depth it was saved with).
        kwargs.pop("stage_names", None)
        kwargs.setdefault("auto_map", dict(AUTO_MAP))
        super().__init__(**kwargs)
        self.validate_backbone()  # the stages below need its depth
        self.stage_names = ["stem"] + [f"stage{i}" for i in range(1, self.backbone_config.num_hidden_layers + 1)]
        if out_features is None and out_indices is None:
            out_indices = self._default_out_indices()
        self.set_output_features_output_indices(out_features=out_features, out_indices=out_indices)
        self.validate()

    def _derive_mask_token(self) -> None:
        """An objective that masks patch tokens needs the encoder's mask token: turn it on rather than ask for it.
        (ViT and DeiT take it as a model argument, see `build_backbone`; their configs have no such field.)"""
        if self.uses_masks and getattr(self.backbone_config, "use_mask_token", True) is False:
            self.backbone_config = copy.deepcopy(self.backbone_config)
            self.backbone_config.use_mask_token = True

    def _default_out_indices(self) -> list[int]:
        """Four evenly spaced layers ending with the last, each once (an encoder of fewer layers has fewer)."""
        num_layers = self.backbone_config.num_hidden_layers
        return sorted({max(1, round(num_layers * fraction)) for fraction in (0.25, 0.5, 0.75, 1.0)})

    @property
    def d_inv(self) -> int:
        """Channels of the invariant part of the head, `d_patch - d_equi`."""
        return self.d_patch - self.d_equi

    @property
    def image_size(self) -> int:
        """Pretraining image size (square), from the backbone."""
        return as_pair(self.backbone_config.image_size)[0]

    @property
    def patch_size(self) -> int:
        """Encoder patch size (square), from the backbone."""
        return as_pair(self.backbone_config.patch_size)[0]

    @property
    def num_prefix_tokens(self) -> int:
        """Tokens before the patch tokens in the encoder output: CLS, registers (Dinov2WithRegisters) and a
        distillation token (DeiT). The one source of this count for the model and for evaluation."""
        backbone = self.backbone_config
        return 1 + (getattr(backbone, "num_register_tokens", 0) or 0) + int(backbone.model_type == "deit")

    @property
    def uses_teacher(self) -> bool:
        """Whether the host objective distils an EMA teacher (`TEACHER_OBJECTIVES`)."""
        return self.ssl_objective in TEACHER_OBJECTIVES

    @property
    def uses_masks(self) -> bool:
        """Whether the host objective masks the student's patch tokens (`MASKED_OBJECTIVES`)."""
        return self.ssl_objective in MASKED_OBJECTIVES

    @property
    def hidden_size(self) -> int:
        return self.backbone_config.hidden_size

    @property
    def segmentation_out_indices(self) -> list[int]:
        """The stages the four levels of the UPerNet pyramid read, finest first: `out_indices` when it names four,
        else four evenly spaced among them (a 2-layer encoder's [1, 2] gives [1, 1, 2, 2])."""
        indices = self.out_indices
        return [indices[round(level * (len(indices) - 1) / 3)] for level in range(4)]

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> EquiReconConfig:
        """Build a named configuration from the paper (`PRESETS`), with keyword overrides."""
        if name not in PRESETS:
            raise ValueError(f"Unknown preset {name!r}; choose one of {sorted(PRESETS)}.")
        return cls(**{**copy.deepcopy(PRESETS[name]), **overrides})


__all__ = [
    "DINO_CENTERINGS",
    "MASKED_OBJECTIVES",
    "PRESETS",
    "SEGMENTATION_HEADS",
    "SSL_OBJECTIVES",
    "TEACHER_OBJECTIVES",
    "EquiReconConfig",
]
