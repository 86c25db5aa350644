"""The `equirecon` command: `pretrain`, `evaluate`, `finetune`, `model-card`.

Each subcommand is a module of `equirecon.commands`, imported only when used, so `equirecon --help` stays fast
(the package itself imports nothing heavy for the console script). Set-up (logging, offline albumentations) is `equirecon.command_line.setup`.
"""

from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "pretrain": (
        "equirecon.commands.pretrain",
        "pretrain a model with EquiReconTrainer (default: tiny, embedded photos)",
    ),
    "evaluate": ("equirecon.commands.evaluate", "equivariance R² benchmark, kNN and linear probes"),
    "finetune": ("equirecon.commands.finetune", "fine-tune or probe a classification / segmentation head"),
    "model-card": ("equirecon.commands.model_card", "(re)write the model card of a model directory"),
}


def _usage() -> str:
    lines = ["usage: equirecon {" + ",".join(COMMANDS) + "} [arguments]", "", "commands:"]
    lines += [f"  {name:<12}{help_text}" for name, (_, help_text) in COMMANDS.items()]
    lines += ["", "`equirecon COMMAND --help` describes a command's arguments."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0 if argv else 2
    command, arguments = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"equirecon: unknown command {command!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    from .command_line import setup
    from .registration import register_auto_classes

    setup()
    register_auto_classes()  # deferred by `equirecon/__init__.py` when the console script starts
    module = importlib.import_module(COMMANDS[command][0])
    return module.main(arguments)


if __name__ == "__main__":
    sys.exit(main())
