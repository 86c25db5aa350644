# Copyright 2026 The equirecon developers. Licensed under the Apache License, Version 2.0.
"""The prototype heads of the DINO family (DINO, iBOT, DINOv2).

The student's heads belong to `DINOObjective`; the EMA teacher (`EquiReconTeacher`) holds a copy of the same shape.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class WeightNormalizedLinear(nn.Module):
    """Bias-free linear layer with a weight-normalised matrix: row i is `weight_g[i] · weight[i] / ‖weight[i]‖`, as
    `nn.utils.weight_norm` gives DINO's last layer. With `learn_norm=False` the norm is fixed at 1 and there is no
    `weight_g` parameter (DINO's `norm_last_layer=True` freezes it), so no code path can train it by mistake."""

    def __init__(self, in_features: int, out_features: int, learn_norm: bool):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        self.weight_g = nn.Parameter(torch.ones(out_features, 1)) if learn_norm else None

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        weight = F.normalize(self.weight, dim=1)
        if self.weight_g is not None:
            weight = weight * self.weight_g
        return F.linear(hidden_states, weight)


class DINOHead(nn.Module):
    """The DINO projection head: a GELU MLP to an L2-normalised bottleneck, then a weight-normalised linear layer to
    the prototype scores (`facebookresearch/dino:vision_transformer.py: DINOHead`,
    `facebookresearch/dinov2:dinov2/layers/dino_head.py`)."""

    def __init__(
        self,
        input_dim: int,
        out_dim: int,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
        num_layers: int = 3,
        norm_last_layer: bool = True,
    ):
        super().__init__()
        layers: list[nn.Module] = [nn.Linear(input_dim, hidden_dim), nn.GELU()]
        for _ in range(num_layers - 2):
            layers += [nn.Linear(hidden_dim, hidden_dim), nn.GELU()]
        layers.append(nn.Linear(hidden_dim, bottleneck_dim))
        self.mlp = nn.Sequential(*layers)
        self.last_layer = WeightNormalizedLinear(bottleneck_dim, out_dim, learn_norm=not norm_last_layer)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        hidden_states = self.mlp(hidden_states)
        eps = 1e-6 if hidden_states.dtype == torch.float16 else 1e-12
        return self.last_layer(F.normalize(hidden_states, dim=-1, eps=eps))


class DINOHeads(nn.Module):
    """The prototype heads of one network, student or teacher: `cls` for the CLS token and, when iBOT/DINOv2 use a
    separate head for the patch tokens, `patch` (otherwise the patch tokens share `cls`, as DINOv2's default and
    iBOT's ViT-S/16 recipe do)."""

    def __init__(
        self,
        input_dim: int,
        out_dim: int,
        hidden_dim: int,
        bottleneck_dim: int,
        norm_last_layer: bool,
        patch_out_dim: int | None = None,
    ):
        super().__init__()
        self.cls = DINOHead(input_dim, out_dim, hidden_dim, bottleneck_dim, norm_last_layer=norm_last_layer)
        self.patch = (
            DINOHead(input_dim, patch_out_dim, hidden_dim, bottleneck_dim, norm_last_layer=norm_last_layer)
            if patch_out_dim is not None
            else None
        )

    @property
    def patch_head(self) -> DINOHead:
        return self.patch if self.patch is not None else self.cls


__all__ = ["DINOHead", "DINOHeads", "WeightNormalizedLinear"]
