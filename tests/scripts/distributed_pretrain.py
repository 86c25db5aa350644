"""Run by tests/test_trainer.py under `torch.distributed.run --nproc_per_node=2`: a few DDP steps on CPU (gloo) over
a sharded stream; each rank records the transform parameters it trained on, and, as the interpreter exits, whether
the process group and gloo's threads are still there."""

import atexit
import json
import os
import sys
from pathlib import Path

import torch.distributed as dist
from trainer_helpers import tiny_trainer

from equirecon.training.trainer import EquiReconTrainer


class RecordingTrainer(EquiReconTrainer):
    seen: list

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        self.seen.append([round(v, 5) for v in inputs["transform_params"].flatten().tolist()])
        return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)


def thread_names() -> list[str] | None:
    """This process's threads (Linux), leaving out any that ends while they are listed."""
    tasks = Path("/proc/self/task")
    if not tasks.exists():
        return None
    names = []
    for task in tasks.iterdir():
        try:
            names.append((task / "comm").read_text().strip())
        except OSError:
            pass
    return names


def record_exit(output_dir: str, rank: str) -> None:
    """Registered before training, so it runs after the exit handlers that training registers."""
    record = {"group_initialized": dist.is_initialized(), "threads": thread_names()}
    Path(output_dir, f"exit-rank{rank}.json").write_text(json.dumps(record))


def main(output_dir: str) -> None:
    atexit.register(record_exit, output_dir, os.environ["RANK"])
    trainer = tiny_trainer(output_dir, max_steps=3)
    trainer.__class__ = RecordingTrainer
    trainer.seen = []
    trainer.train()
    trainer.save_model()
    record = {"world_size": trainer.args.world_size, "batches": trainer.seen}
    Path(output_dir, f"seen-rank{trainer.args.process_index}.json").write_text(json.dumps(record))


if __name__ == "__main__":
    main(sys.argv[1])
