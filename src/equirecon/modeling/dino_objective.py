# Copyright 2026 The equirecon developers. Licensed under the Apache License, Version 2.0.
"""The DINO family's host objective (DINO, iBOT, DINOv2): self-distillation from an EMA teacher.

The objective owns the student's prototype heads, the teacher's centres and the teacher temperature; the teacher's
weights live in the model (`teacher.py`).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from .dino_heads import DINOHeads
from .dino_losses import dino_cls_loss, koleo_loss, masked_patch_loss, masked_token_index
from .ssl_objective import SSLObjective
from .teacher import TeacherCentering, resolve_steps, sinkhorn_knopp, teacher_temperature_schedule


class DINOObjective(SSLObjective):
    """Self-distillation with an EMA teacher: DINO (CLS tokens), iBOT (+ masked patch tokens) and DINOv2 (+ KoLeo on
    the student's CLS features and, optionally, Sinkhorn-Knopp centring). Reads the per-token invariant features of
    both views, from the student and from the teacher (which sees the views unmasked).

    The teacher's temperature is the one `set_teacher_temperature` last set; before one is set, the run's length is
    unknown, so a warm-up given as a fraction is over. The centres collect the teacher's scores in training mode only
    and move in `step_centres`, with the teacher's EMA update (`docs/architecture.md`, *The DINO family*).

    Args:
        patch_loss_weight: weight of the masked-patch term; 0 is DINO.
        koleo_loss_weight: weight of KoLeo, summed over the two views as DINOv2 does; 0 for DINO/iBOT.
        centering: "centering" (EMA centre) or "sinkhorn_knopp" (DINOv2's option; no centre is kept).
        patch_out_dim: prototypes of a separate patch head; None shares the CLS head.
        patch_center_on_masked: centre the patch scores on the masked tokens (DINOv2) instead of all tokens (iBOT).
    """

    needs_teacher = True

    def __init__(
        self,
        input_dim: int,
        num_prefix_tokens: int,
        out_dim: int,
        hidden_dim: int,
        bottleneck_dim: int,
        norm_last_layer: bool,
        student_temperature: float,
        teacher_temperature: float,
        warmup_teacher_temperature: float,
        warmup_teacher_temperature_steps: float,
        center_momentum: float,
        centering: str = "centering",
        sinkhorn_iterations: int = 3,
        patch_loss_weight: float = 0.0,
        patch_out_dim: int | None = None,
        koleo_loss_weight: float = 0.0,
        patch_center_on_masked: bool = False,
    ):
        super().__init__()
        if centering not in ("centering", "sinkhorn_knopp"):
            raise ValueError(f"centering must be 'centering' or 'sinkhorn_knopp', got {centering!r}.")
        self.num_prefix_tokens = num_prefix_tokens
        self.heads = DINOHeads(
            input_dim,
            out_dim,
            hidden_dim,
            bottleneck_dim,
            norm_last_layer,
            patch_out_dim=patch_out_dim if patch_loss_weight > 0 else None,
        )
        self.student_temperature = student_temperature
        self.teacher_temperature_range = (warmup_teacher_temperature, teacher_temperature)
        self.warmup_teacher_temperature_steps = warmup_teacher_temperature_steps
        self.centering = centering
        self.sinkhorn_iterations = sinkhorn_iterations
        self.patch_loss_weight = patch_loss_weight
        self.koleo_loss_weight = koleo_loss_weight
        self.patch_center_on_masked = patch_center_on_masked
        self.cls_centering = TeacherCentering(out_dim, center_momentum)
        self.patch_centering = (
            TeacherCentering(self.heads.patch_head.last_layer.weight.shape[0], center_momentum)
            if patch_loss_weight > 0
            else None
        )
        # Before the training loop sets one, the run's length is unknown: a warm-up given as a fraction is over.
        self._teacher_temperature = teacher_temperature_schedule(
            0, resolve_steps(warmup_teacher_temperature_steps, 0), warmup_teacher_temperature, teacher_temperature
        )

    @property
    def uses_masks(self) -> bool:
        return self.patch_loss_weight > 0

    def set_teacher_temperature(self, temperature: float) -> None:
        """The teacher temperature for the coming forwards (the training loop's `TeacherSchedules.temperature`)."""
        self._teacher_temperature = temperature

    @property
    def centerings(self) -> list[TeacherCentering]:
        return [centering for centering in (self.cls_centering, self.patch_centering) if centering is not None]

    def step_centres(self) -> None:
        """Apply the centre updates accumulated over this optimizer step's micro-batches (called with the EMA update
        of the teacher, once per optimizer step)."""
        for centering in self.centerings:
            centering.step()

    def discard_pending_centres(self) -> None:
        """Forget scores collected since the last optimizer step (forwards outside a training step)."""
        for centering in self.centerings:
            centering.discard()

    def teacher_temperature(self) -> float:
        return self._teacher_temperature

    def make_teacher_heads(self) -> DINOHeads:
        """A copy of the student's heads for the teacher (its weights are set from the student before first use)."""
        return copy.deepcopy(self.heads)

    def last_layers(self) -> list[nn.Module]:
        """The student's weight-normalised output layers, frozen during the first steps as DINO does."""
        heads = [self.heads.cls] + ([self.heads.patch] if self.heads.patch is not None else [])
        return [head.last_layer for head in heads]

    def _teacher_probs(self, logits: torch.Tensor, centering: TeacherCentering, temperature: float) -> torch.Tensor:
        if self.centering == "sinkhorn_knopp":
            return sinkhorn_knopp(logits, temperature, self.sinkhorn_iterations)
        probs = centering(logits, temperature)
        if self.training:
            centering.accumulate(logits)
        return probs

    def forward(
        self,
        student_tokens: torch.Tensor,
        teacher_tokens: torch.Tensor,
        teacher_heads: DINOHeads,
        bool_masked_pos: torch.Tensor | None = None,
        student_local_cls: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """`student_tokens` and `teacher_tokens` (2, B, T, d_inv): per-token invariant features, prefix tokens
        first, of the two global views; `bool_masked_pos` (2, B, N): the patch tokens masked in the student's
        global views (iBOT, DINOv2); `student_local_cls` (M, B, d_inv): the student's CLS features of M local crops
        (multi-crop), distilled from the teacher's global views like the other global view."""
        if self.uses_masks and bool_masked_pos is None:
            raise ValueError("The masked-patch loss needs `bool_masked_pos` (2, batch, num_patches).")
        temperature = self.teacher_temperature()
        student_cls, teacher_cls = student_tokens[:, :, 0], teacher_tokens[:, :, 0]
        with torch.no_grad():
            teacher_logits = teacher_heads.cls(teacher_cls).float()
            teacher_probs = self._teacher_probs(teacher_logits.flatten(0, 1), self.cls_centering, temperature)
        all_cls = student_cls if student_local_cls is None else torch.cat([student_cls, student_local_cls])
        loss = dino_cls_loss(self.heads.cls(all_cls), teacher_probs.view_as(teacher_logits), self.student_temperature)
        if self.koleo_loss_weight > 0:
            loss = loss + self.koleo_loss_weight * sum(koleo_loss(view) for view in student_cls)
        if self.uses_masks:
            loss = loss + self.patch_loss_weight * self._patch_loss(
                student_tokens[:, :, self.num_prefix_tokens :],
                teacher_tokens[:, :, self.num_prefix_tokens :],
                teacher_heads,
                bool_masked_pos.bool(),
                temperature,
            )
        return loss

    def _patch_loss(
        self,
        student_patches: torch.Tensor,
        teacher_patches: torch.Tensor,
        teacher_heads: DINOHeads,
        masks: torch.Tensor,
        temperature: float,
    ) -> torch.Tensor:
        index = masked_token_index(masks)
        with torch.no_grad():
            if self.patch_center_on_masked or self.centering == "sinkhorn_knopp":
                teacher_logits = teacher_heads.patch_head(teacher_patches[index]).float()
                teacher_probs = self._teacher_probs(teacher_logits, self.patch_centering, temperature)
            else:  # iBOT centres on every patch token, masked or not
                teacher_logits = teacher_heads.patch_head(teacher_patches).float()
                teacher_probs = self.patch_centering(teacher_logits[index], temperature)
                if self.training:
                    self.patch_centering.accumulate(teacher_logits.flatten(0, -2))
        student_logits = self.heads.patch_head(student_patches[index])
        return masked_patch_loss(student_logits, teacher_probs, masks, self.student_temperature)


__all__ = ["DINOObjective"]
