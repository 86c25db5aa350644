"""Speed of `equirecon evaluate equivariance`: its encoding pass against the encoder's bare forward.

The benchmark's encoding pass renders every crop with its context margin, transforms it once per family and encodes
the crop and each transformed copy. Its throughput, in encoded images per second (crops/s × (1 + families)), is
compared with the encoder's own forward on ready-made batches of the same size, timed just before and just after it
in the same run, so the load of a shared machine mostly cancels out of the ratio; each row gives the medians of
``--repeats`` such passes. Target: ratio >= 0.8 (the pass may spend at most a quarter of the encoder's time on making
its images). The process keeps freed memory as the `equirecon` commands do (:mod:`equirecon.host_memory`).

    python benchmarks/evaluation_speed.py                                      # embedded photos, tiny preset
    python benchmarks/evaluation_speed.py --dataset /usr/share/backgrounds/mate --model runs/equirecon-tiny

Without ``--model``, a randomly initialised ``tiny`` EquiRecon encoder is timed (speed does not depend on the
weights). The θ regressors are reduced to nothing in the encoding pass (one epoch of a 1-unit MLP on one fold) and
timed on their own: one epoch of the default benchmark's fit (SIE's MLP, the 4 families and their θ-shuffled controls
at once, on the training share of the crops).

Every row is measured in float32 and, where the device has bfloat16 matrix units (``--precision auto`` resolves
to it; :mod:`equirecon.evaluation.precision`), in bfloat16 autocast, the arithmetic `equirecon evaluate` then uses.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from equirecon.evaluation.equivariance import run_equivariance_benchmark  # noqa: E402
from equirecon.evaluation.loading import InputSpec, load_model  # noqa: E402
from equirecon.evaluation.precision import autocast, resolve_precision  # noqa: E402
from equirecon.evaluation.regression import RegressorConfig, epoch_seconds  # noqa: E402
from equirecon.host_memory import keep_freed_host_memory  # noqa: E402
from equirecon.imaging.decoding import decode_images  # noqa: E402
from equirecon.imaging.sources import embedded_photos, find_image_column, load_images, undecoded_images  # noqa: E402

FAMILIES = ("rotation", "color", "blur", "translation")


def encoder(model_path: str | None) -> tuple[torch.nn.Module, InputSpec]:
    if model_path is not None:
        return load_model(model_path, device="cpu")
    from equirecon import EquiReconConfig, EquiReconModel

    torch.manual_seed(0)
    model = EquiReconModel(EquiReconConfig.from_preset("tiny")).eval().requires_grad_(False)
    return model, InputSpec.from_model(model)


def photos_of(dataset: str) -> list[np.ndarray]:
    if dataset == "embedded":
        images = embedded_photos("validation")
    else:
        images = load_images(dataset)
    return decode_images(undecoded_images(images, find_image_column(images))).images


@torch.inference_mode()
def forward_images_per_second(
    model: torch.nn.Module, spec: InputSpec, batch_size: int, batches: int, precision: str
) -> float:
    """The encoder alone, on random batches already in memory (one warm-up batch first)."""
    pixels = torch.randn(batch_size, 3, *spec.image_size)
    with autocast("cpu", precision):
        model(pixel_values=pixels)
        start = time.perf_counter()
        for _ in range(batches):
            model(pixel_values=pixels)
    return batch_size * batches / (time.perf_counter() - start)


def encoding_pass(
    model: torch.nn.Module, spec: InputSpec, photos: list, num_crops: int, batch_size: int, precision: str
) -> float:
    """Seconds of `run_equivariance_benchmark`'s encoding pass (everything but a negligible regressor: one epoch of a
    1-unit MLP on one fold)."""
    start = time.perf_counter()
    run_equivariance_benchmark(
        model,
        photos,
        families=FAMILIES,
        num_crops=num_crops,
        input_spec=spec,
        batch_size=batch_size,
        regressor=RegressorConfig(hidden_sizes=(1,), epochs=1),
        scored_folds=1,
        shuffled_control=False,
        progress=False,
        precision=precision,
    )
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="Checkpoint directory (default: a random tiny encoder).")
    parser.add_argument("--dataset", action="append", default=None, help="An image folder (repeatable).")
    parser.add_argument("--num_crops", type=int, default=1024)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3, help="passes per row (medians of each figure)")
    parser.add_argument(
        "--benchmark_crops", type=int, default=4096, help="The regressors' fit: the benchmark's crops."
    )
    args = parser.parse_args()

    keep_freed_host_memory()  # as `equirecon evaluate` does (benchmarks/host_memory.py)
    model, spec = encoder(args.model)
    precisions = sorted({"float32", resolve_precision("auto", "cpu")}, reverse=True)
    passes = 1 + len(FAMILIES)
    reference_batches = max(1, args.num_crops * passes // args.batch_size // 4)
    print(
        f"encoder {type(model).__name__} at {spec.image_size}, batch {args.batch_size}, {torch.get_num_threads()} threads"
    )
    print(f"load before: {' '.join(f'{value:.2f}' for value in os.getloadavg())}")
    rows = []
    for dataset in ["embedded", *(args.dataset or [])]:
        photos = photos_of(dataset)
        sizes = sorted(photo.shape[0] * photo.shape[1] for photo in photos)
        median_megapixels = sizes[len(sizes) // 2] / 1e6
        for precision in precisions:
            forwards, encodeds = [], []
            for _ in range(args.repeats):  # each pass between two forward timings; the medians are reported
                before = forward_images_per_second(model, spec, args.batch_size, reference_batches, precision)
                seconds = encoding_pass(model, spec, photos, args.num_crops, args.batch_size, precision)
                after = forward_images_per_second(model, spec, args.batch_size, reference_batches, precision)
                forwards.append((before + after) / 2)
                encodeds.append(args.num_crops * passes / seconds)
            ratio = statistics.median(e / f for e, f in zip(encodeds, forwards, strict=True))
            forward, encoded = statistics.median(forwards), statistics.median(encodeds)
            rows.append(
                (dataset, len(photos), median_megapixels, precision, forward, encoded / passes, encoded, ratio)
            )
    # One epoch of the default benchmark's fit: 3/5 of the crops train, 1/5 stop, 8 regressors of 2 outputs.
    width = 2 * model.config.hidden_size  # the pair of mean patch tokens
    epochs = {
        precision: epoch_seconds(
            8, width, 2, args.benchmark_crops * 3 // 5, args.benchmark_crops // 5, RegressorConfig(precision=precision)
        )
        for precision in precisions
    }
    print(f"load after: {' '.join(f'{value:.2f}' for value in os.getloadavg())}\n")
    print(
        "| images | photos | median Mpx | precision | encoder forward (img/s) | encoding pass (crops/s) | (img/s) | ratio |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for dataset, count, megapixels, precision, forward, crops, encoded, ratio in rows:
        print(
            f"| {dataset} | {count} | {megapixels:.2f} | {precision} | {forward:.0f} | {crops:.0f} | {encoded:.0f} | "
            f"{ratio:.2f} |"
        )
    if len(precisions) == 2:
        speedups = [row[6] / rows[index - 1][6] for index, row in enumerate(rows) if row[3] == "bfloat16"]
        print(f"\nencoding pass, bfloat16 over float32: {', '.join(f'{value:.2f}×' for value in speedups)}")
    print(
        "θ regressors, one epoch of the default fit (8 MLPs, "
        + ", ".join(f"{precision}: {seconds:.2f} s" for precision, seconds in epochs.items())
        + (f"; bfloat16 over float32: {epochs['float32'] / epochs['bfloat16']:.2f}×)" if len(epochs) == 2 else ")")
    )


if __name__ == "__main__":
    main()
