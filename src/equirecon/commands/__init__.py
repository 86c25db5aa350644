"""The `equirecon` command (the top layer): `pretrain`, `evaluate`, `finetune`, `model-card`.

Each subcommand is a module of this package that turns its arguments into calls of the packages below and writes
the results:

* :mod:`.pretrain`: `equirecon pretrain` (:mod:`equirecon.training`, then :mod:`equirecon.evaluation`'s benchmark);
* :mod:`.evaluate`: `equirecon evaluate equivariance|knn|linear` (:mod:`equirecon.evaluation`);
* :mod:`.finetune`: `equirecon finetune classification|segmentation` (:mod:`equirecon.finetuning`);
* :mod:`.card`: `equirecon model-card DIR` (:mod:`equirecon.model_card`).

They share one argument style (:mod:`.parsing`) and one wrapper (:mod:`.runner`). :func:`main` imports a
subcommand only when it runs, so `equirecon --help` does not wait for torch and transformers.
"""

from __future__ import annotations

import importlib
import sys

__all__ = ["COMMANDS", "main"]

#: Command name → (module, one-line help).
COMMANDS = {
    "pretrain": (
        "equirecon.commands.pretrain",
        "pretrain a model with EquiReconTrainer (default: tiny, embedded photos)",
    ),
    "evaluate": ("equirecon.commands.evaluate", "equivariance R² benchmark, kNN and linear probes"),
    "finetune": ("equirecon.commands.finetune", "fine-tune or probe a classification / segmentation head"),
    "model-card": ("equirecon.commands.card", "(re)write the model card of a model directory"),
}


def _usage() -> str:
    lines = ["usage: equirecon {" + ",".join(COMMANDS) + "} [arguments]", "", "commands:"]
    lines += [f"  {name:<12}{help_text}" for name, (_, help_text) in COMMANDS.items()]
    lines += ["", "`equirecon COMMAND --help` describes a command's arguments."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `equirecon` console script (and of `python -m equirecon`); returns the exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0 if argv else 2
    command, arguments = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"equirecon: unknown command {command!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    from ..registration import register_auto_classes
    from .runner import setup

    setup()
    register_auto_classes()  # deferred by `equirecon/__init__.py` when the console script starts
    module = importlib.import_module(COMMANDS[command][0])
    return module.main(arguments)
