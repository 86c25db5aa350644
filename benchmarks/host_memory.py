"""What keeping freed host memory in the process (`equirecon.host_memory`, set by every `equirecon` command) is
worth on this machine: the encoder's forward and a training step, with glibc's default thresholds and with the
commands' ones, in fresh processes (the setting cannot be undone in a process), alternating, so a shared machine's
drift hits both alike.

    python benchmarks/host_memory.py              # tiny preset, about two minutes on 2 CPU cores
    python benchmarks/host_memory.py --rounds 5

Each child process times one arm: the bare forward of a random tiny encoder (batch 64, float32 and, where the CPU
has bfloat16 matrix units, bfloat16 autocast: what `equirecon evaluate` runs), and the plain training step of
`trainer_overhead.py` (tiny preset, λ = 1, batch 32: what `equirecon pretrain` runs), with the page faults of each.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

ARMS = {"glibc default": "0", "kept (equirecon commands)": "1"}


def faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def child(batches: int, steps: int) -> dict[str, float]:
    """One arm, in this process: the setting first (or not, by EQUIRECON_KEEP_FREED_MEMORY), then the timings."""
    from equirecon.host_memory import keep_freed_host_memory

    kept = keep_freed_host_memory()
    import torch

    sys.path.insert(0, str(Path(__file__).parent))
    import trainer_overhead

    from equirecon import EquiReconConfig, EquiReconModel
    from equirecon.evaluation.precision import autocast, resolve_precision

    figures: dict[str, float] = {"kept": float(kept)}
    torch.manual_seed(0)
    model = EquiReconModel(EquiReconConfig.from_preset("tiny")).eval().requires_grad_(False)
    pixels = torch.randn(64, 3, model.config.image_size, model.config.image_size)
    for precision in sorted({"float32", resolve_precision("auto", "cpu")}):
        with torch.inference_mode(), autocast("cpu", precision):
            model(pixel_values=pixels)
            start, first = time.perf_counter(), faults()
            for _ in range(batches):
                model(pixel_values=pixels)
            figures[f"forward {precision} (img/s)"] = 64 * batches / (time.perf_counter() - start)
            figures[f"faults per forward {precision}"] = (faults() - first) / batches

    args = argparse.Namespace(
        preset="tiny", reconstruction_weight=1.0, config_overrides={}, batch_size=32, device="cpu",
        warmup=3, steps=steps, now=time.perf_counter,
    )  # fmt: skip
    examples = trainer_overhead.fixed_examples(args, trainer_overhead.build_model(args).config, args.batch_size)
    first = faults()
    figures["training step λ=1 (s)"] = trainer_overhead.time_plain_loop(args, examples)
    figures["faults per training step"] = (faults() - first) / (args.warmup + steps)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="processes per arm, alternating")
    parser.add_argument("--batches", type=int, default=20, help="timed forward batches per precision")
    parser.add_argument("--steps", type=int, default=8, help="timed training steps")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.batches, args.steps)))
        return

    results: dict[str, list[dict[str, float]]] = {arm: [] for arm in ARMS}
    for _ in range(args.rounds):
        for arm, flag in ARMS.items():
            environment = {**os.environ, "EQUIRECON_KEEP_FREED_MEMORY": flag}
            command = [sys.executable, __file__, "--child", f"--batches={args.batches}", f"--steps={args.steps}"]
            output = subprocess.run(command, env=environment, capture_output=True, text=True, check=True).stdout
            results[arm].append(json.loads(output.strip().splitlines()[-1]))
    if not all(run["kept"] for run in results["kept (equirecon commands)"]):
        print("the thresholds could not be set here (not glibc, or MALLOC_*/GLIBC_TUNABLES/LD_PRELOAD chose already)")
    columns = [key for key in results["glibc default"][0] if key != "kept"]
    print(f"median of {args.rounds} processes per arm, alternating; {os.cpu_count()} CPUs\n")
    print("| | " + " | ".join(columns) + " |\n|---|" + "---|" * len(columns))
    medians = {
        arm: {key: statistics.median(run[key] for run in runs) for key in columns} for arm, runs in results.items()
    }
    for arm, row in medians.items():
        print(f"| {arm} | " + " | ".join(f"{row[key]:.4g}" for key in columns) + " |")
    default, kept = medians.values()
    print(
        "| **kept / default** | "
        + " | ".join(f"**{kept[key] / max(default[key], 1e-9):.2f}**" for key in columns)
        + " |"
    )


if __name__ == "__main__":
    main()
