"""Command-line values that the packages below the commands check themselves: the one-line
:class:`ArgumentError` (exit status 2), `--config_overrides`, and `--model` paths.

A leaf module: it imports nothing of the package, so `training` and `finetuning` raise the error that
`equirecon.commands` reports."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = ["ArgumentError", "check_model_path", "parse_config_overrides"]


class ArgumentError(ValueError):
    """A bad command-line or recipe argument, reported as one line before any training starts."""


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


def check_model_path(value: str | None, flag: str = "--model") -> None:
    """A `--model` that names a local path must exist; a Hub id (`name` or `namespace/name`) is left to the
    loader. Checked before data is loaded, so a typo costs nothing."""
    if not value or Path(value).expanduser().exists():
        return
    looks_local = value.startswith(("/", "./", "../", "~", ".")) or value.count("/") > 1 or value.endswith("/")
    if looks_local:  # no Hub id has this form; the Hub would answer "Repo id must be in the form ..."
        raise ArgumentError(f"{flag} {value}: no such directory")
