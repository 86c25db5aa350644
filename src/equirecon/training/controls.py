"""The decoders' controls: answers to the reconstruction targets that know nothing of θ, scored with the same masked
MSE as the decoders on the same held-out pairs. Decoders that do not beat them have learnt nothing about the
in-between states.

- the copies: every target answered with view 2, with view 2 through a 5×5 box blur, or with view 1;
- the blends: every target k answered with a_k·v1 + b_k·v2 (and with the same blend of the blurred views), the best
  θ-free linear answer. (a_k, b_k) are fitted by least squares on the masked pixels of one half of the evaluation
  pairs and scored on the other half (cross-fitting: even and odd positions in the evaluation order), so no pair is
  answered with coefficients fitted on it.
"""

from __future__ import annotations

import torch
from torch import nn

from ..modeling.decoders import masked_mse

__all__ = [
    "BLEND_BASELINES",
    "BLURRED_COPY_KERNEL",
    "COPY_BASELINES",
    "blend_answers",
    "blend_statistics",
    "box_blur",
    "copy_answers",
    "copy_losses",
    "cross_fitted_coefficients",
]

COPY_BASELINES = ("copy_view2_loss", "copy_blurred_view2_loss", "copy_view1_loss")
"""Evaluation controls: the reconstruction loss of answering every target with view 2 itself, with view 2 through a
5×5 box blur, and with view 1, on the same pairs and masks. The blurred copy is the trivial answer a low-pass decoder
must beat (the targets lie between v2 and u, so an MSE-optimal guess that ignores θ is a smoothed v2)."""
BLEND_BASELINES = ("copy_blend_loss", "copy_blurred_blend_loss")
"""Evaluation controls: the reconstruction loss of the best per-k blend a_k·v1 + b_k·v2 of the two views, and of the
same blend of the blurred views, cross-fitted over the two halves of the evaluation pairs."""
BLURRED_COPY_KERNEL = 5
#: The evaluation pairs are cut in two halves, each answered with the blend fitted on the other.
NUM_HALVES = 2


def box_blur(images: torch.Tensor, size: int = BLURRED_COPY_KERNEL) -> torch.Tensor:
    """Mean over a `size`×`size` window (odd `size`), mirrored at the border so the image keeps its size."""
    radius = size // 2
    padded = nn.functional.pad(images, (radius, radius, radius, radius), mode="reflect")
    return nn.functional.avg_pool2d(padded, size, stride=1)


def copy_answers(first_view: torch.Tensor, transformed: torch.Tensor) -> dict[str, torch.Tensor]:
    """Each copy baseline's answer (B, C, H, W), the same for every target."""
    answers = (transformed, box_blur(transformed), first_view)
    return dict(zip(COPY_BASELINES, answers, strict=True))


def copy_losses(
    first_view: torch.Tensor, transformed: torch.Tensor, targets: torch.Tensor, masks: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Each copy baseline's masked MSE on the K targets (B, K, C, H, W), with the masks the decoders are scored with."""
    return {
        name: masked_mse(answer.unsqueeze(1).expand_as(targets), targets, masks)
        for name, answer in copy_answers(first_view, transformed).items()
    }


def blend_inputs(first_view: torch.Tensor, transformed: torch.Tensor) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """The two views each blend is made of: as they are, and through the blurred copy's box blur."""
    return {
        "copy_blend_loss": (first_view, transformed),
        "copy_blurred_blend_loss": (box_blur(first_view), box_blur(transformed)),
    }


def blend_statistics(
    first_view: torch.Tensor,
    transformed: torch.Tensor,
    targets: torch.Tensor,
    masks: torch.Tensor,
    halves: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The normal equations of the per-k blend over the valid pixels, summed per half of the pairs.

    Args:
        first_view, transformed: v1 and v2, (B, C, H, W).
        targets, masks: the K targets (B, K, C, H, W) and their validity masks (B, K, 1, H, W), 0 where a pixel or a
            whole pair does not count.
        halves: which half each pair belongs to, (B,) in {0, 1}.

    Returns:
        `gram` (2, K, 2, 2) and `moments` (2, K, 2): Σ m·x·xᵀ and Σ m·x·u with x = (v1, v2), per half and target.
    """
    views = torch.stack([first_view, transformed], dim=1).float()  # (B, 2, C, H, W)
    weights = masks.float().expand_as(targets)
    pixels = tuple(range(2, targets.ndim))
    gram = torch.stack(
        [
            torch.stack([(weights * views[:, i, None] * views[:, j, None]).sum(pixels) for j in (0, 1)], -1)
            for i in (0, 1)
        ],
        -2,
    )  # (B, K, 2, 2)
    moments = torch.stack([(weights * views[:, i, None] * targets.float()).sum(pixels) for i in (0, 1)], -1)
    membership = nn.functional.one_hot(halves.long(), NUM_HALVES).to(gram.dtype)  # (B, 2)
    return torch.einsum("bh,bkij->hkij", membership, gram), torch.einsum("bh,bki->hki", membership, moments)


def cross_fitted_coefficients(gram: torch.Tensor, moments: torch.Tensor) -> torch.Tensor:
    """(a_k, b_k) for each half, fitted by least squares on the *other* half: (2, K, 2). A singular system (v1 = v2,
    or no valid pixel) gets the minimum-norm solution."""
    return (torch.linalg.pinv(gram.flip(0)) @ moments.flip(0).unsqueeze(-1)).squeeze(-1)


def blend_answers(first_view: torch.Tensor, transformed: torch.Tensor, coefficients: torch.Tensor) -> torch.Tensor:
    """a_k·v1 + b_k·v2 for every pair and target, with per-pair coefficients (B, K, 2): (B, K, C, H, W)."""
    a, b = (coefficients[..., i, None, None, None].to(first_view.dtype) for i in (0, 1))
    return a * first_view.unsqueeze(1) + b * transformed.unsqueeze(1)


def blend_losses(
    first_view: torch.Tensor,
    transformed: torch.Tensor,
    targets: torch.Tensor,
    masks: torch.Tensor,
    halves: torch.Tensor,
    coefficients: dict[str, torch.Tensor],
) -> dict[str, torch.Tensor]:
    """Each blend's masked MSE on these pairs, every pair answered with the coefficients of its half (2, K, 2)."""
    losses = {}
    for name, (first, second) in blend_inputs(first_view, transformed).items():
        answers = blend_answers(first, second, coefficients[name][halves.long()])
        losses[name] = masked_mse(answers, targets, masks)
    return losses
