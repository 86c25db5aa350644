# Copyright 2026 The equirecon developers. Licensed under the Apache License, Version 2.0.
"""Named EquiRecon configurations: the paper's hosts (Table 1 and 4) and a tiny ViT for CPUs.

Plain dicts of `EquiReconConfig` fields, read by `EquiReconConfig.from_preset`. Imports nothing, so that it travels
with `save_pretrained` as Hub custom code next to the configuration file.
"""

from __future__ import annotations

from typing import Any

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
    # The ViT-S/16 presets' 8/8 decoders: wider ones cost this small encoder far more per step and added no R² rot
    # on the mean patch token (docs/results.md).
    "decoder_patch_channels": 8,
    "decoder_hidden_channels": 8,
    "transformation": {"family": "rotation"},
    # A UPerNet head as wide as ViT-S/16's (512) would dwarf this encoder on a CPU.
    "segmentation_channels": 64,
    "auxiliary_channels": 32,
}

# The masking objectives (iBOT, DINOv2) get the encoder's mask token from `EquiReconConfig` itself.
PRESETS: dict[str, dict[str, Any]] = {
    # Paper, VICReg host in the SIE configuration (Table 1).
    "vicreg-vit-s16": {"backbone_config": _VIT_S16, "d_patch": 512, "d_equi": 256, "ssl_objective": "vicreg"},
    # Paper Table 4, SimCLR host.
    "simclr-vit-s16": {"backbone_config": _VIT_S16, "d_patch": 512, "d_equi": 256, "ssl_objective": "simclr"},
    # Paper Table 4, iBOT host (ViT-S/16 and ViT-L/16).
    "ibot-vit-s16": {**_IBOT, "backbone_config": {**_VIT_S16, "drop_path_rate": 0.1}},
    # iBOT's ViT-L/16 trains 250 epochs (the "1000 effective epochs" of the iBOT paper), so its epoch-based teacher
    # schedules are fractions of 250; its weight-normalised last layer keeps norm 1, as main_ibot.py advises beyond
    # ViT-S ("False with vit_small and True with vit_base").
    "ibot-vit-l16": {
        **_IBOT,
        "backbone_config": {**_VIT_L16, "drop_path_rate": 0.1},
        "dino_norm_last_layer": True,
        "dino_warmup_teacher_temperature_steps": 30 / 250,
        "dino_freeze_last_layer_steps": 1 / 250,
    },
    # Paper Table 4, DINOv2 host: ViT-L/16 for 100 ImageNet-1k epochs, DINOv2's `vitl16_short` configuration
    # (facebookresearch/dinov2:dinov2/configs/ssl_default_config.yaml): 65 536 shared prototypes, KoLeo 0.1,
    # momentum 0.992 → 1, teacher temperature 0.04 → 0.07 over 30 of 100 epochs, drop path 0.3, EMA centring (its
    # ViT-L/14 and ViT-g/14 releases use Sinkhorn-Knopp: `dino_centering="sinkhorn_knopp"`).
    "dinov2-vit-l16": {
        "backbone_config": {**_VIT_L16, "drop_path_rate": 0.3},
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
    # The tiny ViT as an iBOT host (1024 shared prototypes), to try the DINO family on a CPU.
    "tiny-ibot": {**_TINY, "ssl_objective": "ibot", "dino_out_dim": 1024, "dino_hidden_dim": 512},
}

#: The encoder of `EquiReconConfig()` without arguments: `vicreg-vit-s16`'s ViT-S/16 at 224².
DEFAULT_BACKBONE: dict[str, Any] = _VIT_S16

__all__ = ["DEFAULT_BACKBONE", "PRESETS"]
