# Copyright 2026 The equirecon developers. Licensed under the Apache License, Version 2.0.
"""Building blocks of the downstream heads: the segmentation heads (the DINOv2 linear protocol; UPerNet on a feature
pyramid) and the BatchNorm guard for a training batch of one example.

The UPerNet head is the one of transformers' `UperNetForSemanticSegmentation` (pyramid pooling + FPN, and an FCN
auxiliary head; after OpenMMLab's mmsegmentation), written out here with the same module names, so that a checkpoint's
keys are those of transformers' modules and nothing here depends on transformers' private classes.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn


class UperNetConvModule(nn.Module):
    """Convolution, BatchNorm, ReLU."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, padding: int = 0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=kernel_size, padding=padding, bias=False)
        self.batch_norm = nn.BatchNorm2d(out_channels)
        self.activation = nn.ReLU()

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.activation(self.batch_norm(self.conv(hidden_states)))


class UperNetPyramidPoolingModule(nn.Module):
    """PSPNet's pyramid pooling: average-pool to each scale, 1×1 convolution, upsample back."""

    def __init__(self, pool_scales: Sequence[int], in_channels: int, channels: int) -> None:
        super().__init__()
        for index, scale in enumerate(pool_scales):
            block = nn.Sequential(nn.AdaptiveAvgPool2d(scale), UperNetConvModule(in_channels, channels, kernel_size=1))
            self.add_module(str(index), block)

    def forward(self, hidden_states: torch.Tensor) -> list[torch.Tensor]:
        size = hidden_states.shape[2:]
        return [
            F.interpolate(block(hidden_states), size=size, mode="bilinear", align_corners=False)
            for block in self.children()
        ]


class UperNetHead(nn.Module):
    """UPerNet (Xiao et al., 2018): pyramid pooling on the coarsest map, a top-down FPN over all, fused at the finest
    resolution."""

    def __init__(self, in_channels: Sequence[int], channels: int, num_labels: int, pool_scales: Sequence[int]) -> None:
        super().__init__()
        self.classifier = nn.Conv2d(channels, num_labels, kernel_size=1)
        self.psp_modules = UperNetPyramidPoolingModule(pool_scales, in_channels[-1], channels)
        self.bottleneck = UperNetConvModule(in_channels[-1] + len(pool_scales) * channels, channels, 3, padding=1)
        self.lateral_convs = nn.ModuleList(UperNetConvModule(c, channels, kernel_size=1) for c in in_channels[:-1])
        self.fpn_convs = nn.ModuleList(
            UperNetConvModule(channels, channels, kernel_size=3, padding=1) for _ in in_channels[:-1]
        )
        self.fpn_bottleneck = UperNetConvModule(len(in_channels) * channels, channels, kernel_size=3, padding=1)

    def forward(self, feature_maps: Sequence[torch.Tensor]) -> torch.Tensor:
        top = feature_maps[-1]
        laterals = [conv(feature_maps[i]) for i, conv in enumerate(self.lateral_convs)]
        laterals.append(self.bottleneck(torch.cat([top, *self.psp_modules(top)], dim=1)))
        for i in range(len(laterals) - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + F.interpolate(
                laterals[i], size=laterals[i - 1].shape[2:], mode="bilinear", align_corners=False
            )
        outputs = [conv(lateral) for conv, lateral in zip(self.fpn_convs, laterals, strict=False)] + [laterals[-1]]
        size = outputs[0].shape[2:]
        outputs = [outputs[0]] + [
            F.interpolate(output, size=size, mode="bilinear", align_corners=False) for output in outputs[1:]
        ]
        return self.classifier(self.fpn_bottleneck(torch.cat(outputs, dim=1)))


class UperNetFCNHead(nn.Module):
    """The auxiliary head: one 3×3 convolution block and a classifier on the map `in_index`."""

    def __init__(self, in_channels: int, channels: int, num_labels: int, in_index: int = 2) -> None:
        super().__init__()
        self.in_index = in_index
        self.convs = nn.Sequential(UperNetConvModule(in_channels, channels, kernel_size=3, padding=1))
        self.classifier = nn.Conv2d(channels, num_labels, kernel_size=1)

    def forward(self, feature_maps: Sequence[torch.Tensor]) -> torch.Tensor:
        return self.classifier(self.convs(feature_maps[self.in_index]))


class EquiReconLinearSegmentationHead(nn.Module):
    """The DINOv2 linear protocol: BatchNorm and a 1×1 convolution on the last layer's patch grid."""

    def __init__(self, hidden_size: int, num_labels: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(hidden_size)
        self.classifier = nn.Conv2d(hidden_size, num_labels, kernel_size=1)

    def forward(self, feature_maps: Sequence[torch.Tensor]) -> tuple[torch.Tensor, None]:
        """(logits, no auxiliary logits), the shape of every segmentation head's output."""
        return self.classifier(self.norm(feature_maps[-1])), None


class EquiReconFeaturePyramid(nn.Module):
    """A ViT's single-scale maps turned into a 4-level pyramid (×4, ×2, ×1, ×½), as BEiT and ViTDet do for UPerNet."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.up4 = nn.Sequential(
            nn.ConvTranspose2d(hidden_size, hidden_size, kernel_size=2, stride=2),
            nn.BatchNorm2d(hidden_size),
            nn.GELU(),
            nn.ConvTranspose2d(hidden_size, hidden_size, kernel_size=2, stride=2),
        )
        self.up2 = nn.ConvTranspose2d(hidden_size, hidden_size, kernel_size=2, stride=2)
        self.down2 = nn.MaxPool2d(kernel_size=2, stride=2)

    def forward(self, feature_maps: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        return [self.up4(feature_maps[0]), self.up2(feature_maps[1]), feature_maps[2], self.down2(feature_maps[3])]


class EquiReconUperNetSegmentationHead(nn.Module):
    """UPerNet over a pyramid built from four encoder layers, with an optional FCN auxiliary head on its third
    level."""

    def __init__(
        self,
        hidden_size: int,
        num_labels: int,
        channels: int,
        pool_scales: Sequence[int],
        auxiliary_channels: int | None,
    ) -> None:
        """`auxiliary_channels=None` leaves the auxiliary head out."""
        super().__init__()
        in_channels = [hidden_size] * 4
        self.pyramid = EquiReconFeaturePyramid(hidden_size)
        self.decode_head = UperNetHead(in_channels, channels, num_labels, tuple(pool_scales))
        self.auxiliary_head = (
            UperNetFCNHead(hidden_size, auxiliary_channels, num_labels) if auxiliary_channels is not None else None
        )

    def forward(self, feature_maps: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(logits, auxiliary logits in training with the auxiliary head, else None)."""
        pyramid = self.pyramid(feature_maps)
        auxiliary = self.auxiliary_head(pyramid) if self.auxiliary_head is not None and self.training else None
        return self.decode_head(pyramid), auxiliary


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


__all__ = [
    "EquiReconFeaturePyramid",
    "EquiReconLinearSegmentationHead",
    "EquiReconUperNetSegmentationHead",
    "UperNetFCNHead",
    "UperNetHead",
    "running_statistics_for_single_values",
]
