"""A 2-process CPU run (gloo) of an iBOT host with the reconstruction task: do the losses fall, and does the EMA
teacher stay identical on both ranks?

The student is synchronised by DDP; the teacher has no gradients, so DDP leaves it out of the reducer and every rank
updates its own copy from its (synchronised) student. This run checks that the copies never drift apart: at every
logging step each rank fingerprints its teacher and its centres, and rank 0 prints the largest difference between
the ranks next to the losses.

    python benchmarks/two_process_ibot.py                 # 100 steps, batch 16 per process: ~10 min on 2 cores
    python benchmarks/two_process_ibot.py --steps 20      # the pipeline
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from transformers import TrainerCallback, set_seed  # noqa: E402

from equirecon import EquiReconConfig, EquiReconForPreTraining  # noqa: E402
from equirecon.imaging.transformations import TransformationConfig  # noqa: E402
from equirecon.training.arguments import EquiReconTrainingArguments  # noqa: E402
from equirecon.training.data import build_transform_pair_dataset, collate_transform_pairs, load_images  # noqa: E402
from equirecon.training.masking import BlockMaskGenerator  # noqa: E402
from equirecon.training.trainer import EquiReconTrainer  # noqa: E402
from equirecon.training.views import TransformPairMaker  # noqa: E402


def fingerprint(model: EquiReconForPreTraining) -> torch.Tensor:
    """One number per teacher and centre tensor (their sums, in float64), in a fixed order."""
    objective = model.ssl_objective
    tensors = [*model.teacher.state_dict().values(), *objective.state_dict().values()]
    return torch.stack([tensor.double().sum() for tensor in tensors if tensor.is_floating_point()])


class TeacherAgreement(TrainerCallback):
    """At every log: the largest difference between the ranks' teacher and centre fingerprints."""

    def __init__(self) -> None:
        self.rows: list[dict[str, float]] = []

    def on_log(self, args, state, control, model=None, logs=None, **kwargs):
        if logs is None or "loss" not in logs:
            return
        local = fingerprint(model)
        gathered = [torch.zeros_like(local) for _ in range(dist.get_world_size())]
        dist.all_gather(gathered, local)
        drift = max(float((other - gathered[0]).abs().max()) for other in gathered)
        self.rows.append(
            {"step": state.global_step, **{k: logs[k] for k in logs if k.endswith("loss")}, "drift": drift}
        )


def worker(steps: int, batch_size: int, output_dir: str) -> None:
    set_seed(0)
    config = EquiReconConfig.from_preset("tiny-ibot", reconstruction_weight=1.0)
    transformation = TransformationConfig(family="se2")
    maker = TransformPairMaker(
        transformation,
        view_preset="all",
        size=config.image_size,
        seed=0,
        rank=int(os.environ["RANK"]),
        mask_generator=BlockMaskGenerator.from_config(config),
    )
    stream = build_transform_pair_dataset(load_images("embedded", split="train"), maker, repeat=None)
    arguments = EquiReconTrainingArguments(
        output_dir=output_dir,
        max_steps=steps,
        per_device_train_batch_size=batch_size,
        learning_rate=5e-4,
        warmup_steps=0.1,
        logging_steps=max(1, steps // 10),
        save_strategy="no",
        use_cpu=True,
        ddp_backend="gloo",
        seed=0,
        disable_tqdm=True,
        report_to=[],
    )
    agreement = TeacherAgreement()
    trainer = EquiReconTrainer(
        model=EquiReconForPreTraining(config),
        args=arguments,
        train_dataset=stream,
        data_collator=collate_transform_pairs,
        transformation=transformation,
        callbacks=[agreement],
    )
    trainer.train()
    if trainer.args.process_index == 0:
        print(
            f"world size {trainer.args.world_size}, batch {batch_size} per process, iBOT + reconstruction (SE(2), K=2)"
        )
        print(f"{'step':>5} {'loss':>9} {'ssl_loss':>9} {'recon_loss':>11} {'teacher drift':>14}")
        for row in agreement.rows:
            print(
                f"{row['step']:>5} {row['loss']:>9.4f} {row.get('ssl_loss', float('nan')):>9.4f} "
                f"{row.get('reconstruction_loss', float('nan')):>11.4f} {row['drift']:>14.3e}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=16, help="per process")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--output-dir", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.steps, args.batch_size, args.output_dir)
        return
    with tempfile.TemporaryDirectory() as output_dir:
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={29600}"]
        command += [__file__, "--worker", "--steps", str(args.steps), "--batch-size", str(args.batch_size)]
        subprocess.run([*command, "--output-dir", output_dir], check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})


if __name__ == "__main__":
    main()
