"""Cost of transform pairs: CPU data pipeline vs a plain two-view pipeline, and g_θ vs a ViT-S/16 step.

Two questions, each answered by a ratio measured in the same run (the machine may be shared and noisy):

1. CPU workers: examples/s of the transform-pair pipeline (``build_transform_pair_dataset``: A1, A2, θ sampled)
   over a plain two-view albumentations pipeline on the same images, workers and batch size. Target >= 0.9:
   g_θ must not run per example on the CPU.
2. Device: time of the batched ``make_transformed_pair`` call (v2 and K = 2 targets) over one forward+backward of
   a ViT-S/16 (transformers ``Dinov2Model``: hidden 384, 12 layers, 6 heads, patch 16) on the same batch.
   Target <= 5% (the paper's whole auxiliary task costs 7-15% of an epoch).

    python benchmarks/pair_pipeline.py --quick      # ~1 minute on 2 CPU cores
    python benchmarks/pair_pipeline.py              # B = 64, more examples and repeats
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import datasets  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from transformers import Dinov2Config, Dinov2Model  # noqa: E402

from equirecon.training import FAMILIES, TransformationConfig, make_transformed_pair  # noqa: E402
from equirecon.training.data import (  # noqa: E402
    build_transform_pair_dataset,
    collate_transform_pairs,
    embedded_photos,
)
from equirecon.training.views import TransformPairMaker, build_view_transform  # noqa: E402

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# ------------------------------------------------------------------------------------------- CPU pipeline


class PlainTwoViews:
    """What a two-view SSL pipeline does per example: decode, RGB, two albumentations views."""

    def __init__(self, size: int) -> None:
        self.view1 = build_view_transform("all", size, view=1)
        self.view2 = build_view_transform("all", size, view=2)

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        out: dict[str, list] = {"pixel_values": [], "pixel_values_2": []}
        for value in batch["image"]:
            image = np.asarray(Image.open(io.BytesIO(value["bytes"])).convert("RGB"))
            out["pixel_values"].append(self.view1(image=image)["image"])
            out["pixel_values_2"].append(self.view2(image=image)["image"])
        return out


def collate_plain(examples: list[dict]) -> dict[str, torch.Tensor]:
    return {key: torch.stack([e[key] for e in examples]) for key in examples[0]}


def photo_table(num_examples: int) -> datasets.Dataset:
    """The embedded training photos, repeated to ``num_examples`` rows (encoded bytes, decoded by the pipelines)."""
    photos = embedded_photos("train").cast_column("image", datasets.Image(decode=False))
    rows = [photos[i % len(photos)]["image"] for i in range(num_examples)]
    return datasets.Dataset.from_dict({"image": rows}, features=datasets.Features({"image": datasets.Image()}))


def examples_per_second(loader: torch.utils.data.DataLoader) -> float:
    """Throughput after the first batch (so worker start-up is not counted)."""
    iterator = iter(loader)
    next(iterator)
    start, count = time.perf_counter(), 0
    for batch in iterator:
        count += len(batch["pixel_values"])
    return count / (time.perf_counter() - start)


def benchmark_cpu_pipeline(args: argparse.Namespace) -> tuple[float, float]:
    table = photo_table(args.examples)
    num_shards = 4 * args.workers
    loader_kwargs = {"batch_size": args.loader_batch_size, "num_workers": args.workers}

    def plain() -> torch.utils.data.DataLoader:
        stream = table.to_iterable_dataset(num_shards=num_shards).shuffle(seed=0, buffer_size=256)
        stream = stream.cast_column("image", datasets.Image(decode=False))
        stream = stream.map(PlainTwoViews(args.size), batched=True, batch_size=16, remove_columns=["image"])
        return torch.utils.data.DataLoader(stream, collate_fn=collate_plain, **loader_kwargs)

    def pairs() -> torch.utils.data.DataLoader:
        maker = TransformPairMaker(TransformationConfig(), size=args.size)
        stream = build_transform_pair_dataset(table, maker, num_shards=num_shards, buffer_size=256)
        return torch.utils.data.DataLoader(stream, collate_fn=collate_transform_pairs, **loader_kwargs)

    rates: dict[str, list[float]] = {"plain": [], "pairs": []}
    for _ in range(args.repeats):  # interleaved, so drifting load on a shared machine hits both alike
        rates["plain"].append(examples_per_second(plain()))
        rates["pairs"].append(examples_per_second(pairs()))
    return statistics.median(rates["plain"]), statistics.median(rates["pairs"])


# ----------------------------------------------------------------------------------------------- device


def synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(function, device: torch.device, repeats: int) -> float:
    """Median wall time in seconds over ``repeats`` calls, after one warm-up call."""
    function()
    synchronise(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        synchronise(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def benchmark_device(args: argparse.Namespace, device: torch.device) -> tuple[float, dict[str, float]]:
    torch.manual_seed(0)
    batch = args.batch_size
    config = Dinov2Config(
        hidden_size=384, num_hidden_layers=12, num_attention_heads=6, patch_size=16, image_size=args.image_size
    )
    model = Dinov2Model(config).to(device).train()
    pixels = torch.randn(batch, 3, args.image_size, args.image_size, device=device)

    def vit_step() -> None:
        model.zero_grad(set_to_none=True)
        model(pixel_values=pixels).last_hidden_state.float().mean().backward()

    families: dict[str, TransformationConfig] = {f: TransformationConfig(family=f) for f in FAMILIES[:-1]}
    families["composite"] = TransformationConfig(family="composite", components=("se2", "color", "blur"))
    generator = np.random.default_rng(0)
    calls = {}
    for name, transformation in families.items():
        params = torch.from_numpy(transformation.sample(batch, generator)).to(device)

        def call(transformation=transformation, params=params) -> None:
            with torch.no_grad():
                make_transformed_pair(
                    pixels, params, transformation, 2, image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD
                )

        calls[name] = call

    vit_times = [timed(vit_step, device, args.vit_repeats)]
    transform_times = {name: timed(call, device, args.transform_repeats) for name, call in calls.items()}
    vit_times.append(timed(vit_step, device, args.vit_repeats))  # before and after: load drift shows up here
    return statistics.mean(vit_times), transform_times


# ------------------------------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes: about a minute on 2 CPU cores")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers for the CPU pipeline")
    parser.add_argument("--size", type=int, default=224, help="crop size of the CPU pipeline")
    parser.add_argument("--image-size", type=int, default=224, help="image size of the device comparison")
    parser.add_argument("--batch-size", type=int, default=None, help="device batch (default 64; 16 with --quick)")
    parser.add_argument("--skip-pipeline", action="store_true")
    parser.add_argument("--skip-device", action="store_true")
    args = parser.parse_args()
    args.examples = 160 if args.quick else 640
    args.loader_batch_size = 32
    args.repeats = 2 if args.quick else 3
    args.batch_size = args.batch_size or (16 if args.quick else 64)
    args.vit_repeats = 1 if args.quick else 2
    args.transform_repeats = 2 if args.quick else 3
    device = torch.device(args.device)

    print(
        f"torch {torch.__version__}, device {device}, {torch.get_num_threads()} torch threads, "
        f"{os.cpu_count()} CPUs{' (--quick)' if args.quick else ''}"
    )
    if not args.skip_pipeline:
        plain, pairs = benchmark_cpu_pipeline(args)
        print(
            f"\nCPU data pipeline: {args.size}² crops, {args.workers} workers, batches of {args.loader_batch_size}, "
            f"{args.examples} examples per run, median of {args.repeats} interleaved runs"
        )
        print("| pipeline | examples/s |\n|---|---|")
        print(f"| plain two-view albumentations | {plain:.1f} |")
        print(f"| transform pairs (A1, A2, θ) | {pairs:.1f} |")
        print(f"| **ratio pairs / plain** (target >= 0.90) | **{pairs / plain:.3f}** |")
    if not args.skip_device:
        vit, transforms = benchmark_device(args, device)
        print(
            f"\nDevice call vs ViT-S/16 forward+backward: B = {args.batch_size}, K = 2, {args.image_size}², "
            f"{device}; ViT-S/16 step {vit * 1000:.0f} ms"
        )
        print("| g_θ family | make_transformed_pair (ms) | / ViT-S/16 step | target <= 0.05 |\n|---|---|---|---|")
        for name, seconds in transforms.items():
            ratio = seconds / vit
            print(f"| {name} | {seconds * 1000:.1f} | {ratio:.4f} | {'yes' if ratio <= 0.05 else 'NO'} |")


if __name__ == "__main__":
    main()
