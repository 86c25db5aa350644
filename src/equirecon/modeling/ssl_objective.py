# Copyright 2026 The equirecon developers. Licensed under the Apache License, Version 2.0.
"""The interface `EquiReconForPreTraining` calls a host SSL objective through.

A leaf module (torch only) so that the objectives and `objectives.build_objective` can all import it.
"""

from __future__ import annotations

import torch
from torch import nn


class SSLObjective(nn.Module):
    """Base of the host objectives: the scalar loss of the two views' pooled invariant features (B, d_inv) each
    (the mean of the patch tokens' z_inv). Objectives with `needs_teacher` (the DINO family) take per-token
    features of the student and of the EMA teacher instead."""

    needs_teacher: bool = False
    uses_masks: bool = False

    def forward(self, first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


__all__ = ["SSLObjective"]
