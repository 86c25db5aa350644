# Copyright 2026 The equirecon developers. Licensed under the Apache License, Version 2.0.
"""The EMA teacher of the DINO family (DINO, iBOT, DINOv2): its schedules, the centring of its scores, the teacher
module and the life cycle `EquiReconForPreTraining` gets from `EquiReconTeacherMixin`.

The training loop computes the schedules and hands their values to the model (`equirecon.training.TeacherCallback`);
how the schedules, the centres and the EMA update fit together is described once, in `docs/architecture.md` (*The
DINO family*). The modeling classes it serves are passed in, not imported.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

# Encoder calls whose only use is the features (EMA teacher, local crops): whatever the config asks of the outputs.
FEATURES_ONLY = {"output_hidden_states": False, "output_attentions": False, "return_dict": True}


def resolve_steps(value: float, total_steps: int) -> int:
    """A length given as steps (`value >= 1`) or as a fraction of the run (`value < 1`), the convention of
    `TrainingArguments.warmup_steps`."""
    return int(value) if value >= 1 else math.ceil(value * total_steps)


def teacher_temperature_schedule(step: int, warmup_steps: int, start: float, end: float) -> float:
    """Teacher temperature at optimizer step `step`: linear from `start` to `end` over `warmup_steps` steps (both
    ends included), then `end`. Per step, as DINOv2 (`facebookresearch/dinov2:dinov2/train/train.py`,
    `CosineScheduler(base_value=end, final_value=end, warmup_iters=..., start_warmup_value=start)` in
    `dinov2/utils/utils.py`); DINO and iBOT step it per epoch (`main_dino.py: DINOLoss.teacher_temp_schedule`)."""
    if step >= warmup_steps:
        return end
    if warmup_steps == 1:
        return start
    return start + (end - start) * step / (warmup_steps - 1)


def teacher_momentum_schedule(step: int, total_steps: int, base: float, final: float = 1.0) -> float:
    """EMA momentum of the teacher after optimizer step `step` (0-based) of `total_steps`: a half cosine from `base`
    to `final` (`facebookresearch/dino:utils.py: cosine_scheduler(momentum_teacher, 1, epochs, niter_per_ep)`);
    `final` once the run is over."""
    if step >= total_steps:
        return final
    return final + 0.5 * (base - final) * (1 + math.cos(math.pi * step / total_steps))


def _all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(tensor)
    return tensor


@dataclass(frozen=True)
class TeacherSchedules:
    """The step-indexed schedules of a run of `total_steps` optimizer steps, from an `EquiReconConfig`: the EMA
    momentum (`teacher_momentum` → 1), the teacher temperature (`dino_warmup_teacher_temperature` →
    `dino_teacher_temperature` over `dino_warmup_teacher_temperature_steps`) and the frozen start of the student
    heads' last layers (`dino_freeze_last_layer_steps`). Lengths are steps, or fractions of the run if < 1."""

    total_steps: int
    base_momentum: float
    temperature_range: tuple[float, float]
    warmup_steps: int
    freeze_last_layer_steps: int

    @classmethod
    def from_config(cls, config: Any, total_steps: int) -> TeacherSchedules:
        return cls(
            total_steps=total_steps,
            base_momentum=config.teacher_momentum,
            temperature_range=(config.dino_warmup_teacher_temperature, config.dino_teacher_temperature),
            warmup_steps=resolve_steps(config.dino_warmup_teacher_temperature_steps, total_steps),
            freeze_last_layer_steps=resolve_steps(config.dino_freeze_last_layer_steps, total_steps),
        )

    def momentum(self, step: int) -> float:
        """The EMA momentum after optimizer step `step` (0-based)."""
        return teacher_momentum_schedule(step, self.total_steps, self.base_momentum)

    def temperature(self, step: int) -> float:
        """The teacher temperature during optimizer step `step` (0-based)."""
        return teacher_temperature_schedule(step, self.warmup_steps, *self.temperature_range)

    def freezes_last_layer(self, step: int) -> bool:
        """Whether the student heads' last layers get no update at optimizer step `step` (0-based)."""
        return step < self.freeze_last_layer_steps


class TeacherCentering(nn.Module):
    """The EMA centre that DINO subtracts from the teacher's scores against collapse:
    `center ← momentum·center + (1 − momentum)·mean of the step's teacher scores` over all processes
    (`facebookresearch/dino:main_dino.py: DINOLoss.update_center`). A persistent buffer: it is saved with the model
    and a resumed run continues from it.

    The centre moves once per optimizer step, from the whole step's batch, as upstream's: `accumulate` adds each
    micro-batch's scores, and `step` sums them over all processes and applies their mean. Under gradient
    accumulation every micro-batch of a step is centred by the same centre, and the step's batch is the union of its
    micro-batches. Neither method waits for the device: the forward holds no collective and no host sync, and every
    process calls `step` once per optimizer step (`update_teacher`). The pending sums are plain tensors, not
    buffers, so they are neither saved nor broadcast by DDP; they are empty between optimizer steps, where
    checkpoints are taken."""

    def __init__(self, dim: int, momentum: float):
        super().__init__()
        self.momentum = momentum
        self.register_buffer("center", torch.zeros(1, dim))
        self._pending: torch.Tensor | None = None  # (dim + 1,): the step's summed scores, then their count

    def forward(self, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
        """Centred and sharpened teacher probabilities, `softmax((logits − center) / temperature)`."""
        return F.softmax((teacher_logits.float() - self.center) / temperature, dim=-1)

    @torch.no_grad()
    def accumulate(self, teacher_logits: torch.Tensor) -> None:
        """Add this micro-batch's teacher scores `(N, K)` to this process's pending sums."""
        total = torch.cat([teacher_logits.float().sum(dim=0), teacher_logits.new_full((1,), len(teacher_logits))])
        total = total.float()
        self._pending = total if self._pending is None else self._pending + total

    def discard(self) -> None:
        """Forget the scores accumulated since the last step."""
        self._pending = None

    @torch.no_grad()
    def step(self) -> None:
        """Move the centre towards the mean of the scores accumulated since the last step on all processes, and clear
        them. A step without any score (no masked token anywhere) leaves the centre where it is."""
        pending, self._pending = self._pending, None
        if pending is None:
            return
        pending = _all_reduce_sum(pending)
        count = pending[-1:]
        batch_center = (pending[:-1] / count.clamp_min(1)).unsqueeze(0).to(self.center.device)
        moved = self.center * self.momentum + batch_center * (1 - self.momentum)
        self.center.copy_(torch.where(count.to(self.center.device) > 0, moved, self.center))


@torch.no_grad()
def sinkhorn_knopp(teacher_logits: torch.Tensor, temperature: float, num_iterations: int = 3) -> torch.Tensor:
    """Sinkhorn-Knopp centring of teacher scores (N, K) → assignments (N, K) whose rows sum to 1 and whose prototype
    totals are equalised over the global batch (DINOv2, after SwAV: `facebookresearch/dinov2:dinov2/loss/
    dino_clstoken_loss.py: sinkhorn_knopp_teacher`). Sums span all processes. The global maximum is subtracted before
    the exponential, which the first normalisation cancels, so large scores cannot overflow."""
    logits = teacher_logits.float() / temperature
    maximum = logits.max() if logits.numel() else logits.new_zeros(())
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(maximum, op=dist.ReduceOp.MAX)
    assignments = torch.exp(logits - maximum).t()  # (K, N): prototypes × samples
    num_prototypes = assignments.shape[0]
    num_samples = _all_reduce_sum(logits.new_full((), assignments.shape[1]))
    assignments /= _all_reduce_sum(assignments.sum())
    for _ in range(num_iterations):
        assignments /= _all_reduce_sum(assignments.sum(dim=1, keepdim=True))  # each prototype gets 1/K
        assignments /= num_prototypes
        assignments /= assignments.sum(dim=0, keepdim=True)  # each sample gets 1/N
        assignments /= num_samples
    return (assignments * num_samples).t()


def is_fully_sharded(module: nn.Module) -> bool:
    """Whether FSDP2 (`torch.distributed.fsdp.fully_shard`, what accelerate and Trainer use by default) wraps `module`."""
    if not torch.distributed.is_available():
        return False
    from torch.distributed.fsdp import FSDPModule

    return isinstance(module, FSDPModule)


class EquiReconTeacher(nn.Module):
    """The EMA teacher of the DINO family: an `EquiReconModel` and prototype heads shaped like the student's, updated
    only by `EquiReconForPreTraining.update_teacher`.

    Its parameters never require gradients, so DDP leaves them out of gradient synchronisation (DDP reduces only
    parameters with `requires_grad`) and the Trainer's optimizer never sees them, while DDP still broadcasts them
    from rank 0 when it wraps the model, so every process starts with the same teacher. It always runs in eval
    mode (no dropout or drop path, as the reference teachers). `initialized` records whether the weights have been
    copied from the student: a teacher absent from a checkpoint (a student-only or encoder-only start) is copied
    before first use instead of starting from random weights."""

    def __init__(self, encoder: nn.Module, heads: nn.Module):
        super().__init__()
        self.equirecon = encoder
        self.heads = heads
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))
        self._known_copied = False
        self.requires_grad_(False)

    def train(self, mode: bool = True) -> EquiReconTeacher:
        return super().train(False)

    def is_copied(self) -> bool:
        """`initialized`, read from the device until it is true and then remembered until a state dict is loaded, so
        that a training step does not wait for the device (nor break a `torch.compile` graph) on it."""
        if not self._known_copied:
            self._known_copied = bool(self.initialized)
        return self._known_copied

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        self._known_copied = False  # the loaded flag decides
        super()._load_from_state_dict(*args, **kwargs)


class EquiReconTeacherMixin:
    """The teacher's life cycle, for `EquiReconForPreTraining` (whose `teacher`, `equirecon`, `ssl_objective` and
    `config` it reads): the copy from the student, the EMA update with a given momentum, the temperature and the
    last-layer freeze the training loop schedules, and the distillation loss."""

    def _freeze_again(self) -> None:
        """After `from_pretrained` (`EquiReconPreTrainedModel`): the loaded teacher gets no gradients."""
        if self.teacher is not None:
            self.teacher.requires_grad_(False)

    def _student_parts(self) -> list[nn.Module]:
        """The student modules the teacher mirrors, in the order of `teacher.equirecon`, `teacher.heads`."""
        return [self.equirecon, self.ssl_objective.heads]

    def _teacher_parts(self) -> list[nn.Module]:
        return [self.teacher.equirecon, self.teacher.heads]

    def _require_teacher(self) -> EquiReconTeacher:
        if self.teacher is None:
            raise ValueError(
                f"ssl_objective {self.config.ssl_objective!r} has no EMA teacher; only the DINO family "
                "('dino', 'ibot', 'dinov2') does."
            )
        return self.teacher

    def _paired_tensors(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(student, teacher) pairs of the tensors the teacher mirrors, as stored (no copy). Under FSDP2 (`fully_shard`)
        both are DTensors sharded alike, on dim 0 over the same mesh whichever FSDP group holds them, so each process
        pairs its own shards and the teacher's updates need no communication."""
        pairs = []
        for student_part, teacher_part in zip(self._student_parts(), self._teacher_parts(), strict=True):
            student_state = student_part.state_dict()
            pairs.extend((student_state[name], tensor) for name, tensor in teacher_part.state_dict().items())
        return pairs

    @torch.no_grad()
    def reset_teacher(self) -> None:
        """Copy the student's encoder and heads into the teacher (the start of DINO training). The copy is in place,
        tensor by tensor, so that it also works on a model sharded with FSDP2, between steps."""
        teacher = self._require_teacher()
        for student_tensor, teacher_tensor in self._paired_tensors():
            teacher_tensor.copy_(student_tensor)
        teacher.initialized.fill_(True)
        teacher._known_copied = True

    def ensure_teacher_initialized(self) -> None:
        """Copy the student into a teacher that has not been copied yet (a fresh model; a loaded checkpoint keeps its
        teacher). `EquiReconTrainer` calls it at the start of training, before any forward: a model sharded with FSDP
        cannot make the copy inside its forward, where the parameters are gathered."""
        if not self._require_teacher().is_copied():
            self.reset_teacher()

    @torch.no_grad()
    def update_teacher(self, momentum: float) -> None:
        """The EMA update after an optimizer step: `teacher ← m·teacher + (1 − m)·student` with `m = momentum`, the
        training loop's schedule (`TeacherSchedules.momentum`, as `facebookresearch/dinov2:dinov2/train/train.py`
        hands `update_teacher` its momentum; `facebookresearch/dino:main_dino.py`, "EMA update for the teacher"), one
        fused update per dtype as `dinov2/train/ssl_meta_arch.py: update_teacher`. Integer buffers are copied. The
        objective's centres move here too, from the scores of every micro-batch of the step. On a model sharded with
        FSDP2 each process updates its own shards."""
        self.ensure_teacher_initialized()
        self.ssl_objective.step_centres()
        teacher_tensors: dict[torch.dtype, list[torch.Tensor]] = {}
        student_tensors: dict[torch.dtype, list[torch.Tensor]] = {}
        for student_tensor, teacher_tensor in self._paired_tensors():
            if teacher_tensor.is_floating_point():
                teacher_tensors.setdefault(teacher_tensor.dtype, []).append(teacher_tensor)
                student_tensors.setdefault(teacher_tensor.dtype, []).append(student_tensor.to(teacher_tensor.dtype))
            else:
                teacher_tensor.copy_(student_tensor)
        for dtype, tensors in teacher_tensors.items():
            torch._foreach_mul_(tensors, momentum)
            torch._foreach_add_(tensors, student_tensors[dtype], alpha=1 - momentum)

    def set_teacher_temperature(self, temperature: float) -> None:
        """The teacher's softmax temperature for the coming forwards (`TeacherSchedules.temperature`; the training
        loop sets it before each optimizer step, as dinov2's hands its loss `teacher_temp`)."""
        self._require_teacher()
        self.ssl_objective.set_teacher_temperature(temperature)

    def cancel_last_layer_gradients(self) -> None:
        """Drop the gradients of the student heads' last layers (DINO's `cancel_gradients_last_layer`,
        `facebookresearch/dino:utils.py`; DINOv2 sets their learning rate to 0 instead, the same update). The
        training loop calls it between backward and the optimizer step while `TeacherSchedules.freezes_last_layer`."""
        self._require_teacher()
        for layer in self.ssl_objective.last_layers():
            for parameter in layer.parameters():
                parameter.grad = None

    def export_teacher(self) -> nn.Module:
        """The teacher's encoder and head as a stand-alone `EquiReconModel` (on the teacher's device, eval mode),
        e.g. to evaluate or `save_pretrained` it as DINO does."""
        self.ensure_teacher_initialized()
        config = type(self.config).from_dict(self.config.to_dict())
        model = type(self.teacher.equirecon)(config)
        model.load_state_dict(self.teacher.equirecon.state_dict())
        return model.to(self.teacher.initialized.device).eval()

    def _distillation_loss(
        self,
        views: torch.Tensor,
        invariant: torch.Tensor,
        bool_masked_pos: torch.Tensor | None,
        local_pixel_values: torch.Tensor | None,
    ) -> torch.Tensor:
        """The DINO-family loss: the teacher encodes the unmasked global views without gradient, the student its
        local crops (a second encoder call: they have another size), and the objective compares."""
        if not self._require_teacher().is_copied() and is_fully_sharded(self):
            raise RuntimeError(
                "The EMA teacher of a model sharded with FSDP must be copied from the student before its first forward "
                "(`ensure_teacher_initialized()`, as EquiReconTrainer does at the start of training): inside the "
                "forward the parameters are gathered, and the copy would be lost."
            )
        self.ensure_teacher_initialized()
        with torch.no_grad():
            teacher_invariant = self.teacher.equirecon(views, **FEATURES_ONLY).invariant_embeds
        local_cls = None
        if local_pixel_values is not None:
            batch_size, num_crops = local_pixel_values.shape[:2]
            local = self.equirecon(local_pixel_values.flatten(0, 1), interpolate_pos_encoding=True, **FEATURES_ONLY)
            local_cls = local.invariant_embeds[:, 0].unflatten(0, (batch_size, num_crops)).transpose(0, 1)
        masks = bool_masked_pos.bool().transpose(0, 1) if bool_masked_pos is not None else None
        return self.ssl_objective(
            invariant, teacher_invariant.unflatten(0, invariant.shape[:2]), self.teacher.heads, masks, local_cls
        )


__all__ = [
    "EquiReconTeacher",
    "EquiReconTeacherMixin",
    "TeacherCentering",
    "TeacherSchedules",
    "resolve_steps",
    "sinkhorn_knopp",
    "teacher_momentum_schedule",
    "teacher_temperature_schedule",
]
