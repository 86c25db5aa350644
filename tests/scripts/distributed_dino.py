"""Run by tests/test_dino_teacher.py under `torch.distributed.run --nproc_per_node=2`: a few DDP steps of an iBOT
host on CPU (gloo); each rank records a fingerprint of its teacher, its centres and its student."""

import json
import sys
from pathlib import Path

from trainer_helpers import dino_trainer


def _fingerprint(module) -> dict[str, float]:
    return {name: round(float(value.float().sum()), 6) for name, value in module.state_dict().items()}


def main(output_dir: str) -> None:
    trainer = dino_trainer(output_dir, "ibot", {"teacher_momentum": 0.5}, max_steps=3)
    trainer.train()
    model = trainer.model
    record = {
        "world_size": trainer.args.world_size,
        "teacher": _fingerprint(model.teacher),
        "centres": _fingerprint(model.ssl_objective.patch_centering) | _fingerprint(model.ssl_objective.cls_centering),
        "student": _fingerprint(model.equirecon),
        "teacher_requires_grad": any(p.requires_grad for p in model.teacher.parameters()),
    }
    Path(output_dir, f"dino-rank{trainer.args.process_index}.json").write_text(json.dumps(record))


if __name__ == "__main__":
    main(sys.argv[1])
