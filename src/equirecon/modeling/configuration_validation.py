# Copyright 2026 The equirecon developers. Licensed under the Apache License, Version 2.0.
"""The rules an `EquiReconConfig` must satisfy, one `validate_*` method per part of the model, named as the
`@strict` configs of transformers name theirs.

Travels with the configuration file as Hub custom code, so it imports only the standard library.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable
from typing import Any

SSL_OBJECTIVES = ("vicreg", "simclr", "dino", "ibot", "dinov2")
"""Host SSL objectives this release implements."""

TEACHER_OBJECTIVES = ("dino", "ibot", "dinov2")
"""Objectives that distil an EMA teacher (the model keeps one; `EquiReconTrainer` updates it)."""

MASKED_OBJECTIVES = ("ibot", "dinov2")
"""Objectives that mask the student's patch tokens (the data pipeline makes `bool_masked_pos`)."""

DINO_CENTERINGS = ("centering", "sinkhorn_knopp")

SEGMENTATION_HEADS = ("linear", "upernet")


def as_pair(value: int | list[int] | tuple[int, int]) -> tuple[int, int]:
    """An image or patch size as (height, width): one number for both, or a pair, as transformers configs give it."""
    if isinstance(value, (list, tuple)) and len(value) == 2:
        return int(value[0]), int(value[1])
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return int(value), int(value)
    raise ValueError(f"cannot read a size from {value!r}: give one int, or a pair (height, width).")


def _is_positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


class EquiReconConfigValidationMixin:
    """`validate()` and the checks it runs; mixed into `EquiReconConfig`, whose fields they read."""

    def validate(self) -> None:
        """Every `validate_*` method, transformers' and EquiRecon's, as transformers' `@strict` configs run them. Run
        at construction and by `save_pretrained`: a bad value fails with the field, the value and what is allowed,
        never later inside `forward`."""
        for name in sorted(dir(type(self))):
            if name.startswith("validate_") and callable(getattr(self, name)):
                getattr(self, name)()

    def _require(self, names: tuple[str, ...], is_valid: Callable[[Any], bool], requirement: str) -> None:
        for name in names:
            if not is_valid(getattr(self, name)):
                raise ValueError(f"`{name}` must be {requirement}, got {getattr(self, name)!r}.")

    def validate_backbone(self) -> None:
        backbone = self.backbone_config
        for attribute in ("hidden_size", "patch_size", "image_size", "num_channels", "num_hidden_layers"):
            if not hasattr(backbone, attribute):
                raise ValueError(
                    f"`backbone_config` ({backbone.model_type}) has no `{attribute}`: EquiRecon needs a ViT-family "
                    "encoder config such as Dinov2Config, ViTConfig or DeiTConfig."
                )
        image_h, image_w = as_pair(backbone.image_size)
        patch_h, patch_w = as_pair(backbone.patch_size)
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

    def validate_token_split(self) -> None:
        if not isinstance(self.d_patch, int) or self.d_patch < 2:
            raise ValueError(f"`d_patch` must be an integer >= 2, got {self.d_patch!r}.")
        if not isinstance(self.d_equi, int) or not 1 <= self.d_equi < self.d_patch:
            raise ValueError(
                f"`d_equi` must be an integer in [1, d_patch) = [1, {self.d_patch}) so that both parts are "
                f"non-empty, got {self.d_equi!r}."
            )

    def validate_reconstruction(self) -> None:
        if not isinstance(self.num_intermediates, int) or self.num_intermediates < 1:
            raise ValueError(
                f"`num_intermediates` (K) must be an integer >= 1, got {self.num_intermediates!r} (the paper uses 2)."
            )
        if not self.reconstruction_weight >= 0:
            raise ValueError(
                f"`reconstruction_weight` (λ) must be >= 0, got {self.reconstruction_weight!r} "
                "(the paper uses 1.0; 0.0 disables reconstruction)."
            )
        self._require(("decoder_patch_channels", "decoder_hidden_channels"), _is_positive_int, "a positive integer")
        self._require(("decoder_dilation",), _is_positive_int, "an integer >= 1")
        kernel_size = self.decoder_kernel_size
        if not _is_positive_int(kernel_size) or kernel_size % 2 == 0:
            raise ValueError(
                f"`decoder_kernel_size` must be an odd integer >= 1 (the decoder's convolutions keep the image size "
                f"with 'same' padding), got {kernel_size!r}; e.g. 3 or 5."
            )
        if "family" not in self.transformation:
            raise ValueError(
                f"`transformation` must name its 'family' (e.g. {{'family': 'se2'}}), got {self.transformation!r}."
            )

    def validate_ssl_objective(self) -> None:
        if self.ssl_objective not in SSL_OBJECTIVES:
            raise ValueError(f"`ssl_objective` must be one of {SSL_OBJECTIVES}, got {self.ssl_objective!r}.")
        self._require(
            ("ssl_weight", "vicreg_sim_coeff", "vicreg_std_coeff", "vicreg_cov_coeff"), lambda v: v >= 0, ">= 0"
        )
        self._require(("simclr_temperature",), lambda v: v > 0, "> 0")
        for name in ("vicreg_expander_dims", "simclr_projector_dims"):
            dims = getattr(self, name)
            if not dims or not all(_is_positive_int(dim) for dim in dims):
                raise ValueError(f"`{name}` must be a non-empty list of positive integers, got {dims!r}.")

    def validate_dino_family(self) -> None:
        integers = (
            "dino_out_dim",
            "dino_hidden_dim",
            "dino_bottleneck_dim",
            "ibot_out_dim",
            "dino_sinkhorn_iterations",
        )
        self._require(integers, _is_positive_int, "a positive integer")
        temperatures = ("dino_student_temperature", "dino_teacher_temperature", "dino_warmup_teacher_temperature")
        self._require(temperatures, lambda v: v > 0, "> 0")
        self._require(
            ("dino_center_momentum", "teacher_momentum", "mask_probability"), lambda v: 0 <= v <= 1, "in [0, 1]"
        )
        lengths, requirement = (
            ("dino_warmup_teacher_temperature_steps", "dino_freeze_last_layer_steps"),
            ">= 0 (steps, ",
        )
        self._require(lengths, lambda v: v >= 0, requirement + "or a fraction of the run if < 1)")
        self._require(("ibot_loss_weight", "koleo_loss_weight"), lambda v: v >= 0, ">= 0")
        if self.dino_centering not in DINO_CENTERINGS:
            raise ValueError(f"`dino_centering` must be one of {DINO_CENTERINGS}, got {self.dino_centering!r}.")
        low_high = self.mask_ratio_range
        if len(low_high) != 2 or not 0 < low_high[0] <= low_high[1] < 1:
            raise ValueError(f"`mask_ratio_range` must be [low, high] with 0 < low <= high < 1, got {low_high!r}.")

    def validate_downstream_heads(self) -> None:
        if self.segmentation_head not in SEGMENTATION_HEADS:
            raise ValueError(
                f"`segmentation_head` must be one of {SEGMENTATION_HEADS}, got {self.segmentation_head!r}."
            )
        self.verify_out_features_out_indices()  # transformers' check of the stages (known, unique, in order)


__all__ = [
    "DINO_CENTERINGS",
    "MASKED_OBJECTIVES",
    "SEGMENTATION_HEADS",
    "SSL_OBJECTIVES",
    "TEACHER_OBJECTIVES",
    "EquiReconConfigValidationMixin",
    "as_pair",
]
