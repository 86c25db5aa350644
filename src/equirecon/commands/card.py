"""`equirecon model-card DIR`: (re)write the model card of a model directory written by `equirecon pretrain`,
`equirecon finetune` or save_pretrained, from its measured results, with the argument style of the other commands
(dataclass flags, `--config` recipes, one-line errors)."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

from transformers import HfArgumentParser

from ..argument_checks import ArgumentError
from ..model_card import write_model_card
from .parsing import format_help, parse_dataclass_arguments, pop_config_file
from .runner import run_command

__all__ = ["ModelCardArguments", "main", "parse_arguments"]


@dataclass
class ModelCardArguments:
    """Which directory's card to write, and how to title it."""

    model_dir: str | None = field(
        default=None,
        metadata={
            "help": "Directory written by `equirecon pretrain`, `equirecon finetune` or save_pretrained (also positional)."
        },
    )
    model_name: str | None = field(default=None, metadata={"help": "Title of the card (default: the directory name)."})
    repo_id: str | None = field(
        default=None, metadata={"help": "Hub repository id used in the usage snippet (default: the directory)."}
    )


def parse_arguments(argv: list[str]) -> tuple[ModelCardArguments]:
    """``[DIR] [--config FILE] [flags]``: the directory may be given positionally or as ``--model_dir``."""
    argv = list(argv)
    parser = HfArgumentParser(ModelCardArguments)
    if "-h" in argv or "--help" in argv:
        print(
            format_help(
                parser,
                usage="equirecon model-card DIR [--model_name NAME] [--repo_id ID]",
                description="(Re)write README.md, the model card, from the directory's config and measured results "
                "(equirecon_run.json, and equivariance_results.json for a pretrained encoder).",
                example="equirecon model-card runs/equirecon-tiny --repo_id me/equirecon-tiny",
                own=(ModelCardArguments,),
            )
        )
        raise SystemExit(0)
    if argv and not argv[0].startswith("-"):
        argv = ["--model_dir", argv[0], *argv[1:]]
    recipe, argv = pop_config_file(argv)
    (args,) = parse_dataclass_arguments(parser, recipe + argv, "model-card")
    if not args.model_dir:
        raise ArgumentError("name the model directory: `equirecon model-card DIR`")
    return (args,)


def run(args: ModelCardArguments) -> None:
    """Write the card and print its path."""
    try:
        path = write_model_card(args.model_dir, model_name=args.model_name, repo_id=args.repo_id)
    except (ValueError, OSError) as error:
        raise ArgumentError(str(error)) from error
    print(path)


def main(argv: list[str] | None = None) -> int:
    """Entry point of `equirecon model-card`; returns the exit status."""
    return run_command("model-card", argv, parse_arguments, run)


if __name__ == "__main__":
    sys.exit(main())
