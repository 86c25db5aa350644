"""Cost of the auxiliary reconstruction task: one training step of the host objective alone (λ = 0, no decoders)
vs host + reconstruction (λ = 1, K decoders), same model, same batch, measured in the same run.

The paper reports +7% to +15% time per epoch (Table 3); the project's target is at most +10% step time for
ViT-S/16 at 224². Each configuration runs in its own subprocess so that peak memory is its own. On CUDA the step
runs under bf16 autocast, as a GPU run would (`--bf16` on the pretrain command).

    python benchmarks/step_overhead.py            # ViT-S/16 224² and the tiny preset
    python benchmarks/step_overhead.py --quick    # fewer steps, smaller batch
    python benchmarks/step_overhead.py --presets ibot-vit-s16 dinov2-vit-l16   # the DINO-family hosts
    python benchmarks/step_overhead.py --presets tiny --decoder-widths 16/32 8/8 8/16   # decoder widths

`--decoder-widths P/H ...` measures host + reconstruction once per decoder width (`decoder_patch_channels` P,
`decoder_hidden_channels` H) against the one host step: what each width costs a step.

For the DINO family (iBOT, DINOv2) a host step includes its EMA teacher's forward and update and the student's
masked patch tokens (half of the pairs masked at iBOT's mean ratio, 0.3, as its mask probability 0.5 gives), with the
two global crops only: local crops add host cost and would make the ratio smaller.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from typing import Any

import torch


def build(preset: str, reconstruction_weight: float, overrides: dict[str, Any] | None = None):
    from equirecon import EquiReconConfig, EquiReconForPreTraining

    config = EquiReconConfig.from_preset(preset, reconstruction_weight=reconstruction_weight, **(overrides or {}))
    return EquiReconForPreTraining(config), config


def synthetic_batch(config, batch_size: int, device: str, with_targets: bool) -> dict[str, torch.Tensor]:
    """Random views (and K targets with full masks) of the config's size; masks for the DINO family as documented."""
    size, k = config.image_size, config.num_intermediates
    batch = {
        "pixel_values": torch.randn(batch_size, 3, size, size, device=device),
        "transformed_pixel_values": torch.randn(batch_size, 3, size, size, device=device),
    }
    if with_targets:
        batch["intermediate_pixel_values"] = torch.randn(batch_size, k, 3, size, size, device=device)
        batch["intermediate_mask"] = torch.ones(batch_size, k, 1, size, size, device=device)
    if config.uses_masks:
        grid = (size // config.patch_size) ** 2
        generator = torch.Generator().manual_seed(0)
        masks = torch.rand(batch_size, 2, grid, generator=generator) < 0.3
        masks[batch_size // 2 :] = False
        batch["bool_masked_pos"] = masks.to(device)
    return batch


def measure(
    preset: str,
    reconstruction_weight: float,
    batch_size: int,
    steps: int,
    device: str,
    overrides: dict[str, Any] | None = None,
    *,
    decoders_channels_last: bool = False,
    compile_backend: str | None = None,
    clock: str = "wall",
) -> dict[str, float]:
    """Median seconds per optimizer step and peak memory (CUDA: allocator peak of the steady step; CPU: the
    process's peak RSS, the same interpreter and libraries in both configurations, so their difference is the
    task's). `decoders_channels_last` stores the decoders' convolutions channels-last; `compile_backend` runs the
    model through `torch.compile` (compiled during the warm-up steps). `clock="cpu"` times a CPU step by the
    process's CPU time, which other processes on a shared machine do not inflate (use one thread)."""
    torch.manual_seed(0)
    model, config = build(preset, reconstruction_weight, overrides)
    model.to(device).train()
    if decoders_channels_last:
        model.decoders.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    forward = torch.compile(model, backend=compile_backend) if compile_backend else model
    batch = synthetic_batch(config, batch_size, device, with_targets=reconstruction_weight > 0)
    use_cuda = device.startswith("cuda")
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if use_cuda else torch.autocast("cpu", enabled=False)

    def step() -> None:
        with autocast:
            loss = forward(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if config.uses_teacher:
            model.update_teacher(config.teacher_momentum)

    for _ in range(3 if compile_backend else 1):
        step()  # warm-up: allocator, kernels, optimizer state (and compilation)
    if use_cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    if clock == "cpu" and use_cuda:
        raise ValueError("clock='cpu' times CPU steps; a CUDA step is timed by the wall clock")
    now = time.process_time if clock == "cpu" else time.perf_counter
    times = []
    for _ in range(steps):
        start = now()
        step()
        if use_cuda:
            torch.cuda.synchronize()
        times.append(now() - start)
    peak = (
        torch.cuda.max_memory_allocated() / 2**20
        if use_cuda
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # the subprocess's whole peak RSS
    )
    return {"seconds_per_step": statistics.median(times), "peak_memory_mib": peak}


def measure_in_subprocess(
    preset: str,
    weight: float,
    batch: int,
    steps: int,
    device: str,
    overrides: dict[str, Any] | None = None,
    clock: str = "wall",
) -> dict[str, float]:
    command = [sys.executable, __file__, "--worker", preset, str(weight), str(batch), str(steps), device, clock]
    command.append(json.dumps(overrides or {}))
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def decoder_widths(value: str) -> tuple[int, int]:
    patch, _, hidden = value.partition("/")
    if not (patch.isdigit() and hidden.isdigit()):
        raise argparse.ArgumentTypeError(f"decoder width {value!r}: give PATCH/HIDDEN channels, e.g. 8/16")
    return int(patch), int(hidden)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="2 timed steps, batch 4 (ViT-S) / 16 (tiny)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--presets", nargs="+", default=["vicreg-vit-s16", "tiny"])
    parser.add_argument("--batch-size", type=int, default=None, help="default: 8 on CPU, 64 on CUDA")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument(
        "--decoder-widths",
        nargs="+",
        type=decoder_widths,
        default=None,
        metavar="P/H",
        help="decoder channels (patch/hidden) to measure, each against the same host step (default: the preset's)",
    )
    parser.add_argument(
        "--clock",
        choices=["wall", "cpu"],
        default="wall",
        help="cpu: time CPU steps by the process's CPU time, robust to a shared machine (set OMP_NUM_THREADS=1)",
    )
    parser.add_argument("--worker", nargs=7, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        preset, weight, batch, steps, device, clock, overrides = args.worker
        result = measure(preset, float(weight), int(batch), int(steps), device, json.loads(overrides), clock=clock)
        print(json.dumps(result))
        return

    steps = args.steps or (2 if args.quick else 5)
    on_cuda = args.device.startswith("cuda")
    widths: list[tuple[int, int] | None] = list(args.decoder_widths or [None])
    rows = []
    for preset in args.presets:
        batch = args.batch_size or (64 if on_cuda else (4 if args.quick else 8))
        if preset == "tiny" and args.batch_size is None:
            batch *= 4
        host = measure_in_subprocess(preset, 0.0, batch, steps, args.device, clock=args.clock)
        for width in widths:
            overrides = (
                {} if width is None else {"decoder_patch_channels": width[0], "decoder_hidden_channels": width[1]}
            )
            full = measure_in_subprocess(preset, 1.0, batch, steps, args.device, overrides, args.clock)
            label = "preset's" if width is None else f"{width[0]}/{width[1]}"
            t0, t1 = host["seconds_per_step"], full["seconds_per_step"]
            m0, m1 = host["peak_memory_mib"], full["peak_memory_mib"]
            rows.append((preset, label, batch, t0, t1, t1 / t0, m0, m1, m1 / max(m0, 1e-9)))

    device_name = torch.cuda.get_device_name() if on_cuda else "CPU"
    clock = "process CPU time" if args.clock == "cpu" else "wall time"
    print(f"device: {args.device} ({device_name}), {steps} timed steps ({clock}), torch {torch.__version__}")
    header = (
        f"{'preset':<16}{'decoders':>10}{'batch':>6}{'host s/step':>13}{'+recon s/step':>15}{'time ratio':>12}"
        f"{'host MiB':>10}{'+recon MiB':>12}{'mem ratio':>11}"
    )
    print(header)
    print("-" * len(header))
    for preset, label, batch, t0, t1, tr, m0, m1, mr in rows:
        print(f"{preset:<16}{label:>10}{batch:>6}{t0:>13.3f}{t1:>15.3f}{tr:>12.3f}{m0:>10.0f}{m1:>12.0f}{mr:>11.2f}")
    print("target: time ratio <= 1.10 for vicreg-vit-s16 at 224² (paper Table 3: +7% to +15% per epoch)")


if __name__ == "__main__":
    main()
