"""`--push_to_hub` for the finished run directory: the model with the project's card (`model-index` with the measured
results), the run record and the pictures, in one commit at the end.

`Trainer.save_model()` pushes as soon as the weights are written, before the run has measured anything, and
`Trainer.push_to_hub()` rewrites `README.md` with Trainer's generic card first. `pretrain` and `finetune` therefore
save with `save_model_without_pushing` and push here once the card is written. Checkpoint pushes during training
(`hub_strategy`) stay Trainer's.
"""

from __future__ import annotations

from typing import Any

from huggingface_hub import HfApi
from transformers import Trainer

__all__ = ["push_output_directory", "save_model_without_pushing"]


def save_model_without_pushing(trainer: Trainer) -> None:
    """`trainer.save_model()` (on every process: FSDP gathers the weights), without its push to the Hub."""
    # `_internal_call=True` is how Trainer's own `push_to_hub` saves without pushing twice.
    trainer.save_model(_internal_call=True)


def push_output_directory(trainer: Trainer, commit_message: str = "End of training") -> Any:
    """Upload `args.output_dir` to `args.hub_model_id` as it is now, card included, when `--push_to_hub` is set;
    checkpoint folders and private files stay local (the patterns `Trainer.push_to_hub` leaves out). Call it on the
    main process after the card is written. Returns the commit, or None without `--push_to_hub`."""
    args = trainer.args
    if not args.push_to_hub:
        return None
    if trainer.hub_model_id is None:
        trainer.init_hf_repo(token=args.hub_token)
    return HfApi(token=args.hub_token).upload_folder(
        repo_id=trainer.hub_model_id,
        folder_path=args.output_dir,
        commit_message=commit_message,
        revision=getattr(args, "hub_revision", None),
        ignore_patterns=["_*", "checkpoint-*"],
    )
