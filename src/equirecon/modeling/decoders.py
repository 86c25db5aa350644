# Copyright 2026 The equirecon developers. Licensed under the Apache License, Version 2.0.
"""The reconstruction branch of EquiRecon pretraining: the decoders that reconstruct the K intermediate images from
both views' equivariant features, and their loss."""

from __future__ import annotations

from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


def masked_mse(prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean squared error over the valid pixels only (`mask` is 1 where a pixel is valid, broadcast over channels)."""
    squared_error = (prediction.float() - target.float()).pow(2)
    if mask is None:
        return squared_error.mean()
    mask = mask.to(squared_error.dtype).expand_as(squared_error)
    return (squared_error * mask).sum() / mask.sum().clamp_min(1.0)


def counted_target_mask(
    intermediate_mask: torch.Tensor | None, reconstructed_pairs: torch.Tensor | None
) -> torch.Tensor | None:
    """The mask of the reconstruction loss: the targets' valid pixels (batch, K, 1, H, W; None: all) in the pairs the
    loss counts (`reconstructed_pairs`, (batch,); None: all). The model's loss and the trainer's controls both score
    with it, so that they score the same pixels."""
    if reconstructed_pairs is None:
        return intermediate_mask
    dtype = intermediate_mask.dtype if intermediate_mask is not None else torch.float32
    pair_mask = reconstructed_pairs.to(dtype).view(-1, 1, 1, 1, 1)
    return pair_mask if intermediate_mask is None else intermediate_mask * pair_mask


class EquiReconDecoder(nn.Module):
    """One intermediate-state decoder: a linear layer maps each token to its own p×p patch of C channels
    (pixel-shuffled to the input resolution), then four convolutions at full resolution (3×3 by default,
    `config.decoder_kernel_size` and `decoder_dilation`, 'same' padding) produce RGB.

    Each token writing its own patch keeps the receptive field local, so the decoder cannot reconstruct the
    intermediate image by copying neighbouring pixels of the second view: it must be told θ by the encoder
    (an upsampling decoder let the encoder skip θ). The convolutions reach (kernel_size − 1)·dilation/2 pixels per
    layer beyond a token's patch, 4 in all with the defaults."""

    def __init__(self, config: Any):
        super().__init__()
        patch, channels, hidden = config.patch_size, config.decoder_patch_channels, config.decoder_hidden_channels
        self.patch_size = patch
        self.to_patches = nn.Linear(2 * config.d_equi, channels * patch * patch)
        kernel_size, dilation = config.decoder_kernel_size, config.decoder_dilation
        conv = partial(
            nn.Conv2d, kernel_size=kernel_size, padding=(kernel_size - 1) * dilation // 2, dilation=dilation
        )
        self.convs = nn.Sequential(
            conv(channels, hidden),
            nn.GELU(),
            conv(hidden, hidden),
            nn.GELU(),
            conv(hidden, hidden),
            nn.GELU(),
            conv(hidden, config.backbone_config.num_channels),
        )
        # Fan-in scaled initialisation (He before a GELU, LeCun elsewhere), read by `_init_weights`, so the
        # output and the gradient reaching the encoder have the inputs' scale from the first step: five layers at the
        # encoder's 0.02 std would start the auxiliary task near zero (`benchmarks/reconstruction_signal.py`).
        layers = [self.to_patches, *(layer for layer in self.convs if isinstance(layer, nn.Conv2d))]
        for index, layer in enumerate(layers):
            layer.init_gain = 2**0.5 if 0 < index < len(layers) - 1 else 1.0

    def forward(self, patch_features: torch.Tensor, grid_size: tuple[int, int]) -> torch.Tensor:
        """`patch_features` (B, h·w, 2·d_equi) in raster order → image (B, 3, h·p, w·p)."""
        batch_size = patch_features.shape[0]
        patches = self.to_patches(patch_features)  # (B, h·w, C·p·p)
        patches = patches.transpose(1, 2).reshape(batch_size, -1, *grid_size)
        return self.convs(F.pixel_shuffle(patches, self.patch_size))


__all__ = ["EquiReconDecoder", "counted_target_mask", "masked_mse"]
