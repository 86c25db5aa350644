# Copyright 2026 The equirecon developers. Licensed under the Apache License, Version 2.0.
"""The host SSL objective a config names (`build_objective`).

VICReg and SimCLR live in `invariance_objectives.py`, the DINO family in `dino_objective.py`; all implement
`ssl_objective.SSLObjective`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .dino_objective import DINOObjective
from .invariance_objectives import SimCLRObjective, VICRegObjective
from .ssl_objective import SSLObjective

if TYPE_CHECKING:
    from .configuration_equirecon import EquiReconConfig


def build_objective(config: EquiReconConfig) -> SSLObjective:
    """The host objective named by `config.ssl_objective`, reading `config.d_inv` channels."""
    if config.ssl_objective == "vicreg":
        return VICRegObjective(
            config.d_inv,
            config.vicreg_expander_dims,
            config.vicreg_sim_coeff,
            config.vicreg_std_coeff,
            config.vicreg_cov_coeff,
        )
    if config.ssl_objective == "simclr":
        return SimCLRObjective(config.d_inv, config.simclr_projector_dims, config.simclr_temperature)
    if config.ssl_objective in ("dino", "ibot", "dinov2"):
        masked = config.ssl_objective != "dino"
        return DINOObjective(
            config.d_inv,
            config.num_prefix_tokens,
            out_dim=config.dino_out_dim,
            hidden_dim=config.dino_hidden_dim,
            bottleneck_dim=config.dino_bottleneck_dim,
            norm_last_layer=config.dino_norm_last_layer,
            student_temperature=config.dino_student_temperature,
            teacher_temperature=config.dino_teacher_temperature,
            warmup_teacher_temperature=config.dino_warmup_teacher_temperature,
            warmup_teacher_temperature_steps=config.dino_warmup_teacher_temperature_steps,
            center_momentum=config.dino_center_momentum,
            centering=config.dino_centering,
            sinkhorn_iterations=config.dino_sinkhorn_iterations,
            patch_loss_weight=config.ibot_loss_weight if masked else 0.0,
            patch_out_dim=config.ibot_out_dim if config.ibot_separate_head else None,
            koleo_loss_weight=config.koleo_loss_weight if config.ssl_objective == "dinov2" else 0.0,
            patch_center_on_masked=config.ssl_objective == "dinov2",
        )
    raise ValueError(f"Unknown ssl_objective {config.ssl_objective!r}.")


__all__ = ["build_objective"]
