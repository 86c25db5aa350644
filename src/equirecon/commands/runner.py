"""What every `equirecon` command runs in: one set-up (:func:`setup`) and one wrapper (:func:`run_command`) that
turns a bad argument into one line and exit status 2, and Ctrl-C into exit status 130 with the command that
resumes the run."""

from __future__ import annotations

import logging
import os
import shlex
import shutil
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..argument_checks import ArgumentError
from ..host_memory import keep_freed_host_memory
from ..run_directory import checkpoints

__all__ = ["run_command", "setup"]


def setup(*, log_format: str = "%(asctime)s %(levelname)s %(name)s: %(message)s") -> None:
    """The set-up of every command: albumentations stays offline and quiet (2.0.8 checks PyPI for updates on
    import), freed host memory stays in the process (:mod:`equirecon.host_memory`), and INFO logs go to stderr
    unless logging is already configured."""
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    keep_freed_host_memory()
    if not logging.getLogger().handlers:
        logging.basicConfig(format=log_format, level=logging.INFO, stream=sys.stderr)


def run_command(
    command: str, argv: Sequence[str] | None, parse: Callable[[list[str]], tuple], run: Callable[..., Any]
) -> int:
    """`equirecon COMMAND`: set up, parse `argv` (default: `sys.argv[1:]`), run.

    A bad argument is one line on stderr and exit status 2; `--help` exits 0; Ctrl-C exits 130 with where the last
    checkpoint is and the command that resumes from it. A run that fails before its first checkpoint removes the
    output directory it created."""
    setup()
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        arguments = parse(argv)
    except SystemExit as exit_:  # --help
        return int(exit_.code or 0)
    except ArgumentError as error:
        print(f"equirecon {command}: error: {error}", file=sys.stderr)
        return 2
    output_dir = next((a.output_dir for a in arguments if getattr(a, "output_dir", None)), None)
    created = output_dir is not None and not Path(output_dir).exists()
    try:
        run(*arguments)
    except BaseException as error:
        if created and not checkpoints(output_dir):
            shutil.rmtree(output_dir, ignore_errors=True)  # nothing to resume: leave no half-written directory
        if isinstance(error, ArgumentError):
            print(f"equirecon {command}: error: {error}", file=sys.stderr)
            return 2
        if isinstance(error, KeyboardInterrupt):
            print(f"equirecon {command}: interrupted. {_resume_hint(command, argv, output_dir)}", file=sys.stderr)
            return 130
        raise
    return 0


def _resume_hint(command: str, argv: list[str], output_dir: str | None) -> str:
    found = checkpoints(output_dir, complete=True) if output_dir else []
    if not found:
        return "No checkpoint had been written; nothing to resume."
    kept, skip = [], False
    for arg in argv:  # drop an earlier --resume_from_checkpoint X
        if skip or arg == "--resume_from_checkpoint":
            skip = not skip
            continue
        kept.append(arg)
    resume = shlex.join(["equirecon", command, *kept, "--resume_from_checkpoint", "last"])
    return f"Last checkpoint: {found[-1]}. Resume with:\n  {resume}"
