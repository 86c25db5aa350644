# Copyright 2026 The equirecon developers. Licensed under the Apache License, Version 2.0.
"""EquiRecon model configuration.

Self-contained on purpose (imports only transformers): `save_pretrained` copies this file next to the weights so
that `AutoConfig.from_pretrained(dir, trust_remote_code=True)` works where `equirecon` is not installed.
"""

from __future__ import annotations

import copy
from typing import Any

from transformers import AutoConfig, Dinov2Config, PretrainedConfig

SSL_OBJECTIVES = ("vicreg", "simclr", "dino", "ibot", "dinov2")
"""Host SSL objectives this release implements."""

TEACHER_OBJECTIVES = ("dino", "ibot", "dinov2")
"""Objectives that distil an EMA teacher (the model keeps one; `EquiReconTrainer` updates it)."""

MASKED_OBJECTIVES = ("ibot", "dinov2")
"""Objectives that mask the student's patch tokens (the data pipeline makes `bool_masked_pos`)."""

DINO_CENTERINGS = ("centering", "sinkhorn_knopp")

SEGMENTATION_HEADS = ("linear", "upernet")

# Transformation the pretraining data pipeline applies when the config does not name one (paper: SE(2) on real images).
DEFAULT_TRANSFORMATION = {"family": "se2"}

# Hub custom code: every saved directory maps all the Auto classes, not only the class that was saved.
AUTO_MAP = {
    "AutoConfig": "configuration_equirecon.EquiReconConfig",
    "AutoModel": "modeling_equirecon.EquiReconModel",
    "AutoModelForPreTraining": "modeling_equirecon.EquiReconForPreTraining",
    "AutoModelForImageClassification": "modeling_equirecon.EquiReconForImageClassification",
    "AutoModelForSemanticSegmentation": "modeling_equirecon.EquiReconForSemanticSegmentation",
}

_VIT_S16 = {
    "model_type": "dinov2",
    "hidden_size": 384,
    "num_hidden_layers": 12,
    "num_attention_heads": 6,
    "mlp_ratio": 4,
    "patch_size": 16,
    "image_size": 224,
    "layerscale_value": 1e-5,
    # No masked-image objective here: an unused mask token would only slow DDP's unused-parameter search.
    "use_mask_token": False,
}

_VIT_L16 = {
    **_VIT_S16,
    "hidden_size": 1024,
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
}

# iBOT's ViT-S/16 recipe (bytedance/ibot README: 800 epochs, shared head, 8192 prototypes, teacher temperature
# 0.04 → 0.07 over 30 epochs, norm_last_layer false, drop path 0.1, 1 epoch with the last layer frozen).
_IBOT = {
    "ssl_objective": "ibot",
    "d_patch": 8192,
    "d_equi": 2048,
    "dino_out_dim": 8192,
    "dino_norm_last_layer": False,
    "dino_warmup_teacher_temperature_steps": 30 / 800,
    "dino_freeze_last_layer_steps": 1 / 800,
    "ibot_separate_head": False,
    "teacher_momentum": 0.996,
}

# A ViT small enough to pretrain on two CPU cores in minutes: 64² crops, 8×8 patches.
_TINY: dict[str, Any] = {
    "backbone_config": {
        "model_type": "dinov2",
        "hidden_size": 192,
        "num_hidden_layers": 6,
        "num_attention_heads": 3,
        "mlp_ratio": 4,
        "patch_size": 8,
        "image_size": 64,
        "use_mask_token": False,
    },
    "d_patch": 256,
    "d_equi": 128,
    "ssl_objective": "vicreg",
    "vicreg_expander_dims": [1024, 1024, 1024],
    # At 64² the decoders are cheap next to the encoder, so they can be wider than the ViT-S/16 default.
    "decoder_patch_channels": 16,
    "decoder_hidden_channels": 32,
    "transformation": {"family": "rotation"},
    # A UPerNet head as wide as ViT-S/16's (512) would dwarf this encoder on a CPU.
    "segmentation_channels": 64,
    "auxiliary_channels": 32,
}

PRESETS: dict[str, dict[str, Any]] = {
    # Paper, VICReg host in the SIE configuration (Table 1).
    "vicreg-vit-s16": {"backbone_config": _VIT_S16, "d_patch": 512, "d_equi": 256, "ssl_objective": "vicreg"},
    # Paper Table 4, SimCLR host.
    "simclr-vit-s16": {"backbone_config": _VIT_S16, "d_patch": 512, "d_equi": 256, "ssl_objective": "simclr"},
    # Paper Table 4, iBOT host (ViT-S/16 and ViT-L/16; iBOT masks patch tokens, so the encoder has a mask token).
    "ibot-vit-s16": {
        **_IBOT,
        "backbone_config": {**_VIT_S16, "use_mask_token": True, "drop_path_rate": 0.1},
    },
    # iBOT's ViT-L/16 trains 250 epochs (the "1000 effective epochs" of the iBOT paper), so its epoch-based teacher
    # schedules are fractions of 250; its weight-normalised last layer keeps norm 1, as main_ibot.py advises beyond
    # ViT-S ("False with vit_small and True with vit_base").
    "ibot-vit-l16": {
        **_IBOT,
        "backbone_config": {**_VIT_L16, "use_mask_token": True, "drop_path_rate": 0.1},
        "dino_norm_last_layer": True,
        "dino_warmup_teacher_temperature_steps": 30 / 250,
        "dino_freeze_last_layer_steps": 1 / 250,
    },
    # Paper Table 4, DINOv2 host: ViT-L/16 for 100 ImageNet-1k epochs, DINOv2's `vitl16_short` configuration
    # (facebookresearch/dinov2:dinov2/configs/ssl_default_config.yaml): 65 536 shared prototypes, KoLeo 0.1,
    # momentum 0.992 → 1, teacher temperature 0.04 → 0.07 over 30 of 100 epochs, drop path 0.3, EMA centring (its
    # ViT-L/14 and ViT-g/14 releases use Sinkhorn-Knopp: `dino_centering="sinkhorn_knopp"`).
    "dinov2-vit-l16": {
        "backbone_config": {**_VIT_L16, "use_mask_token": True, "drop_path_rate": 0.3},
        "d_patch": 2048,
        "d_equi": 512,
        "ssl_objective": "dinov2",
        "dino_out_dim": 65536,
        "dino_warmup_teacher_temperature_steps": 0.3,
        "dino_freeze_last_layer_steps": 0.01,
        "teacher_momentum": 0.992,
        "koleo_loss_weight": 0.1,
    },
    # Two CPU cores, minutes.
    "tiny": _TINY,
    # The tiny ViT as an iBOT host (mask token, 1024 shared prototypes), to try the DINO family on a CPU.
    "tiny-ibot": {
        **_TINY,
        "backbone_config": {**_TINY["backbone_config"], "use_mask_token": True},
        "ssl_objective": "ibot",
        "dino_out_dim": 1024,
        "dino_hidden_dim": 512,
    },
}


def _as_pair(value: int | list[int] | tuple[int, int]) -> tuple[int, int]:
    if isinstance(value, (list, tuple)):
        return int(value[0]), int(value[1])
    return int(value), int(value)


class EquiReconConfig(PretrainedConfig):
    r"""
    Configuration of an EquiRecon model: a transformers vision encoder whose tokens are projected to `d_patch`
    channels, split into an invariant part (host SSL objective) and an equivariant part (`d_equi` channels, read by
    the reconstruction decoders).

    Args:
        backbone_config (`PretrainedConfig` or `dict`, *optional*):
            Config of the encoder, any transformers ViT-family model (`dinov2`, `dinov2_with_registers`, `vit`, `deit`,
            ...). Defaults to a ViT-S/16 `Dinov2Config` at 224².
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
            3·H·W: 12 288 at 64², 150 528 at 224²). Measured with `benchmarks/reconstruction_signal.py` (tiny
            preset, VICReg, λ = 1): the reconstruction gradient reaching the encoder is 0.006× the SSL gradient at
            step 0 (while VICReg's variance term dominates), 1.5× at step 10 and 0.6× at step 50, so the two terms
            pull with comparable strength at the paper's λ = 1 and λ > 5 lets reconstruction dominate, the regime
            the paper found unstable.
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
            Width of the decoder's three hidden 3×3 convolutions. The convolutions run at full resolution, so their
            width sets the cost of the auxiliary task (`benchmarks/step_overhead.py`): 8/8 keeps ViT-S/16 at 224²
            within +10% step time; `docs/results.md` compares 8/8 with 16/32 for the effect itself. The decoders
            are initialised by fan-in, not with `initializer_range`, so their gradient reaches the encoder from
            the first step.
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
        out_indices (`list[int]`, *optional*):
            Encoder hidden states (0 = embeddings, i = layer i) the UPerNet head reads; defaults to four evenly
            spaced layers ending with the last.
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
        transformation: dict[str, Any] | None = None,
        initializer_range: float = 0.02,
        freeze_backbone: bool = False,
        segmentation_head: str = "upernet",
        out_indices: list[int] | None = None,
        segmentation_channels: int = 512,
        pool_scales: list[int] | tuple[int, ...] = (1, 2, 3, 6),
        use_auxiliary_head: bool = True,
        auxiliary_loss_weight: float = 0.4,
        auxiliary_channels: int = 256,
        semantic_loss_ignore_index: int = 255,
        **kwargs: Any,
    ) -> None:
        if backbone_config is None:
            backbone_config = Dinov2Config(**{k: v for k, v in _VIT_S16.items() if k != "model_type"})
        elif isinstance(backbone_config, dict):
            backbone_config = copy.deepcopy(backbone_config)
            model_type = backbone_config.pop("model_type", None)
            if model_type is None:
                raise ValueError(
                    "`backbone_config` dict has no 'model_type': name the encoder family, e.g. "
                    "{'model_type': 'dinov2', 'hidden_size': 384, ...}."
                )
            backbone_config = AutoConfig.for_model(model_type, **backbone_config)
        elif not isinstance(backbone_config, PretrainedConfig):
            raise ValueError(
                f"`backbone_config` must be a transformers PretrainedConfig, a dict or None, got "
                f"{type(backbone_config).__name__}."
            )
        self.backbone_config = backbone_config
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
        self.transformation = dict(transformation) if transformation is not None else dict(DEFAULT_TRANSFORMATION)
        self.initializer_range = initializer_range
        self.freeze_backbone = freeze_backbone
        self.segmentation_head = segmentation_head
        self.out_indices = list(out_indices) if out_indices is not None else None
        self.segmentation_channels = segmentation_channels
        self.pool_scales = list(pool_scales)
        self.use_auxiliary_head = use_auxiliary_head
        self.auxiliary_loss_weight = auxiliary_loss_weight
        self.auxiliary_channels = auxiliary_channels
        self.semantic_loss_ignore_index = semantic_loss_ignore_index
        kwargs.setdefault("auto_map", dict(AUTO_MAP))
        super().__init__(**kwargs)
        self._validate()

    @property
    def d_inv(self) -> int:
        """Channels of the invariant part of the head, `d_patch - d_equi`."""
        return self.d_patch - self.d_equi

    @property
    def image_size(self) -> int:
        """Pretraining image size (square), from the backbone."""
        return _as_pair(self.backbone_config.image_size)[0]

    @property
    def patch_size(self) -> int:
        """Encoder patch size (square), from the backbone."""
        return _as_pair(self.backbone_config.patch_size)[0]

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
        """Hidden states the UPerNet head reads: `out_indices`, or four evenly spaced layers ending with the last."""
        if self.out_indices is not None:
            return self.out_indices
        num_layers = self.backbone_config.num_hidden_layers
        return [max(1, round(num_layers * fraction)) for fraction in (0.25, 0.5, 0.75, 1.0)]

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> EquiReconConfig:
        """Build a named configuration from the paper (`PRESETS`), with keyword overrides."""
        if name not in PRESETS:
            raise ValueError(f"Unknown preset {name!r}; choose one of {sorted(PRESETS)}.")
        return cls(**{**copy.deepcopy(PRESETS[name]), **overrides})

    def _validate_dino_family(self) -> None:
        for name in (
            "dino_out_dim",
            "dino_hidden_dim",
            "dino_bottleneck_dim",
            "ibot_out_dim",
            "dino_sinkhorn_iterations",
        ):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"`{name}` must be a positive integer, got {getattr(self, name)!r}.")
        for name in ("dino_student_temperature", "dino_teacher_temperature", "dino_warmup_teacher_temperature"):
            if not getattr(self, name) > 0:
                raise ValueError(f"`{name}` must be > 0, got {getattr(self, name)!r}.")
        for name in ("dino_center_momentum", "teacher_momentum", "mask_probability"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"`{name}` must be in [0, 1], got {getattr(self, name)!r}.")
        for name in ("dino_warmup_teacher_temperature_steps", "dino_freeze_last_layer_steps"):
            if not getattr(self, name) >= 0:
                raise ValueError(
                    f"`{name}` must be >= 0 (steps, or a fraction of the run if < 1), got {getattr(self, name)!r}."
                )
        for name in ("ibot_loss_weight", "koleo_loss_weight"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"`{name}` must be >= 0, got {getattr(self, name)!r}.")
        if self.dino_centering not in DINO_CENTERINGS:
            raise ValueError(f"`dino_centering` must be one of {DINO_CENTERINGS}, got {self.dino_centering!r}.")
        low_high = self.mask_ratio_range
        if len(low_high) != 2 or not 0 < low_high[0] <= low_high[1] < 1:
            raise ValueError(f"`mask_ratio_range` must be [low, high] with 0 < low <= high < 1, got {low_high!r}.")
        if self.uses_masks and getattr(self.backbone_config, "use_mask_token", True) is False:
            raise ValueError(
                f"`ssl_objective` {self.ssl_objective!r} masks patch tokens, but the encoder has no mask token: set "
                "`use_mask_token=True` in `backbone_config` (the 'ibot-vit-s16' and 'dinov2-vit-l16' presets do)."
            )

    def _validate(self) -> None:
        """Fail at construction with the field, the value and what is allowed, never later inside `forward`."""
        backbone = self.backbone_config
        for attribute in ("hidden_size", "patch_size", "image_size", "num_channels"):
            if not hasattr(backbone, attribute):
                raise ValueError(
                    f"`backbone_config` ({backbone.model_type}) has no `{attribute}`: EquiRecon needs a ViT-family "
                    "encoder config such as Dinov2Config, ViTConfig or DeiTConfig."
                )
        image_h, image_w = _as_pair(backbone.image_size)
        patch_h, patch_w = _as_pair(backbone.patch_size)
        if image_h != image_w or patch_h != patch_w:
            raise ValueError(
                f"`backbone_config` image_size {backbone.image_size} and patch_size {backbone.patch_size} must be "
                "square for pretraining."
            )
        if image_h % patch_h != 0:
            raise ValueError(
                f"`backbone_config.image_size` ({image_h}) must be a multiple of `backbone_config.patch_size` "
                f"({patch_h}); use e.g. image_size={(image_h // patch_h) * patch_h or patch_h}."
            )
        if backbone.num_channels != 3:
            raise ValueError(f"`backbone_config.num_channels` must be 3 (RGB), got {backbone.num_channels}.")
        if not isinstance(self.d_patch, int) or self.d_patch < 2:
            raise ValueError(f"`d_patch` must be an integer >= 2, got {self.d_patch!r}.")
        if not isinstance(self.d_equi, int) or not 1 <= self.d_equi < self.d_patch:
            raise ValueError(
                f"`d_equi` must be an integer in [1, d_patch) = [1, {self.d_patch}) so that both parts are "
                f"non-empty, got {self.d_equi!r}."
            )
        if not isinstance(self.num_intermediates, int) or self.num_intermediates < 1:
            raise ValueError(
                f"`num_intermediates` (K) must be an integer >= 1, got {self.num_intermediates!r} (the paper uses 2)."
            )
        if not self.reconstruction_weight >= 0:
            raise ValueError(
                f"`reconstruction_weight` (λ) must be >= 0, got {self.reconstruction_weight!r} "
                "(the paper uses 1.0; 0.0 disables reconstruction)."
            )
        if not self.ssl_weight >= 0:
            raise ValueError(f"`ssl_weight` must be >= 0, got {self.ssl_weight!r}.")
        if self.ssl_objective not in SSL_OBJECTIVES:
            raise ValueError(f"`ssl_objective` must be one of {SSL_OBJECTIVES}, got {self.ssl_objective!r}.")
        for name in ("vicreg_sim_coeff", "vicreg_std_coeff", "vicreg_cov_coeff"):
            if getattr(self, name) < 0:
                raise ValueError(f"`{name}` must be >= 0, got {getattr(self, name)!r}.")
        if not self.simclr_temperature > 0:
            raise ValueError(f"`simclr_temperature` must be > 0, got {self.simclr_temperature!r}.")
        for name in ("vicreg_expander_dims", "simclr_projector_dims"):
            dims = getattr(self, name)
            if not dims or any(not isinstance(d, int) or d < 1 for d in dims):
                raise ValueError(f"`{name}` must be a non-empty list of positive integers, got {dims!r}.")
        self._validate_dino_family()
        for name in ("decoder_patch_channels", "decoder_hidden_channels"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"`{name}` must be a positive integer, got {getattr(self, name)!r}.")
        if self.segmentation_head not in SEGMENTATION_HEADS:
            raise ValueError(
                f"`segmentation_head` must be one of {SEGMENTATION_HEADS}, got {self.segmentation_head!r}."
            )
        num_layers = self.backbone_config.num_hidden_layers
        if self.out_indices is not None and (
            len(self.out_indices) != 4 or any(not 0 <= i <= num_layers for i in self.out_indices)
        ):
            raise ValueError(
                f"`out_indices` must be 4 hidden-state indices in [0, {num_layers}] (0 = embeddings), "
                f"got {self.out_indices!r}."
            )
        if "family" not in self.transformation:
            raise ValueError(
                f"`transformation` must name its 'family' (e.g. {{'family': 'se2'}}), got {self.transformation!r}."
            )


__all__ = [
    "DINO_CENTERINGS",
    "MASKED_OBJECTIVES",
    "PRESETS",
    "SEGMENTATION_HEADS",
    "SSL_OBJECTIVES",
    "TEACHER_OBJECTIVES",
    "EquiReconConfig",
]
