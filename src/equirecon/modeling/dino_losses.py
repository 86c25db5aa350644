# Copyright 2026 The equirecon developers. Licensed under the Apache License, Version 2.0.
"""The DINO family's loss terms, as functions of the prototype scores: CLS-token distillation (DINO), masked-patch
distillation (iBOT, DINOv2) and the KoLeo regulariser (DINOv2), each matching the reference implementation it cites.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def distillation_cross_entropy(
    student_logits: torch.Tensor, teacher_probs: torch.Tensor, student_temperature: float
) -> torch.Tensor:
    """Per-sample cross-entropy `−Σ_k t_k · log softmax(s / τ_s)_k` over the last dimension."""
    return -(teacher_probs * F.log_softmax(student_logits.float() / student_temperature, dim=-1)).sum(dim=-1)


def dino_cls_loss(
    student_logits: torch.Tensor, teacher_probs: torch.Tensor, student_temperature: float
) -> torch.Tensor:
    """DINO's loss over views: `student_logits` (V, B, K) of V views, `teacher_probs` (G, B, K) of the G global views,
    G ≤ V, view i of both the same crop. The mean over every pair (teacher view q, student view v ≠ q) of the batch
    mean of the cross-entropy (`facebookresearch/dino:main_dino.py: DINOLoss.forward`)."""
    terms = [
        distillation_cross_entropy(student_logits[v], teacher_probs[q], student_temperature).mean()
        for q in range(teacher_probs.shape[0])
        for v in range(student_logits.shape[0])
        if v != q
    ]
    return torch.stack(terms).mean()


def masked_token_index(bool_masked_pos: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The indices of the masked tokens of `bool_masked_pos` (..., N), one tensor per dimension, in its order:
    `tokens[masked_token_index(masks)]` is `tokens[masks]`, gathered without copying `tokens` whole.

    The one step of the masked-patch loss whose size depends on the data (a host sync on an accelerator; traced by
    `torch.compile` with `torch._dynamo.config.capture_dynamic_output_shape_ops`). Gathering only these tokens keeps
    the prototype heads off the unmasked ones, which the loss ignores anyway."""
    return bool_masked_pos.nonzero(as_tuple=True)


def masked_patch_loss(
    student_logits: torch.Tensor,
    teacher_probs: torch.Tensor,
    bool_masked_pos: torch.Tensor,
    student_temperature: float,
) -> torch.Tensor:
    """iBOT's masked-patch distillation. `student_logits` and `teacher_probs` (M, K) are the scores of the M masked
    tokens of `bool_masked_pos` (..., N) in its order; each image's cross-entropy is averaged over its masked tokens
    (an image without any counts 0) and the result averaged over all images (`facebookresearch/dinov2:dinov2/loss/
    ibot_patch_loss.py: forward_masked`, the same value as iBOT's `main_ibot.py: iBOTLoss` loss2). M is read from
    the scores' shape, so no step here waits for the device."""
    masks = bool_masked_pos.flatten(0, -2)
    counts = masks.sum(dim=-1)
    image_of_token = torch.repeat_interleave(counts, output_size=len(student_logits))
    weights = (1.0 / counts.clamp(min=1)).to(student_logits.device)[image_of_token]
    cross_entropy = distillation_cross_entropy(student_logits, teacher_probs, student_temperature)
    return (cross_entropy * weights).sum() / masks.shape[0]


def koleo_loss(embeddings: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """KoLeo regulariser (Sablayrolles et al., 2019) on a batch (B, D): `−mean log ‖x̂_i − x̂_nn(i)‖`, x̂ the
    L2-normalised embeddings and nn(i) the nearest other sample
    (`facebookresearch/dinov2:dinov2/loss/koleo_loss.py`)."""
    embeddings = F.normalize(embeddings.float(), p=2, dim=-1, eps=eps)
    with torch.no_grad():
        dots = embeddings @ embeddings.t()
        dots.fill_diagonal_(-1)
        neighbours = dots.argmax(dim=1)
    distances = F.pairwise_distance(embeddings, embeddings[neighbours], p=2, eps=eps)
    return -torch.log(distances + eps).mean()


__all__ = ["dino_cls_loss", "distillation_cross_entropy", "koleo_loss", "masked_patch_loss", "masked_token_index"]
