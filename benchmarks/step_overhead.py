"""Cost of the auxiliary reconstruction task: one training step of the host objective alone (λ = 0, no decoders)
vs host + reconstruction (λ = 1, K decoders), same model, same batch, measured in the same run.

The paper reports +7% to +15% time per epoch (Table 3); the project's target is at most +10% step time for
ViT-S/16 at 224². Each configuration runs in its own subprocess so that peak memory is its own.

    python benchmarks/step_overhead.py            # ViT-S/16 224² and the tiny preset
    python benchmarks/step_overhead.py --quick    # fewer steps, smaller batch
    python benchmarks/step_overhead.py --presets ibot-vit-s16 dinov2-vit-l16   # the DINO-family hosts

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

import torch


def build(preset: str, reconstruction_weight: float):
    from equirecon import EquiReconConfig, EquiReconForPreTraining

    config = EquiReconConfig.from_preset(preset, reconstruction_weight=reconstruction_weight)
    return EquiReconForPreTraining(config), config


def measure(preset: str, reconstruction_weight: float, batch_size: int, steps: int, device: str) -> dict:
    """Median seconds per optimizer step and peak memory (CUDA: allocator peak; CPU: the process's peak RSS, the
    same interpreter and libraries in both configurations, so their difference is the task's)."""
    torch.manual_seed(0)
    model, config = build(preset, reconstruction_weight)
    model.to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    size, k = config.image_size, config.num_intermediates
    batch = {
        "pixel_values": torch.randn(batch_size, 3, size, size, device=device),
        "transformed_pixel_values": torch.randn(batch_size, 3, size, size, device=device),
        "intermediate_pixel_values": torch.randn(batch_size, k, 3, size, size, device=device),
        "intermediate_mask": torch.ones(batch_size, k, 1, size, size, device=device),
    }
    if reconstruction_weight == 0:
        batch.pop("intermediate_pixel_values")
        batch.pop("intermediate_mask")
    if config.uses_masks:
        grid = (size // config.patch_size) ** 2
        generator = torch.Generator().manual_seed(0)
        masks = torch.rand(batch_size, 2, grid, generator=generator) < 0.3
        masks[batch_size // 2 :] = False
        batch["bool_masked_pos"] = masks.to(device)
    use_cuda = device.startswith("cuda")
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if use_cuda else torch.autocast("cpu", enabled=False)

    def step() -> None:
        with autocast:
            loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if config.uses_teacher:
            model.update_teacher(0, 100)

    step()  # warm-up: allocator, kernels, optimizer state
    if use_cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        if use_cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    peak = (
        torch.cuda.max_memory_allocated() / 2**20
        if use_cuda
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # the subprocess's whole peak RSS
    )
    return {"seconds_per_step": statistics.median(times), "peak_memory_mib": peak}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="2 timed steps, batch 4 (ViT-S) / 16 (tiny)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--presets", nargs="+", default=["vicreg-vit-s16", "tiny"])
    parser.add_argument("--batch-size", type=int, default=None, help="default: 8 on CPU, 64 on CUDA")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument(
        "--worker", nargs=5, metavar=("PRESET", "LAMBDA", "BATCH", "STEPS", "DEVICE"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()

    if args.worker:
        preset, weight, batch, steps, device = args.worker
        print(json.dumps(measure(preset, float(weight), int(batch), int(steps), device)))
        return

    steps = args.steps or (2 if args.quick else 5)
    on_cuda = args.device.startswith("cuda")
    rows = []
    for preset in args.presets:
        batch = args.batch_size or (64 if on_cuda else (4 if args.quick else 8))
        if preset == "tiny" and args.batch_size is None:
            batch *= 4
        results = {}
        for weight in (0.0, 1.0):
            command = [sys.executable, __file__, "--worker", preset, str(weight), str(batch), str(steps), args.device]
            output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
            results[weight] = json.loads(output.strip().splitlines()[-1])
        host, full = results[0.0], results[1.0]
        rows.append(
            (
                preset,
                batch,
                host["seconds_per_step"],
                full["seconds_per_step"],
                full["seconds_per_step"] / host["seconds_per_step"],
                host["peak_memory_mib"],
                full["peak_memory_mib"],
                full["peak_memory_mib"] / max(host["peak_memory_mib"], 1e-9),
            )
        )

    print(
        f"device: {args.device} ({torch.cuda.get_device_name() if on_cuda else 'CPU'}), {steps} timed steps, torch {torch.__version__}"
    )
    header = f"{'preset':<16}{'batch':>6}{'host s/step':>13}{'+recon s/step':>15}{'time ratio':>12}{'host MiB':>10}{'+recon MiB':>12}{'mem ratio':>11}"
    print(header)
    print("-" * len(header))
    for preset, batch, t0, t1, tr, m0, m1, mr in rows:
        print(f"{preset:<16}{batch:>6}{t0:>13.3f}{t1:>15.3f}{tr:>12.3f}{m0:>10.0f}{m1:>12.0f}{mr:>11.2f}")
    print("target: time ratio <= 1.10 for vicreg-vit-s16 at 224² (paper Table 3: +7% to +15% per epoch)")


if __name__ == "__main__":
    main()
