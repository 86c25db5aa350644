"""The EMA teacher's share of training: a `TrainerCallback` that drives the DINO family's schedules from the Trainer's
`global_step`, once per optimizer step (`set_teacher_temperature`, `cancel_last_layer_gradients`,
`update_teacher(momentum)`). Why once per optimizer step, and how a resumed run continues exactly:
`docs/architecture.md` (*The DINO family*).
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments
from transformers.utils import logging

from ..modeling.teacher import TeacherSchedules

logger = logging.get_logger(__name__)

__all__ = ["TeacherCallback"]


class TeacherCallback(TrainerCallback):
    """Per optimizer step of a model with an EMA teacher: set the step for the teacher-temperature schedule before
    the first micro-batch, drop the student heads' last-layer gradients during their frozen start just before the
    optimizer steps, and update the teacher right after it (`EquiReconTrainer` adds this callback itself). A fresh
    teacher is copied from the student when training begins, after the model is wrapped (and sharded, under FSDP)
    and a resumed checkpoint is loaded, and before the first forward."""

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, model: Any = None, **kwargs: Any
    ) -> None:
        if _is_fsdp1(model):
            raise ValueError(
                "An EMA teacher needs FSDP2 (`fsdp_version: 2` in the accelerate config, transformers' default): "
                "FSDP1 shards flat parameters per unit, so a process's teacher shard does not hold the rows of its "
                "student shard."
            )
        model.ensure_teacher_initialized()
        model.ssl_objective.discard_pending_centres()  # scores of forwards run before training never moved them
        if args.gradient_accumulation_steps > 1 and getattr(model.config, "dino_centering", None) == "sinkhorn_knopp":
            logger.warning(
                "gradient_accumulation_steps=%d with Sinkhorn-Knopp centring: each micro-batch's teacher scores are "
                "balanced over that micro-batch alone (on all processes), not over the step's whole batch as in "
                "DINOv2. Prefer a larger per-device batch where memory allows.",
                args.gradient_accumulation_steps,
            )

    def on_step_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, model: Any = None, **kwargs: Any
    ) -> None:
        model.set_teacher_temperature(_schedules(model, state).temperature(state.global_step))

    def on_pre_optimizer_step(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, model: Any = None, **kwargs: Any
    ) -> None:
        if _schedules(model, state).freezes_last_layer(state.global_step):
            model.cancel_last_layer_gradients()

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, model: Any = None, **kwargs: Any
    ) -> None:
        # global_step already counts the step just taken; the momentum schedule is indexed from 0.
        model.update_teacher(_schedules(model, state).momentum(state.global_step - 1))


def _schedules(model: Any, state: TrainerState) -> TeacherSchedules:
    return TeacherSchedules.from_config(model.config, state.max_steps)


def _is_fsdp1(model: Any) -> bool:
    if not torch.distributed.is_available():
        return False
    from torch.distributed.fsdp import FullyShardedDataParallel

    return isinstance(model, FullyShardedDataParallel)
