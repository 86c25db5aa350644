# Copyright 2026 The equirecon developers. Licensed under the Apache License, Version 2.0.
"""The invariance host objectives, VICReg and SimCLR, on the two views' pooled invariant features.

Each objective owns its expander/projector. Statistics (VICReg) and negatives (SimCLR) span the global batch: when
`torch.distributed` is initialised, embeddings are gathered with a differentiable all-gather, as the reference
implementations do.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from .ssl_objective import SSLObjective


def gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate `tensor` over all processes along dim 0, keeping the gradient of every rank's slice."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return tensor
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(tensor), dim=0)


def build_mlp(input_dim: int, dims: Sequence[int]) -> nn.Sequential:
    """Linear-BatchNorm-ReLU blocks with a plain final linear layer: the VICReg expander / SimCLR projector shape."""
    layers: list[nn.Module] = []
    for index, dim in enumerate(dims):
        layers.append(nn.Linear(input_dim, dim, bias=index == len(dims) - 1))
        if index < len(dims) - 1:
            layers += [nn.BatchNorm1d(dim), nn.ReLU(inplace=True)]
        input_dim = dim
    return nn.Sequential(*layers)


def off_diagonal(matrix: torch.Tensor) -> torch.Tensor:
    """The off-diagonal entries of a square matrix, flattened."""
    n = matrix.shape[0]
    return matrix.flatten()[:-1].view(n - 1, n + 1)[:, 1:].flatten()


def vicreg_loss(
    first: torch.Tensor,
    second: torch.Tensor,
    sim_coeff: float = 25.0,
    std_coeff: float = 25.0,
    cov_coeff: float = 1.0,
    eps: float = 1e-4,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """VICReg (Bardes et al., 2022) on two batches of embeddings (B, D): invariance, variance and covariance terms."""
    invariance = F.mse_loss(first, second)
    first = gather_with_grad(first)
    second = gather_with_grad(second)
    first = first - first.mean(dim=0)
    second = second - second.mean(dim=0)
    std_first = torch.sqrt(first.var(dim=0) + eps)
    std_second = torch.sqrt(second.var(dim=0) + eps)
    variance = (F.relu(1 - std_first).mean() + F.relu(1 - std_second).mean()) / 2
    batch, dim = first.shape
    cov_first = first.T @ first / (batch - 1)
    cov_second = second.T @ second / (batch - 1)
    covariance = off_diagonal(cov_first).pow(2).sum() / dim + off_diagonal(cov_second).pow(2).sum() / dim
    loss = sim_coeff * invariance + std_coeff * variance + cov_coeff * covariance
    return loss, {"invariance": invariance, "variance": variance, "covariance": covariance}


def info_nce_loss(first: torch.Tensor, second: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """NT-Xent (SimCLR): each embedding's positive is its pair; the other 2B-2 embeddings of the global batch are
    negatives."""
    first = F.normalize(first, dim=-1)
    second = F.normalize(second, dim=-1)
    local_batch = first.shape[0]
    all_first = gather_with_grad(first)
    all_second = gather_with_grad(second)
    offset = dist.get_rank() * local_batch if dist.is_available() and dist.is_initialized() else 0
    candidates = torch.cat([all_first, all_second], dim=0)  # (2N, D)
    global_batch = all_first.shape[0]
    queries = torch.cat([first, second], dim=0)  # (2B, D)
    logits = queries @ candidates.T / temperature  # (2B, 2N)
    rows = torch.arange(local_batch, device=first.device) + offset
    self_index = torch.cat([rows, rows + global_batch])
    positive_index = torch.cat([rows + global_batch, rows])
    logits = logits.scatter(1, self_index[:, None], float("-inf"))
    return F.cross_entropy(logits, positive_index)


class VICRegObjective(SSLObjective):
    """VICReg with its 3-layer expander, as SIE configures it (sim/std/cov = 10/10/1, 2048-2048-2048)."""

    def __init__(
        self, input_dim: int, expander_dims: Sequence[int], sim_coeff: float, std_coeff: float, cov_coeff: float
    ):
        super().__init__()
        self.expander = build_mlp(input_dim, expander_dims)
        self.sim_coeff = sim_coeff
        self.std_coeff = std_coeff
        self.cov_coeff = cov_coeff

    def forward(self, first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
        # One BatchNorm pass over both views, so the statistics are shared as in a single forward.
        expanded = self.expander(torch.cat([first, second], dim=0)).float()
        first, second = expanded.chunk(2, dim=0)
        loss, _ = vicreg_loss(first, second, self.sim_coeff, self.std_coeff, self.cov_coeff)
        return loss


class SimCLRObjective(SSLObjective):
    """SimCLR: a projector then NT-Xent over the global batch."""

    def __init__(self, input_dim: int, projector_dims: Sequence[int], temperature: float):
        super().__init__()
        self.projector = build_mlp(input_dim, projector_dims)
        self.temperature = temperature

    def forward(self, first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
        projected = self.projector(torch.cat([first, second], dim=0)).float()
        first, second = projected.chunk(2, dim=0)
        return info_nce_loss(first, second, self.temperature)


__all__ = [
    "SimCLRObjective",
    "VICRegObjective",
    "build_mlp",
    "gather_with_grad",
    "info_nce_loss",
    "off_diagonal",
    "vicreg_loss",
]
