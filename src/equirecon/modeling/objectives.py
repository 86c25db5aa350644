# Copyright 2026 The equirecon developers. Licensed under the Apache License, Version 2.0.
"""Host SSL objectives, applied to the invariant part of the features.

Each objective is a small `nn.Module` owning its projector/expander (or prototype heads) and computing its loss from
the invariant features of the two views. Statistics (VICReg) and negatives (SimCLR) span the global batch: when
`torch.distributed` is initialised, embeddings are gathered with a differentiable all-gather, as the reference
implementations do. The DINO family (DINO, iBOT, DINOv2) distils an EMA teacher: the objective owns the student's
prototype heads, the teacher's centres and the temperature schedule; the teacher's weights live in the model.

Self-contained (torch only) so that it travels with `save_pretrained` as Hub custom code.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from .teacher import TeacherCentering, resolve_steps, sinkhorn_knopp, teacher_temperature_schedule


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


class SSLObjective(nn.Module):
    """Base of the host objectives: the scalar loss of the two views' pooled invariant features (B, d_inv) each
    (the mean of the patch tokens' z_inv). Objectives with `needs_teacher` (the DINO family) take per-token
    features of the student and of the EMA teacher instead."""

    needs_teacher: bool = False
    uses_masks: bool = False

    def forward(self, first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


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


# ---------------------------------------------------------------------------------------------- DINO family


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
    L2-normalised embeddings and nn(i) the nearest other sample (`facebookresearch/dinov2:dinov2/loss/koleo_loss.py`)."""
    embeddings = F.normalize(embeddings.float(), p=2, dim=-1, eps=eps)
    with torch.no_grad():
        dots = embeddings @ embeddings.t()
        dots.fill_diagonal_(-1)
        neighbours = dots.argmax(dim=1)
    distances = F.pairwise_distance(embeddings, embeddings[neighbours], p=2, eps=eps)
    return -torch.log(distances + eps).mean()


class DINOObjective(SSLObjective):
    """Self-distillation with an EMA teacher: DINO (CLS tokens), iBOT (+ masked patch tokens) and DINOv2 (+ KoLeo on
    the student's CLS features and, optionally, Sinkhorn-Knopp centring). Reads the per-token invariant features of
    both views, from the student and from the teacher (which sees the views unmasked).

    The teacher's temperature is the one `set_teacher_temperature` last set (the training loop's
    `TeacherSchedules.temperature`, from `global_step` at every optimizer step, so a resumed run continues the
    schedule exactly). Before one is set the run's length is unknown: a warm-up given as a fraction is then over and
    the teacher uses its final temperature. The centres collect the teacher's scores in training mode only (evaluating
    does not change the training state) and move once per optimizer step, when `step_centres` is called with the
    teacher's EMA update.

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


def build_objective(config) -> SSLObjective:
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


__all__ = [
    "DINOHead",
    "DINOHeads",
    "DINOObjective",
    "SSLObjective",
    "SimCLRObjective",
    "VICRegObjective",
    "WeightNormalizedLinear",
    "build_objective",
    "dino_cls_loss",
    "distillation_cross_entropy",
    "gather_with_grad",
    "info_nce_loss",
    "koleo_loss",
    "masked_patch_loss",
    "masked_token_index",
    "vicreg_loss",
]
