"""The argument style of every `equirecon` command: `HfArgumentParser` dataclasses, JSON/YAML recipes with
`--config FILE` (flags given after it override it), one-line argument errors, and help with the command's own
options before `TrainingArguments`'s."""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from transformers import HfArgumentParser, TrainingArguments

from ..argument_checks import ArgumentError

__all__ = ["config_action", "config_file_to_argv", "format_help", "parse_dataclass_arguments", "pop_config_file"]


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
