"""One GPU, one run, a few minutes: what a GPU machine is needed for, printed as tables.

1. The step-overhead ratio, host + reconstruction (λ = 1) against host alone (λ = 0), for `vicreg-vit-s16`,
   `ibot-vit-s16` and `dinov2-vit-l16` under bf16 autocast: seconds per step, images/s and peak memory of each
   (`benchmarks/step_overhead.py`'s step, in this process, the allocator's peak reset before the timed steps).
2. The Trainer's overhead over a plain loop and the pair pipeline's pairs/s against the step's need
   (`benchmarks/trainer_overhead.py`, with the default DataLoader workers).
3. The decoders' memory format: the `vicreg-vit-s16` reconstruction step with the decoders' convolutions
   channels-last against the default layout.
4. `torch.compile`: the `vicreg-vit-s16` reconstruction step compiled (inductor) against eager.

`--smoke` runs all of it on the CPU with the same presets shrunk to a 2-layer ViT at 32², a few steps each, and
compiles with the `aot_eager` backend; the test suite runs it (`tests/test_gpu_paths.py`), so the script cannot rot
between GPU loans. Its figures mean nothing.

    bash benchmarks/gpu_check.sh            # on a GPU machine, <= 8 minutes
    bash benchmarks/gpu_check.sh --smoke    # on the CPU, under a minute
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
sys.path.insert(0, str(Path(__file__).parent))

import torch  # noqa: E402
import trainer_overhead  # noqa: E402
from step_overhead import measure  # noqa: E402

PRESETS = ("vicreg-vit-s16", "ibot-vit-s16", "dinov2-vit-l16")
GPU_BATCH = {"vicreg-vit-s16": 64, "ibot-vit-s16": 64, "dinov2-vit-l16": 32}
#: `--smoke`: every preset's objective and heads, on a ViT small enough for a unit test.
SMOKE_OVERRIDES: dict[str, Any] = {
    "backbone_config": {
        "model_type": "dinov2",
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "mlp_ratio": 2,
        "patch_size": 8,
        "image_size": 32,
    },
    "d_patch": 48,
    "d_equi": 16,
    "vicreg_expander_dims": [32, 32],
    "dino_out_dim": 32,
    "dino_hidden_dim": 32,
    "dino_bottleneck_dim": 8,
    "decoder_patch_channels": 4,
    "decoder_hidden_channels": 8,
}


def smoke_overrides(preset: str) -> dict[str, Any]:
    from equirecon import EquiReconConfig

    masked = EquiReconConfig.from_preset(preset).uses_masks
    backbone = {**SMOKE_OVERRIDES["backbone_config"], "use_mask_token": masked}
    return {**SMOKE_OVERRIDES, "backbone_config": backbone}


def release_device_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def run_measure(args: argparse.Namespace, preset: str, weight: float, **options: Any) -> dict[str, float]:
    batch = args.batch_size or GPU_BATCH[preset]
    overrides = smoke_overrides(preset) if args.smoke else None
    result = measure(preset, weight, batch, args.steps, args.device, overrides, **options)
    release_device_memory()
    return {**result, "images_per_second": batch / result["seconds_per_step"], "batch": batch}


def step_overhead_table(args: argparse.Namespace) -> dict[str, dict[str, float]]:
    """Print the table; return each preset's reconstruction step."""
    print("\n## Step overhead, bf16 autocast" + (" (smoke: fp32 on the CPU)" if args.smoke else ""))
    print("| preset | batch | host s/step | +recon s/step | **ratio** | host images/s | +recon images/s "
          "| host peak MiB | +recon peak MiB |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    reconstruction_steps = {}
    for preset in args.presets:
        host, full = run_measure(args, preset, 0.0), run_measure(args, preset, 1.0)
        ratio = full["seconds_per_step"] / host["seconds_per_step"]
        memory = (
            (f"{host['peak_memory_mib']:.0f} | {full['peak_memory_mib']:.0f}") if args.device == "cuda" else "– | –"
        )
        print(
            f"| {preset} | {host['batch']} | {host['seconds_per_step']:.4f} | {full['seconds_per_step']:.4f} | "
            f"**{ratio:.3f}** | {host['images_per_second']:.1f} | {full['images_per_second']:.1f} | {memory} |"
        )
        reconstruction_steps[preset] = full
    return reconstruction_steps


def variant_table(args: argparse.Namespace, default: dict[str, float]) -> None:
    preset = args.presets[0]
    print(f"\n## {preset} + reconstruction: decoder layout and torch.compile")
    print("| variant | s/step | images/s | / default |\n|---|---|---|---|")
    variants = {
        "default (eager, NCHW decoders)": default,
        "decoders channels-last": run_measure(args, preset, 1.0, decoders_channels_last=True),
    }
    if not args.no_compile:
        backend = "aot_eager" if args.smoke else "inductor"
        variants[f"torch.compile({backend})"] = run_measure(args, preset, 1.0, compile_backend=backend)
    for name, result in variants.items():
        ratio = result["seconds_per_step"] / default["seconds_per_step"]
        print(f"| {name} | {result['seconds_per_step']:.4f} | {result['images_per_second']:.1f} | {ratio:.3f} |")


def trainer_table(args: argparse.Namespace) -> None:
    preset = args.presets[0]
    print(f"\n## Trainer overhead and pair pipeline ({preset})")
    argv = ["--device", args.device, "--preset", preset]
    if args.smoke:
        argv += ["--batch-size", "4", "--steps", "2", "--warmup", "1", "--repeats", "1", "--pipeline-batches", "8"]
        trainer_overhead.main(argv, config_overrides=smoke_overrides(preset))
    else:
        trainer_overhead.main(argv + ["--steps", "20", "--repeats", "2", "--pipeline-batches", "30"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="shrunk presets on the CPU, a few steps")
    parser.add_argument("--presets", nargs="+", default=list(PRESETS))
    parser.add_argument("--batch-size", type=int, default=None, help="default: 64 (ViT-S), 32 (ViT-L); smoke: 4")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per configuration (default 10)")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile row")
    args = parser.parse_args()
    if args.smoke:
        args.device, args.batch_size, args.steps = "cpu", args.batch_size or 4, args.steps or 2
    elif not torch.cuda.is_available():
        parser.error("no CUDA device: run on a GPU machine, or pass --smoke")
    else:
        args.device, args.steps = "cuda", args.steps or 10
    start = time.perf_counter()
    device = torch.cuda.get_device_name() if args.device == "cuda" else "CPU (smoke run: the figures mean nothing)"
    print(f"# gpu_check: {device}, torch {torch.__version__}, {args.steps} timed steps per configuration")
    reconstruction_steps = step_overhead_table(args)
    trainer_table(args)
    variant_table(args, reconstruction_steps[args.presets[0]])  # last: compiling is the slowest part
    print(f"\ngpu_check done in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
