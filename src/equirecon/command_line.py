"""What every `equirecon` command shares: one argument style (`HfArgumentParser` dataclasses, JSON/YAML recipes
with `--config FILE`, `--config_overrides`), one-line argument errors, the output-directory check, and one set-up
(:func:`setup`) and entry-point wrapper (:func:`run_command`).

A leaf module: it imports nothing of the package, so the packages that raise `ArgumentError` can use it."""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml
from transformers import HfArgumentParser


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


def check_output_dir(path: str) -> None:
    """Fail now, not after hours of training, if the run cannot be written."""
    directory = Path(path)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe = directory / ".equirecon-write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as error:
        raise ArgumentError(f"--output_dir {path} is not writable ({error.strerror})") from error


def setup(*, log_format: str = "%(asctime)s %(levelname)s %(name)s: %(message)s") -> None:
    """The set-up of every command: albumentations stays offline and quiet (2.0.8 checks PyPI for updates on
    import), and INFO logs go to stderr unless logging is already configured."""
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    if not logging.getLogger().handlers:
        logging.basicConfig(format=log_format, level=logging.INFO, stream=sys.stderr)


def run_command(
    command: str, argv: Sequence[str] | None, parse: Callable[[list[str]], tuple], run: Callable[..., Any]
) -> int:
    """`equirecon COMMAND`: set up, parse `argv` (default: `sys.argv[1:]`), run; a bad argument is one line on
    stderr and exit status 2, `--help` exits 0."""
    setup()
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        run(*parse(argv))
    except SystemExit as exit_:  # --help
        return int(exit_.code or 0)
    except ArgumentError as error:
        print(f"equirecon {command}: error: {error}", file=sys.stderr)
        return 2
    return 0
