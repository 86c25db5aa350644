"""What every `equirecon` command shares: one argument style (`HfArgumentParser` dataclasses, JSON/YAML recipes
with `--config FILE`, `--config_overrides`, help with the command's own options first), one-line argument errors,
the output-directory rules (refuse, resume or replace a run; drop optimizer state when done), and one set-up
(:func:`setup`) and entry-point wrapper (:func:`run_command`: exit 2 for user errors, 130 for Ctrl-C).

A leaf module: it imports nothing of the package, so the packages that raise `ArgumentError` can use it."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import shlex
import shutil
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from transformers import HfArgumentParser, TrainingArguments


class ArgumentError(ValueError):
    """A bad command-line or recipe argument, reported as one line before any training starts."""


def config_file_to_argv(path: str) -> list[str]:
    """A JSON or YAML recipe as command-line arguments, so that arguments given after it override it."""
    file = Path(path)
    if not file.is_file():
        raise ArgumentError(f"--config {path}: no such file")
    text = file.read_text()
    values = yaml.safe_load(text) if file.suffix in (".yaml", ".yml") else json.loads(text)
    if not isinstance(values, dict):
        raise ArgumentError(f"--config {path}: expected a mapping of argument names to values")
    argv: list[str] = []
    for key, value in values.items():
        if isinstance(value, dict):
            argv += [f"--{key}", json.dumps(value)]
        elif isinstance(value, list):
            argv += [f"--{key}", *map(str, value)]
        elif value is None:
            argv += [f"--{key}", "None"]
        else:
            argv += [f"--{key}", str(value)]
    return argv


def pop_config_file(argv: list[str]) -> tuple[list[str], list[str]]:
    """Split `--config FILE` out of `argv`: (the recipe's arguments, the remaining command line)."""
    if "--config" not in argv:
        return [], list(argv)
    index = argv.index("--config")
    if index + 1 >= len(argv):
        raise ArgumentError("--config needs a file name")
    return config_file_to_argv(argv[index + 1]), argv[:index] + argv[index + 2 :]


def parse_config_overrides(overrides: str | None) -> dict[str, Any]:
    """`--config_overrides 'd_patch=512,ssl_objective=simclr'` as a dict; values are JSON where they parse."""
    if not overrides:
        return {}
    values = {}
    for item in overrides.split(","):
        key, sep, raw = item.partition("=")
        if not sep:
            raise ArgumentError(f"--config_overrides item {item!r} is not key=value")
        try:
            values[key.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            values[key.strip()] = raw
    return values


def parse_dataclass_arguments(parser: HfArgumentParser, argv: Sequence[str], command: str) -> tuple[Any, ...]:
    """`parser`'s dataclasses from `argv`; anything unknown or invalid raises a one-line `ArgumentError`."""

    def report(message: str) -> None:  # argparse would print the whole usage of ~200 TrainingArguments
        raise ArgumentError(message)

    parser.error = report
    try:
        *parsed, remaining = parser.parse_args_into_dataclasses(args=list(argv), return_remaining_strings=True)
    except ValueError as error:
        raise ArgumentError(str(error).splitlines()[0]) from error
    if remaining:
        raise ArgumentError(f"unknown argument(s): {' '.join(remaining)} (see `equirecon {command} --help`)")
    return tuple(parsed)


#: Written into an output directory when a run starts: which command it belongs to, so that only a run of the
#: same command resumes there.
RUN_MARKER = ".equirecon-run.json"
#: What a run writes besides checkpoints; `--overwrite_output_dir` removes them so one card never mixes two runs.
RUN_OUTPUTS = (
    "README.md",
    "equirecon_run.json",
    "equivariance_results.json",
    "reconstructions.png",
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


def check_model_path(value: str | None, flag: str = "--model") -> None:
    """A `--model` that names a local path must exist; a Hub id (`name` or `namespace/name`) is left to the
    loader. Checked before data is loaded, so a typo costs nothing."""
    if not value or Path(value).expanduser().exists():
        return
    looks_local = value.startswith(("/", "./", "../", "~", ".")) or value.count("/") > 1 or value.endswith("/")
    if looks_local:  # no Hub id has this form; the Hub would answer "Repo id must be in the form ..."
        raise ArgumentError(f"{flag} {value}: no such directory")


def format_help(
    parser: HfArgumentParser,
    *,
    usage: str,
    description: str,
    example: str,
    own: Sequence[type],
    extra: Sequence[argparse.Action] = (),
) -> str:
    """A command's help: usage, what it does, an example, its own options, then `TrainingArguments`'s.

    `own` are the command's dataclasses; fields a `TrainingArguments` subclass declares itself count as its own."""
    trainer_fields = {f.name for f in dataclasses.fields(TrainingArguments)}
    names: set[str] = set()
    for cls in own:
        for klass in cls.__mro__:
            if klass is TrainingArguments:
                break
            names |= set(vars(klass).get("__annotations__", {}))
        if not issubclass(cls, TrainingArguments):
            names |= {f.name for f in dataclasses.fields(cls)}
    actions = [a for a in parser._actions if not isinstance(a, argparse._HelpAction)]
    mine = [a for a in actions if a.dest in names or a.dest not in trainer_fields]
    theirs = [a for a in actions if a not in mine]
    formatter = parser._get_formatter()
    formatter.add_usage(usage, [], [], prefix="usage: ")
    formatter.add_text(description)
    formatter.add_text(f"example:\n  {example}")
    for title, group in (("options", [*extra, *mine]), ("Trainer options (transformers.TrainingArguments)", theirs)):
        if group:
            formatter.start_section(title)
            formatter.add_arguments(group)
            formatter.end_section()
    return formatter.format_help()


def config_action() -> argparse.Action:
    """`--config RECIPE` as shown in the help (it is read before the dataclasses parse)."""
    parser = argparse.ArgumentParser(add_help=False)
    return parser.add_argument(
        "--config",
        metavar="RECIPE",
        default=argparse.SUPPRESS,
        help="JSON or YAML file of arguments (e.g. recipes/*.json); flags given after it override it.",
    )


def setup(*, log_format: str = "%(asctime)s %(levelname)s %(name)s: %(message)s") -> None:
    """The set-up of every command: albumentations stays offline and quiet (2.0.8 checks PyPI for updates on
    import), and INFO logs go to stderr unless logging is already configured."""
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
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
