"""The training step at the model's cost: EquiReconTrainer against a plain PyTorch loop, and the pair pipeline
against the step's need, measured in one run.

1. Trainer overhead: seconds per optimizer step of `EquiReconTrainer` (host-only, λ = 0, unless
   `--reconstruction-weight`) against a plain loop over the same model, batch, optimizer (AdamW), gradient clipping
   (the Trainer's `max_grad_norm = 1`) and cosine schedule, both fed by a DataLoader over the same examples and the
   same collator, with g_θ applied on the device per batch. Runs alternate (plain, Trainer, plain, ...); each run's
   seconds per step is its steady-state mean, and the table gives the median over runs. Target: overhead <= 5 %.
2. Pipeline headroom: pairs/s of the transform-pair stream that `equirecon pretrain` builds (`build_datasets`, the
   embedded photos, view preset "all"), through a DataLoader with `EquiReconTrainingArguments`' default workers,
   against the step's need (batch / seconds per Trainer step). Target: headroom >= 1 (the pipeline is never the
   bottleneck). Without CUDA the default is no worker: the pipeline then runs in series with the step and its cost
   adds to it, which the table states.

    python benchmarks/trainer_overhead.py --quick          # tiny preset, about a minute on 2 CPU cores
    python benchmarks/trainer_overhead.py --preset vicreg-vit-s16 --batch-size 64   # on a GPU: bf16 autocast
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import torch  # noqa: E402
from transformers import PrinterCallback, TrainerCallback, get_cosine_schedule_with_warmup, set_seed  # noqa: E402
from transformers.utils import logging as transformers_logging  # noqa: E402

from equirecon import EquiReconConfig, EquiReconForPreTraining  # noqa: E402
from equirecon.imaging.transformations import TransformationConfig  # noqa: E402
from equirecon.modeling.teacher import TeacherSchedules  # noqa: E402
from equirecon.training.arguments import (  # noqa: E402
    DataArguments,
    EquiReconTrainingArguments,
    default_dataloader_workers,
)
from equirecon.training.data import batch_transformed_pair, collate_transform_pairs  # noqa: E402
from equirecon.training.masking import BlockMaskGenerator  # noqa: E402
from equirecon.training.pretrain import build_datasets  # noqa: E402
from equirecon.training.trainer import EquiReconTrainer  # noqa: E402

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class RepeatedExamples(torch.utils.data.Dataset):
    """`length` examples cycling through a fixed list: the same data for both loops, no pipeline cost."""

    def __init__(self, examples: list[dict[str, torch.Tensor]], length: int) -> None:
        self.examples, self.length = examples, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return self.examples[index % len(self.examples)]


class StepClock(TrainerCallback):
    """The time at the end of every optimizer step (after the device finishes it)."""

    def __init__(self, now: Any) -> None:
        self.now = now
        self.times: list[float] = []

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        synchronise(args.device)
        self.times.append(self.now())


def synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def steady_seconds_per_step(times: list[float], warmup: int) -> float:
    """Mean step time after the first `warmup` steps (start-up, allocator and optimizer state)."""
    return (times[-1] - times[warmup - 1]) / (len(times) - warmup)


def build_model(args: argparse.Namespace) -> EquiReconForPreTraining:
    set_seed(0)
    config = EquiReconConfig.from_preset(
        args.preset, reconstruction_weight=args.reconstruction_weight, **args.config_overrides
    )
    return EquiReconForPreTraining(config)


def training_arguments(args: argparse.Namespace, output_dir: str, **overrides: Any) -> EquiReconTrainingArguments:
    on_cuda = args.device == "cuda"
    fields = {
        "output_dir": output_dir,
        "max_steps": args.warmup + args.steps,
        "per_device_train_batch_size": args.batch_size,
        "learning_rate": 1e-4,
        "warmup_steps": 0,
        "save_strategy": "no",
        "report_to": "none",
        "disable_tqdm": True,
        "use_cpu": not on_cuda,
        "bf16": on_cuda,
        "optim": "adamw_torch_fused" if on_cuda else "adamw_torch",
        "dataloader_num_workers": 0,
        "seed": 0,
    }
    return EquiReconTrainingArguments(**{**fields, **overrides})


def fixed_examples(args: argparse.Namespace, config: EquiReconConfig, count: int) -> list[dict[str, torch.Tensor]]:
    stream = pipeline_stream(args, config)
    return list(stream.take(count))


def pipeline_stream(args: argparse.Namespace, config: EquiReconConfig):
    """The training stream `equirecon pretrain` builds for this config (embedded photos, its default views)."""
    with tempfile.TemporaryDirectory() as output_dir:
        training_args = training_arguments(args, output_dir)
    masks = BlockMaskGenerator.from_config(config) if config.uses_masks else None
    stream, _ = build_datasets(
        DataArguments(validation_split=None),
        training_args,
        TransformationConfig.from_dict(config.transformation),
        config.image_size,
        mask_generator=masks,
    )
    return stream


def time_trainer(args: argparse.Namespace, examples: list[dict[str, torch.Tensor]]) -> float:
    model = build_model(args)
    clock = StepClock(args.now)
    with tempfile.TemporaryDirectory() as output_dir:
        trainer = EquiReconTrainer(
            model=model,
            args=training_arguments(args, output_dir),
            train_dataset=RepeatedExamples(examples, args.batch_size * (args.warmup + args.steps)),
            data_collator=collate_transform_pairs,
            image_mean=IMAGENET_MEAN,
            image_std=IMAGENET_STD,
            callbacks=[clock],
        )
        trainer.remove_callback(PrinterCallback)  # a line per log, not part of the step
        trainer.train()
    return steady_seconds_per_step(clock.times, args.warmup)


def time_plain_loop(args: argparse.Namespace, examples: list[dict[str, torch.Tensor]]) -> float:
    """What one writes by hand: the same work as the Trainer's step, without its bookkeeping."""
    device = torch.device(args.device)
    model = build_model(args).to(device).train()
    config = model.config
    transformation = TransformationConfig.from_dict(config.transformation)
    max_steps = args.warmup + args.steps
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05, fused=device.type == "cuda")
    scheduler = get_cosine_schedule_with_warmup(optimizer, 0, max_steps)
    loader = torch.utils.data.DataLoader(
        RepeatedExamples(examples, args.batch_size * max_steps),
        batch_size=args.batch_size,
        shuffle=True,
        collate_fn=collate_transform_pairs,
        pin_memory=device.type == "cuda",
    )
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    schedules = TeacherSchedules.from_config(config, max_steps) if model.teacher is not None else None
    if schedules is not None:
        model.ensure_teacher_initialized()
    times = []
    for step, batch in enumerate(loader):
        batch = {key: value.to(device, non_blocking=True) for key, value in batch.items()}
        if schedules is not None:
            model.set_teacher_temperature(schedules.temperature(step))
        pair = batch_transformed_pair(batch, transformation, config.num_intermediates, IMAGENET_MEAN, IMAGENET_STD)
        with_targets = config.reconstruction_weight > 0
        with autocast:
            loss = model(
                pixel_values=batch["pixel_values"],
                transformed_pixel_values=pair.transformed,
                intermediate_pixel_values=pair.targets if with_targets else None,
                intermediate_mask=pair.target_masks if with_targets else None,
                bool_masked_pos=batch.get("bool_masked_pos"),
            ).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        if schedules is not None and schedules.freezes_last_layer(step):
            model.cancel_last_layer_gradients()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if schedules is not None:
            model.update_teacher(schedules.momentum(step))
        synchronise(device)
        times.append(args.now())
    return steady_seconds_per_step(times, args.warmup)


def pipeline_pairs_per_second(args: argparse.Namespace, config: EquiReconConfig, workers: int) -> float:
    """Pairs/s of the training stream through a DataLoader with `workers` workers, after each worker's first batch
    (start-up), over enough batches that the batches the workers prefetch do not count."""
    loader = torch.utils.data.DataLoader(
        pipeline_stream(args, config),
        batch_size=args.batch_size,
        num_workers=workers,
        collate_fn=collate_transform_pairs,
        pin_memory=args.device == "cuda",
    )
    iterator = iter(loader)
    for _ in range(max(workers, 1)):
        next(iterator)
    now = args.now if workers == 0 else time.perf_counter  # workers' CPU time is not this process's
    start, count = now(), 0
    for _ in range(max(args.pipeline_batches, 8 * workers)):
        count += len(next(iterator)["pixel_values"])
    return count / (now() - start)


def main(argv: list[str] | None = None, config_overrides: dict[str, Any] | None = None) -> dict[str, float]:
    """Print the two tables and return their figures; `config_overrides` change the preset (`gpu_check --smoke`)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--preset", default=None, help="default: vicreg-vit-s16 on CUDA, tiny on CPU")
    parser.add_argument("--batch-size", type=int, default=None, help="default: 64 on CUDA, 32 on CPU")
    parser.add_argument("--reconstruction-weight", type=float, default=0.0, help="λ (default 0: the host step)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per run (default 20; 8 with --quick)")
    parser.add_argument("--warmup", type=int, default=3, help="steps before the clock starts")
    parser.add_argument("--repeats", type=int, default=None, help="runs of each loop (default 3; 2 with --quick)")
    parser.add_argument("--pipeline-batches", type=int, default=None, help="batches timed (default 20; 4 --quick)")
    parser.add_argument(
        "--clock",
        choices=["wall", "cpu"],
        default="wall",
        help="cpu: time CPU runs by the process's CPU time, robust to a shared machine (set OMP_NUM_THREADS=1)",
    )
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    if args.clock == "cpu" and args.device != "cpu":
        parser.error("--clock cpu times CPU runs; a CUDA run is timed by the wall clock")
    args.now = time.process_time if args.clock == "cpu" else time.perf_counter
    args.config_overrides = config_overrides or {}
    on_cuda = args.device == "cuda"
    args.preset = args.preset or ("vicreg-vit-s16" if on_cuda else "tiny")
    args.batch_size = args.batch_size or (64 if on_cuda else 32)
    args.steps = args.steps or (8 if args.quick else 20)
    args.repeats = args.repeats or (2 if args.quick else 3)
    args.pipeline_batches = args.pipeline_batches or (4 if args.quick else 20)
    transformers_logging.set_verbosity_error()

    config = build_model(args).config
    examples = fixed_examples(args, config, args.batch_size)
    plain, trainer = [], []
    for _ in range(args.repeats):  # interleaved, so drifting load on a shared machine hits both alike
        plain.append(time_plain_loop(args, examples))
        trainer.append(time_trainer(args, examples))
    plain_step, trainer_step = statistics.median(plain), statistics.median(trainer)
    workers = default_dataloader_workers()
    pairs = pipeline_pairs_per_second(args, config, workers)
    need = args.batch_size / trainer_step

    device_name = torch.cuda.get_device_name() if on_cuda else f"CPU, {torch.get_num_threads()} threads"
    print(
        f"{args.preset}, λ = {args.reconstruction_weight:g}, batch {args.batch_size}, {args.device} ({device_name}), "
        f"{'bf16 autocast' if on_cuda else 'fp32'}, {args.steps} timed steps after {args.warmup} "
        f"({'process CPU time' if args.clock == 'cpu' else 'wall time'}), "
        f"median of {args.repeats} interleaved runs, torch {torch.__version__}"
    )
    print("| loop | s/step | images/s |\n|---|---|---|")
    print(f"| plain PyTorch | {plain_step:.4f} | {args.batch_size / plain_step:.1f} |")
    print(f"| EquiReconTrainer | {trainer_step:.4f} | {need:.1f} |")
    overhead = trainer_step / plain_step - 1
    print(f"| **Trainer overhead** (target <= 5 %) | **{100 * overhead:+.1f} %** | |")
    print(
        f"\nPair pipeline, {workers} DataLoader worker(s) (the default here): {pairs:.1f} pairs/s against the step's "
        f"need of {need:.1f}: headroom {pairs / need:.2f} (target >= 1)"
        + (" — no worker: the pipeline runs in series with the step" if workers == 0 else "")
    )
    return {
        "plain_seconds_per_step": plain_step,
        "trainer_seconds_per_step": trainer_step,
        "overhead": overhead,
        "pairs_per_second": pairs,
        "need": need,
        "workers": workers,
    }


if __name__ == "__main__":
    main()
