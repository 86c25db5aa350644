"""How long a run trained, across interruptions: every checkpoint records the training time that led to it, so a
run resumed from it knows (and says, in its log and its model card) that it was resumed, and its total time."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from ..reporting import duration

__all__ = ["TRAINING_TIME_FILE", "TrainingTimeCallback"]

logger = logging.getLogger(__name__)

#: Written into every checkpoint: `{"training_seconds": ...}`, the wall time of training up to that checkpoint.
TRAINING_TIME_FILE = "equirecon_training_time.json"


class TrainingTimeCallback(TrainerCallback):
    """Measures training wall time, adds the time recorded in the checkpoint a run resumes from, and writes the sum
    into every checkpoint it saves.

    After `train()`: `resumed` is None for a run that started at step 0, else `{"checkpoint", "step",
    "training_seconds_before"}` (None where the checkpoint has no record of its time, e.g. one written by plain
    `Trainer`), and `training_seconds` is the training time of this session plus the time before it."""

    def __init__(self) -> None:
        self.resumed: dict[str, Any] | None = None
        self._started: float | None = None
        self._seconds_before = 0.0

    @property
    def training_seconds(self) -> float:
        """Training time so far, the interrupted sessions included (as far as their checkpoints recorded it)."""
        session = time.monotonic() - self._started if self._started is not None else 0.0
        return self._seconds_before + session

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        self._started, self._seconds_before, self.resumed = time.monotonic(), 0.0, None
        if state.global_step == 0:
            return
        checkpoint = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
        try:
            before = float(json.loads((checkpoint / TRAINING_TIME_FILE).read_text())["training_seconds"])
        except (OSError, ValueError, KeyError, TypeError):
            before = None
        self._seconds_before = before or 0.0
        self.resumed = {"checkpoint": str(checkpoint), "step": state.global_step, "training_seconds_before": before}
        logger.info(
            "Resuming the run from %s: step %d of %d, after %s of training before the interruption.",
            checkpoint,
            state.global_step,
            state.max_steps,
            duration(before) if before is not None else "an unrecorded time",
        )

    def on_save(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        checkpoint = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
        if state.is_world_process_zero and checkpoint.is_dir():
            (checkpoint / TRAINING_TIME_FILE).write_text(json.dumps({"training_seconds": self.training_seconds}))
