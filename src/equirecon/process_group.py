"""Leaving the process group at the end of a multi-process run.

`TrainingArguments` joins a process group (through accelerate) and nothing leaves it. A process that exits with the
group alive can abort after its work is done ("terminate called without an active exception", SIGABRT; the launcher
then stops the other processes with SIGTERM): one of gloo's worker threads still holds the tensors of the last
collective, and dropping them needs the GIL, which a thread that asks for it while the interpreter finalises cannot
get, so the thread is ended in the middle of a C++ frame that may not unwind (pytorch/pytorch#190489). Destroying the
group before the interpreter finalises joins those threads first. `torch.distributed` does not do it on its own
(the proposal to, pytorch/pytorch#179291, was abandoned), so the trainers register it here once a training run has
ended normally.
"""

from __future__ import annotations

import atexit
import gc
import weakref
from typing import Any

import torch
from transformers import Trainer, TrainerCallback

__all__ = ["LeaveProcessGroupAtExit"]

_finished_trainers: weakref.WeakSet[Trainer] = weakref.WeakSet()
_registered = False


class LeaveProcessGroupAtExit(TrainerCallback):
    """After `trainer.train()` returns, destroy the default process group when the interpreter exits.

    Evaluation, prediction and saving after `train()` still have the group. A run that raised leaves it alone:
    destroying a group while other processes may still be inside a collective with this one can hang instead of
    failing (pytorch/torchtitan#1342), and the launcher ends the processes of a failed run anyway."""

    def __init__(self, trainer: Trainer) -> None:
        self._trainer = weakref.ref(trainer)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        trainer = self._trainer()
        if trainer is not None:
            leave_process_group_at_exit(trainer)


def leave_process_group_at_exit(trainer: Trainer) -> None:
    """Destroy the default process group at interpreter exit, after releasing `trainer`'s hold on it."""
    global _registered
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return
    _finished_trainers.add(trainer)
    if not _registered:
        atexit.register(_leave_process_group)
        _registered = True


def _leave_process_group() -> None:
    if not torch.distributed.is_initialized():
        return  # the script left it itself
    # The DistributedDataParallel wrapper holds the group: a group still referenced is not destroyed, and its
    # threads keep running into the interpreter's finalisation.
    for trainer in list(_finished_trainers):
        trainer.model_wrapped = trainer.model
        trainer.accelerator.free_memory()
    gc.collect()
    torch.distributed.destroy_process_group()
