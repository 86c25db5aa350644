# Copyright 2026 The equirecon developers. Licensed under the Apache License, Version 2.0.
"""The pretraining batch as `EquiReconForPreTraining.forward` takes it: the checks of the views and masks (a bad batch
fails with the argument, its shape and what was expected), and which pairs the reconstruction loss counts."""

from __future__ import annotations

from typing import Any

import torch


def reconstructed_pairs(bool_masked_pos: torch.Tensor | None) -> torch.Tensor | None:
    """The pairs whose views are both unmasked, `(batch_size,)` from `bool_masked_pos` `(batch_size, 2, N)`; None
    without masks (all pairs). Only these reach the reconstruction loss: a masked token's features are the mask
    token's, not the image's, and the decoders must learn from the image."""
    return None if bool_masked_pos is None else ~bool_masked_pos.flatten(1).any(dim=1)


def check_views(
    config: Any,
    has_teacher: bool,
    pixel_values: torch.Tensor,
    transformed_pixel_values: torch.Tensor,
    local_pixel_values: torch.Tensor | None,
) -> tuple[int, int]:
    """Validate the views and return their patch grid (h, w)."""
    if pixel_values.shape != transformed_pixel_values.shape:
        raise ValueError(
            f"`pixel_values` {tuple(pixel_values.shape)} and `transformed_pixel_values` "
            f"{tuple(transformed_pixel_values.shape)} must have the same shape (both views at one size)."
        )
    batch_size, _, height, width = pixel_values.shape
    patch = config.patch_size
    if height % patch or width % patch:
        raise ValueError(f"Image size {height}×{width} must be a multiple of the patch size {patch}.")
    if local_pixel_values is not None and not has_teacher:
        raise ValueError(
            f"`local_pixel_values` (multi-crop) needs a DINO-family ssl_objective, got {config.ssl_objective!r}."
        )
    if local_pixel_values is not None and (
        local_pixel_values.ndim != 5 or local_pixel_values.shape[0] != batch_size or local_pixel_values.shape[2] != 3
    ):
        raise ValueError(
            f"`local_pixel_values` has shape {tuple(local_pixel_values.shape)}, expected (batch_size={batch_size}, "
            "num_local_crops, 3, size, size)."
        )
    return height // patch, width // patch


def student_masks(
    config: Any, bool_masked_pos: torch.Tensor | None, batch_size: int, grid_size: tuple[int, int], return_loss: bool
) -> torch.Tensor | None:
    """Validate `bool_masked_pos` (batch, 2, N) and return the student's masks in the views' order (2·batch, N)."""
    if bool_masked_pos is None:
        if return_loss and config.uses_masks:
            raise ValueError(
                f"ssl_objective {config.ssl_objective!r} distils masked patch tokens: pass `bool_masked_pos` "
                "(batch, 2, num_patches). The pretraining data pipeline makes it when given a mask generator "
                "(`equirecon.training.BlockMaskGenerator.from_config(config)`, as `equirecon pretrain` does)."
            )
        return None
    if not config.uses_masks:
        raise ValueError(
            f"`bool_masked_pos` was given, but ssl_objective {config.ssl_objective!r} does not mask patch "
            f"tokens (only {('ibot', 'dinov2')} do)."
        )
    expected = (batch_size, 2, grid_size[0] * grid_size[1])
    if tuple(bool_masked_pos.shape) != expected:
        raise ValueError(
            f"`bool_masked_pos` has shape {tuple(bool_masked_pos.shape)}, expected {expected} (batch, the two "
            "views, patches in raster order)."
        )
    return bool_masked_pos.bool().transpose(0, 1).flatten(0, 1)


__all__ = ["check_views", "reconstructed_pairs", "student_masks"]
