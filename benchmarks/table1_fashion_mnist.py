"""The paper's Table 1 on held-out images: Fashion-MNIST, 3 seeds, every row against its matched control.

Each row pretrains `recipes/fashion-mnist-vicreg.json` (a 4-layer ViT at 32², VICReg, g = rotation ±45°, K = 2,
λ = 1) with one change, through the `equirecon pretrain` command itself (each row's command is printed and saved):

    host (rot in views)      --reconstruction_weight 0: VICReg alone on the same views, v2 rotated by g
    Ours K=2                 the recipe
    Ours K=1                 --num_intermediates 1
    host (b/c in views)      g = brightness/contrast, --reconstruction_weight 0: the colour row's own control
    Ours (b/c) K=2           g = brightness/contrast
    Ours K=2, decoder reach  wider decoder convolutions (--reach: kernel size, dilation)

and a randomly initialised encoder of the same config and seed is the reference row. Every frozen encoder is scored
with the paper's protocol, on images nobody trained on: the θ regressor (SIE's MLP) is fitted on Fashion-MNIST
`train` images (the split pretraining drew from, as the paper fits its regressor on ImageNet's training images) and
scored on `test` images, which neither pretraining nor the regressor saw; R² for rotation,
translation, blur and brightness/contrast; the θ-shuffled control on the mean patch token (chance); read-outs mean
patch token and CLS (the headline: both rows train them), and the head's equivariant part (trained by the
reconstruction only: for λ = 0 rows an untrained projection, labelled so). Invariance: linear probe and weighted
k-NN (k = 20) on the mean patch token, 10 classes, fitted on `train` images and scored on `test`.

Results land in `<output-dir>/results/seed{S}-{row}.json` as they finish; checkpoints stay in
`<output-dir>/checkpoints/`; a rerun skips finished work, and several invocations share it (lock files):

    python benchmarks/table1_fashion_mnist.py --threads 1 & python benchmarks/table1_fashion_mnist.py --threads 1
    python benchmarks/table1_fashion_mnist.py --report

Needs Debian's `dataset-fashion-mnist` package (`apt-get install dataset-fashion-mnist`).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from table1_small import claim, mean_std, slug  # noqa: E402
from transformers import set_seed  # noqa: E402

from equirecon import EquiReconForPreTraining  # noqa: E402
from equirecon.evaluation import (  # noqa: E402
    FeatureCache,
    encode_images,
    knn_probe,
    linear_probe,
    run_equivariance_benchmark,
)
from equirecon.evaluation.equivariance import dataset_settings, family_configs  # noqa: E402
from equirecon.evaluation.labelled import load_labelled_images  # noqa: E402
from equirecon.imaging.fashion_mnist import FASHION_MNIST  # noqa: E402
from equirecon.training.arguments import EquiReconTrainingArguments, ModelArguments  # noqa: E402
from equirecon.training.model_setup import build_model  # noqa: E402

RECIPE = Path(__file__).resolve().parent.parent / "recipes" / "fashion-mnist-vicreg.json"
FAMILIES = ("rotation", "translation", "blur", "color")
FEATURES = ("mean_patch", "cls", "equivariant")
RANDOM_INIT = "random initialisation"
BRIGHTNESS_CONTRAST = ["--transformation_family", "color", "--saturation_range", "0", "0", "--hue_range", "0", "0"]

#: Row name → the arguments it adds to the recipe.
ROWS: dict[str, list[str]] = {
    "host (rot in views)": ["--reconstruction_weight", "0"],
    "Ours K=2": [],
    "Ours K=1": ["--num_intermediates", "1"],
    "host (b/c in views)": [*BRIGHTNESS_CONTRAST, "--reconstruction_weight", "0"],
    "Ours (b/c) K=2": BRIGHTNESS_CONTRAST,
}
#: Each row's matched control: same views, same g, λ = 0.
CONTROLS = {
    "Ours K=2": "host (rot in views)",
    "Ours K=1": "host (rot in views)",
    "Ours (b/c) K=2": "host (b/c in views)",
}
#: The precondition (host against random) and the effect (K = 2 against its host) rest on these.
CORE_ROWS = (RANDOM_INIT, "host (rot in views)", "Ours K=2")
#: The family a row's g belongs to, where it is not rotation (its paired difference is reported for both).
OWN_FAMILY = {"Ours (b/c) K=2": "color", "host (b/c in views)": "color"}
#: Rows with no reconstruction: their equivariant read-out is a projection nothing trained.
HOST_ROWS = ("host (rot in views)", "host (b/c in views)")


def reach_row(kernel_size: int, dilation: int) -> str:
    name = f"Ours K=2, decoder {kernel_size}×{kernel_size} dilation {dilation}"
    overrides = json.loads(RECIPE.read_text())["config_overrides"]
    ROWS[name] = ["--config_overrides", f"{overrides},decoder_kernel_size={kernel_size},decoder_dilation={dilation}"]
    CONTROLS[name] = "host (rot in views)"
    return name


def pretrain_command(name: str, seed: int, output_dir: Path, args: argparse.Namespace) -> list[str]:
    return [
        "equirecon",
        "pretrain",
        "--config",
        str(RECIPE),
        *ROWS[name],
        "--seed",
        str(seed),
        "--max_steps",
        str(args.steps),
        "--save_steps",
        str(args.steps),
        "--equivariance_benchmark",
        "false",  # this script scores every row itself, on held-out images
        "--disable_tqdm",
        "true",
        "--output_dir",
        str(output_dir),
    ]


def random_encoder(seed: int) -> torch.nn.Module:
    """The recipe's model as `equirecon pretrain --seed S` initialises it, untrained."""
    recipe = json.loads(RECIPE.read_text())
    model_args = ModelArguments(
        preset=recipe["preset"], config_overrides=recipe["config_overrides"], image_size=recipe["image_size"]
    )
    training_args = EquiReconTrainingArguments(output_dir="/tmp/unused", use_cpu=True)
    set_seed(seed)
    return build_model(model_args, training_args).equirecon


class HeldOutImages:
    """The images every row is scored on, loaded once per process."""

    def __init__(self, args: argparse.Namespace) -> None:
        labelled = load_labelled_images(FASHION_MNIST, test_split="test", max_images=args.probe_images, seed=0)
        self.probe = labelled
        # The regressor's images: a seeded subset of `train` to fit (and early-stop) on, `test` to score.
        self.train = labelled.train_images[: args.regressor_images]
        self.test = labelled.test_images[: args.regressor_images]


def evaluate(model: torch.nn.Module, seed: int, images: HeldOutImages, args: argparse.Namespace, done: dict) -> dict:
    results = dict(done)
    settings = dataset_settings(FASHION_MNIST)
    cache = FeatureCache()  # one encoding pass shared by the read-outs
    for feature in args.features:
        if feature in results:
            continue
        result = run_equivariance_benchmark(
            model,
            images.train,
            test_images=images.test,
            families=family_configs(FAMILIES, FASHION_MNIST),
            feature=feature,
            num_crops=args.num_crops,
            crop_scale=settings["crop_scale"],
            border=settings["border"],
            group_by="photo",
            seed=seed,
            cache=cache,
            progress=False,
            shuffled_control=feature == "mean_patch",
        )
        results[feature] = {**result.r2, "mean": result.mean_r2}
        if result.shuffled_r2:
            results[f"{feature}_shuffled"] = dict(result.shuffled_r2)
    if "linear" not in results:
        probe = images.probe
        train = encode_images(model, probe.train_images, kinds=("mean_patch",))["mean_patch"]
        test = encode_images(model, probe.test_images, kinds=("mean_patch",))["mean_patch"]
        results["knn"] = float(knn_probe(train, probe.train_labels, test, probe.test_labels, k=20).top1[20])
        results["linear"] = linear_probe(train, probe.train_labels, test, probe.test_labels, seed=seed).accuracy
    return results


def run_one(name: str, seed: int, args: argparse.Namespace, output_dir: Path, images: HeldOutImages) -> None:
    result_file = output_dir / "results" / f"seed{seed}-{slug(name)}.json"
    done = json.loads(result_file.read_text()) if result_file.exists() else {}
    if all(f in done for f in (*args.features, "linear")) or not claim(result_file):
        return
    try:
        started = time.time()
        if name == RANDOM_INIT:
            model = random_encoder(seed)
        else:
            run_dir = output_dir / "checkpoints" / f"seed{seed}-{slug(name)}"
            if not (run_dir / "model.safetensors").exists():
                command = pretrain_command(name, seed, run_dir, args)
                print(f"[seed {seed}] {name}: {' '.join(command)}", flush=True)
                with open(output_dir / "commands.txt", "a") as log:
                    log.write(" ".join(command) + "\n")
                subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
                done["pretrain_seconds"] = time.time() - started
            model = EquiReconForPreTraining.from_pretrained(run_dir).equirecon
        results = evaluate(model, seed, images, args, done)
        results["seconds"] = time.time() - started
        result_file.write_text(json.dumps(results, indent=2))
        print(json.dumps({"seed": seed, "row": name, **results}), flush=True)
    finally:
        result_file.with_suffix(".lock").unlink(missing_ok=True)


def _load(output_dir: Path, name: str, seeds: list[int]) -> dict[int, dict]:
    files = {seed: output_dir / "results" / f"seed{seed}-{slug(name)}.json" for seed in seeds}
    return {seed: json.loads(path.read_text()) for seed, path in files.items() if path.exists()}


def report(output_dir: Path, rows: list[str], seeds: list[int]) -> str:
    """Mean ± std over seeds per row and read-out, then the paired (same-seed) differences against each control."""
    results = {name: _load(output_dir, name, seeds) for name in rows}
    lines = ["R² on Fashion-MNIST test images (regressor fitted on train images); k-NN / linear: 10 classes, %.", ""]
    for feature in (*FEATURES, "mean_patch_shuffled"):
        lines += [
            f"Read-out: **{feature}**" + (" (θ-shuffled control: chance)" if feature.endswith("shuffled") else ""),
            "",
            "| row | seeds | R² rot | R² trans | R² blur | R² b/c | k-NN | linear |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for name, by_seed in results.items():
            runs = [r for r in by_seed.values() if feature in r]
            if not runs:
                continue
            label = name + (" (untrained projection)" if feature == "equivariant" and name in HOST_ROWS else "")
            cells = [mean_std([r[feature][f] for r in runs]) for f in FAMILIES]
            probes = [mean_std([100 * r[p] for r in runs if p in r]) for p in ("knn", "linear")]
            lines.append(f"| {label} | {len(runs)} | " + " | ".join(cells + probes) + " |")
        lines.append("")
    lines += ["Paired differences (same seed), R² of rotation and of the row's own g; per seed in brackets:", ""]
    pairs = [(row, control) for row, control in CONTROLS.items() if row in rows and control in rows]
    pairs += [("host (rot in views)", RANDOM_INIT), ("Ours K=2", "Ours K=1")]
    for feature in ("mean_patch", "cls"):
        for row, control in pairs:
            common = sorted(set(results.get(row, {})) & set(results.get(control, {})))
            for family in dict.fromkeys(("rotation", OWN_FAMILY.get(row, "rotation"))):
                deltas = [results[row][s][feature][family] - results[control][s][feature][family] for s in common]
                deltas = [d for d in deltas if np.isfinite(d)]
                if deltas:
                    per_seed = ", ".join(f"{d:+.3f}" for d in deltas)
                    lines.append(f"- {feature}, R² {family}: {row} − {control}: {mean_std(deltas)} [{per_seed}]")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps per row (default: the recipe's)")
    parser.add_argument("--num-crops", type=int, default=4096, help="regressor images fitted on, and as many scored")
    parser.add_argument("--regressor-images", type=int, default=8192, help="train / test images the R² draws from")
    parser.add_argument("--probe-images", type=int, default=10000, help="train / test images of the probes")
    parser.add_argument("--features", nargs="+", default=list(FEATURES), choices=FEATURES)
    parser.add_argument("--rows", nargs="+", default=None, help="row names (default: all)")
    parser.add_argument(
        "--reach", nargs=2, type=int, action="append", default=[], metavar=("KERNEL", "DILATION"), help="add a row"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--output-dir", default="runs/table1_fashion_mnist")
    parser.add_argument("--report", action="store_true", help="print the table of the finished runs and exit")
    args = parser.parse_args()
    args.steps = args.steps or json.loads(RECIPE.read_text())["max_steps"]
    reach = [reach_row(kernel, dilation) for kernel, dilation in args.reach]
    rows = args.rows or [RANDOM_INIT, *[name for name in ROWS if name not in reach], *reach]
    unknown = [name for name in rows if name != RANDOM_INIT and name not in ROWS]
    if unknown:
        sys.exit(f"unknown rows {unknown}; choose from {[RANDOM_INIT, *ROWS]}")
    if args.threads:
        torch.set_num_threads(args.threads)
        os.environ["OMP_NUM_THREADS"] = str(args.threads)  # the pretraining subprocesses
    output_dir = Path(args.output_dir)
    (output_dir / "results").mkdir(parents=True, exist_ok=True)
    if not args.report:
        images = HeldOutImages(args)
        # The rows the main comparison rests on (random, host, K = 2) for every seed first, then the others.
        core = [name for name in rows if name in CORE_ROWS]
        for group in (core, [name for name in rows if name not in CORE_ROWS]):
            for seed in args.seeds:
                for name in group:
                    run_one(name, seed, args, output_dir, images)
    text = report(output_dir, rows, args.seeds)
    (output_dir / "table1_fashion_mnist.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
