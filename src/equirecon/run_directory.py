"""The output directory of a training run (`equirecon pretrain`, `equirecon finetune`): refuse, resume or replace
an earlier run, mark which command a run belongs to, and drop the optimizer state once it has finished.

A leaf module (besides :mod:`equirecon.argument_checks`), so `training` and `finetuning` apply the same rules."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .argument_checks import ArgumentError

__all__ = [
    "RUN_MARKER",
    "RUN_OUTPUTS",
    "RunOutputArguments",
    "check_output_dir",
    "checkpoints",
    "finish_run",
    "last_checkpoint",
    "start_run",
]


#: Written into an output directory when a run starts: which command it belongs to, so that only a run of the
#: same command resumes there.
RUN_MARKER = ".equirecon-run.json"
#: What a run writes besides checkpoints; `--overwrite_output_dir` removes them so one card never mixes two runs.
RUN_OUTPUTS = (
    "README.md",
    "equirecon_run.json",
    "equivariance_results.json",
    "reconstructions.png",
    "loss_curves.png",
    "training_log.json",
    "trainer_state.json",
    "all_results.json",
    "train_results.json",
    "eval_results.json",
)


@dataclass
class RunOutputArguments:
    """What a training command does with its output directory: refuse, resume or replace an earlier run, and what
    a finished run keeps. Mixed into each command's `TrainingArguments`."""

    overwrite_output_dir: bool = field(
        default=False,
        metadata={"help": "Replace the run already in --output_dir (its checkpoints and results are deleted)."},
    )
    resume_from_checkpoint: str | None = field(
        default=None,
        metadata={
            "help": "Continue an interrupted run of this command: `last` (the newest checkpoint-* in --output_dir) "
            "or a checkpoint directory. Ctrl-C prints the exact command."
        },
    )
    keep_checkpoints: bool = field(
        default=False,
        metadata={
            "help": "Keep the checkpoint-* directories (optimizer state, for resuming) once the run has finished; "
            "by default only the final model stays."
        },
    )


def checkpoints(path: str | os.PathLike, *, complete: bool = False) -> list[Path]:
    """The `checkpoint-N` directories of a run, oldest first; with `complete`, only those whose trainer state was
    written (Ctrl-C can land while a checkpoint is being saved)."""
    directory = Path(path)
    found = [p for p in directory.glob("checkpoint-*") if p.is_dir() and p.name.split("-")[-1].isdigit()]
    if complete:
        found = [p for p in found if (p / "trainer_state.json").is_file()]
    return sorted(found, key=lambda p: int(p.name.split("-")[-1]))


def last_checkpoint(output_dir: str, resume: str | None) -> str | None:
    """`--resume_from_checkpoint last` → the newest checkpoint-* of `output_dir`; any other value as given."""
    if resume != "last":
        return resume
    found = checkpoints(output_dir, complete=True)
    return str(found[-1]) if found else None


def check_output_dir(path: str | None, *, command: str, resume: str | None = None, overwrite: bool = False) -> None:
    """Fail now, not after hours of training, if the run cannot be written or would mix with another run.

    Writes nothing: an empty or absent directory is fine when it can be created; a non-empty one must be a
    resumable run of `command` (with `--resume_from_checkpoint`) or be replaced (`--overwrite_output_dir`)."""
    if not path:
        raise ArgumentError("--output_dir is required")
    directory = Path(path)
    if directory.exists() and not directory.is_dir():
        raise ArgumentError(f"--output_dir {path} is a file")
    existing = directory
    while not existing.exists():
        existing = existing.parent
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ArgumentError(f"--output_dir {path} is not writable ({existing} is not)")
    if resume is not None and resume != "last" and not Path(resume).is_dir():
        raise ArgumentError(f"--resume_from_checkpoint {resume}: no such checkpoint directory")
    contents = [p for p in directory.iterdir() if p.name != RUN_MARKER] if directory.is_dir() else []
    if resume == "last" and not checkpoints(directory, complete=True):
        raise ArgumentError(
            f"--resume_from_checkpoint last: no checkpoint-* in {path} to resume from. A finished run keeps only its "
            "final model (--keep_checkpoints keeps its checkpoints); to train it further, start a new run from it: "
            f"--model_name_or_path {path} --output_dir ANOTHER_DIR"
        )
    if not contents or overwrite:
        return
    if resume is not None:
        marker = _read_marker(directory)
        if marker.get("command") != command:
            found = f"`equirecon {marker['command']}`" if marker.get("command") else "an unknown program"
            raise ArgumentError(f"--output_dir {path} holds a run of {found}, not of `equirecon {command}`")
        return
    names = ", ".join(sorted(p.name for p in contents)[:3]) + (", ..." if len(contents) > 3 else "")
    hint = " or --resume_from_checkpoint last to continue it" if checkpoints(directory) else ""
    raise ArgumentError(
        f"--output_dir {path} is not empty ({names}); pass --overwrite_output_dir to replace it{hint}, or choose "
        "another directory"
    )


def start_run(path: str, *, command: str, overwrite: bool = False) -> None:
    """Mark `path` as a run of `command`; with `overwrite`, first delete what an earlier run left there."""
    directory = Path(path)
    if overwrite and directory.is_dir():
        for checkpoint in checkpoints(directory):
            shutil.rmtree(checkpoint)
        for name in RUN_OUTPUTS:
            (directory / name).unlink(missing_ok=True)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / RUN_MARKER).write_text(json.dumps({"command": command}))


def finish_run(path: str, *, keep_checkpoints: bool = False) -> None:
    """A finished run keeps its final model; its checkpoints (optimizer state, 3× the model) go unless kept."""
    if not keep_checkpoints:
        for checkpoint in checkpoints(path):
            shutil.rmtree(checkpoint)


def _read_marker(directory: Path) -> dict[str, Any]:
    try:
        return json.loads((directory / RUN_MARKER).read_text())
    except (OSError, ValueError):
        return {}
