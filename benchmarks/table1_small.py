"""The paper's Table 1 in miniature, over seeds: does the reconstruction task put transformation information back
into the features that the invariance objective removes, and at what cost to invariance?

Same data (the embedded photos), same budget, same seeds for every row; a tiny ViT (the `tiny` preset: 64² crops,
8×8 patches, 6 layers) is pretrained with

    VICReg alone, with the rotation in its base augmentations (λ = 0, no decoders): the host-only control,
    VICReg + reconstruction, g = rotation with K = 1 and K = 2, g = SE(2) and g = colour (K = 2), and g = rotation
    with narrow decoders (8/8 channels, the presets' default, instead of the 16/32 of the other rows),
    iBOT alone and iBOT + reconstruction (g = SE(2), K = 2): the DINO-family host on the same tiny ViT,
    VICReg alone and with reconstruction without base augmentations (views "none"): a mechanism check, where view 1
    is the pre-image of view 2, so the decoders can read θ from the pair,
    the same two rows with random resized crops only (views "crop-only"): independent crops, no photometric
    augmentation, between the mechanism check and the paper's setting,

and a randomly initialised encoder is the reference row. Each frozen encoder is then scored by

* the equivariance benchmark: an MLP regresses θ of rotation / colour / blur / translation from the features of
  (I, g_θ(I)) for 4096 crops of the 18 embedded photos (plus every photo of --eval-dataset, reusing the finished
  checkpoints; --photos held-out keeps only the 4 embedded photos no row is pretrained on), cross-validated (5 folds
  of crops, or of photos with --group-by photo; each regressor early-stopped on another fold, R² over every crop),
  for three read-outs (the backbone's mean patch token, its CLS token, and the head's equivariant part). The
  mean-patch read-out also reports the θ-shuffled control (the regressors fitted on permuted θ): chance R²;
* a weighted k-NN (k = 20) on the mean patch token of a labelled set (scikit-learn's digits, its fixed stratified
  80/20 split), so a loss of invariance shows.

Every (seed, row) result is written to `<output-dir>/runs/` as it finishes, and every checkpoint is kept in
`<output-dir>/checkpoints/`; a rerun skips what is finished (and adds only the read-outs a result lacks), so the
benchmark can be stopped and resumed. Several invocations on one output directory share the runs through lock
files, so two processes of one thread each keep two cores busy. The control rows and the two rotation rows run
first, for every seed; then the other rows.

    python benchmarks/table1_small.py                       # 3 seeds, all rows and read-outs: ~10 h on 2 CPU cores
    python benchmarks/table1_small.py --quick               # ~5 min: the pipeline, not the effect
    python benchmarks/table1_small.py --eval-dataset DIR    # the same checkpoints, DIR's photos added to the R²
    python benchmarks/table1_small.py --photos held-out --eval-dataset DIR   # only photos no row was trained on
    python benchmarks/table1_small.py --report              # the table from what has finished
    python benchmarks/table1_small.py --threads 1 & python benchmarks/table1_small.py --threads 1   # two workers
"""

from __future__ import annotations

import argparse
import json
import os
import re
import time
from pathlib import Path
from typing import NamedTuple

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from transformers import set_seed  # noqa: E402

from equirecon import EquiReconConfig, EquiReconForPreTraining  # noqa: E402
from equirecon.evaluation import (  # noqa: E402
    FeatureCache,
    RegressorConfig,
    encode_images,
    knn_probe,
    load_labelled_images,
    run_equivariance_benchmark,
)
from equirecon.evaluation.crops import as_photos  # noqa: E402
from equirecon.training.arguments import (  # noqa: E402
    DataArguments,
    EquiReconTrainingArguments,
    EvaluationArguments,
    ModelArguments,
)
from equirecon.training.data import load_images  # noqa: E402
from equirecon.training.pretrain import run  # noqa: E402

FAMILIES = ("rotation", "color", "blur", "translation")
FEATURES = ("mean_patch", "cls", "equivariant")
RANDOM_INIT = "random initialisation"
#: The decoder widths every row was measured with (the tiny preset's before it took the ViT-S/16 presets' 8/8).
WIDE_DECODERS = ",decoder_patch_channels=16,decoder_hidden_channels=32"


class Row(NamedTuple):
    family: str  # g_θ
    weight: float  # reconstruction weight λ (0: the host alone, no decoders)
    k: int  # intermediate states K
    overrides: str = ""  # more config overrides, ",name=value..."
    preset: str = "tiny"
    views: str = "all"  # base augmentations A1, A2 (training only; the benchmark is the same for every row)


ROWS = {
    "VICReg (all, rot in views)": Row("rotation", 0.0, 2),
    "Ours(VICReg, all, rot), K=2": Row("rotation", 1.0, 2),
    "Ours(VICReg, all, rot), K=1": Row("rotation", 1.0, 1),
    # The DINO family: the same tiny ViT as an iBOT host (EMA teacher, masked patch tokens, 1024 prototypes).
    "iBOT (all, SE(2) in views)": Row("se2", 0.0, 2, preset="tiny-ibot"),
    "Ours(iBOT, all, SE(2)), K=2": Row("se2", 1.0, 2, preset="tiny-ibot"),
    "Ours(VICReg, all, SE(2)), K=2": Row("se2", 1.0, 2),
    "Ours(VICReg, all, colour), K=2": Row("color", 1.0, 2),
    # Narrow decoders (8/8 channels, every preset's default) against the 16/32 of the other rows.
    "Ours(VICReg, all, rot), K=2, decoder 8/8": Row(
        "rotation", 1.0, 2, ",decoder_patch_channels=8,decoder_hidden_channels=8"
    ),
    # A mechanism check, not the paper's setting: without base augmentations (views "none": both views the photo's
    # centre, view 2 rotated) view 1 is the pre-image u itself, so the decoders can read θ from the pair.
    "VICReg (none, rot in views)": Row("rotation", 0.0, 2, views="none"),
    "Ours(VICReg, none, rot), K=2": Row("rotation", 1.0, 2, views="none"),
    # Between the two: independent random resized crops for A1 and A2, no flip, colour or blur (views "crop-only"),
    # so view 1 shares part of view 2's pre-image but not its pixels one for one.
    "VICReg (crop-only, rot in views)": Row("rotation", 0.0, 2, views="crop-only"),
    "Ours(VICReg, crop-only, rot), K=2": Row("rotation", 1.0, 2, views="crop-only"),
}

CORE_ROWS = (RANDOM_INIT, *list(ROWS)[:3])
IBOT_ROWS = tuple(name for name, row in ROWS.items() if row.preset == "tiny-ibot")
# Results of one R² protocol live in their own folder (runs/cv-by-photo, runs/cv-by-crop): a change of protocol
# recomputes, never mixes, the tables.


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def pretrain(name: str, seed: int, args: argparse.Namespace, output_dir: Path) -> Path:
    family, weight, k, overrides, preset, views = ROWS[name]
    model_args = ModelArguments(
        preset=preset,
        config_overrides=f"num_intermediates={k},reconstruction_weight={weight}{WIDE_DECODERS}{overrides}",
    )
    data_args = DataArguments(dataset="embedded", max_eval_samples=64)
    training_args = EquiReconTrainingArguments(
        output_dir=str(output_dir),
        max_steps=args.steps,
        per_device_train_batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        warmup_steps=0.1,
        logging_steps=max(1, args.steps // 10),
        save_steps=args.steps,
        save_total_limit=1,
        seed=seed,
        transformation_family=family,
        view_preset=views,
        disable_tqdm=True,
        use_cpu=not torch.cuda.is_available(),
    )
    print(
        f"[seed {seed}] {name}: {args.steps} steps, batch {args.batch_size}, g={family}, λ={weight}, K={k}{overrides}, "
        f"views {views}",
        flush=True,
    )
    run(model_args, data_args, training_args, EvaluationArguments(equivariance_benchmark=False))
    return output_dir


def evaluation_photos(args: argparse.Namespace) -> list[object]:
    """The photos of the R² benchmark: the 18 embedded photos (with --photos held-out, only the 4 that no row is
    pretrained on), and every photo of --eval-dataset."""
    photos = as_photos(load_images("embedded", split="all" if args.photos == "all" else "validation"))
    if args.eval_dataset:
        photos += as_photos(load_images(args.eval_dataset, split="train"))
    return photos


def evaluate(
    model: torch.nn.Module, seed: int, args: argparse.Namespace, done: dict[str, object]
) -> dict[str, object]:
    """R² per read-out and family (with the shuffled-θ control on the first read-out) and the k-NN accuracy; the
    read-outs already in ``done`` are kept, not recomputed."""
    cache = FeatureCache()
    photos = evaluation_photos(args)
    results = dict(done)
    for feature in args.features:
        if feature in results:
            continue
        result = run_equivariance_benchmark(
            model,
            photos,
            families=FAMILIES,
            feature=feature,
            num_crops=args.num_crops,
            folds=args.folds,
            scored_folds=args.scored_folds,
            group_by=args.group_by,
            regressor=RegressorConfig(epochs=args.regressor_epochs),
            seed=seed,
            cache=cache,
            progress=False,
            shuffled_control=args.shuffled_families if feature == "mean_patch" else False,
        )
        results[feature] = {**result.r2, "mean": result.mean_r2}
        if result.shuffled_r2:
            results[f"{feature}_shuffled"] = dict(result.shuffled_r2)
    if "knn_digits" not in results:
        labelled = load_labelled_images("digits", seed=seed)
        train = encode_images(model, labelled.train_images, kinds=("mean_patch",))["mean_patch"]
        test = encode_images(model, labelled.test_images, kinds=("mean_patch",))["mean_patch"]
        results["knn_digits"] = float(
            knn_probe(train, labelled.train_labels, test, labelled.test_labels, k=20).top1[20]
        )
    return results


def result_path(output_dir: Path, seed: int, name: str, args: argparse.Namespace) -> Path:
    suffix = "-held-out" if args.photos == "held-out" else ""
    suffix += f"-on-{slug(Path(args.eval_dataset).name)}" if args.eval_dataset else ""
    protocol = f"cv-by-{args.group_by}"
    if args.scored_folds is not None:
        protocol += f"-{args.scored_folds}-of-{args.folds}-folds"
    return output_dir / "runs" / protocol / f"seed{seed}-{slug(name)}{suffix}.json"


def claim(path: Path) -> bool:
    """Take the job whose result is ``path`` for this process (a lock file naming its pid), unless a live process
    holds it: several invocations on one output directory share the work."""
    lock = path.with_suffix(".lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    try:
        descriptor = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        try:
            os.kill(int(lock.read_text() or 0), 0)
            return False  # its owner is alive
        except (ProcessLookupError, ValueError):
            lock.unlink(missing_ok=True)  # left by a stopped run
            return claim(path)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(str(os.getpid()))
    return True


def run_one(name: str, seed: int, args: argparse.Namespace, output_dir: Path) -> None:
    result_file = result_path(output_dir, seed, name, args)
    done = json.loads(result_file.read_text()) if result_file.exists() else {}
    if all(feature in done for feature in args.features) or not claim(result_file):
        return
    started = time.time()
    try:
        if name == RANDOM_INIT:
            set_seed(seed)
            model = EquiReconForPreTraining(EquiReconConfig.from_preset("tiny")).equirecon
        else:
            run_dir = output_dir / "checkpoints" / f"seed{seed}-{slug(name)}"
            if not (run_dir / "model.safetensors").exists():  # a finished pretraining is reused
                pretrain(name, seed, args, run_dir)
            model = EquiReconForPreTraining.from_pretrained(run_dir).equirecon
        results = evaluate(model, seed, args, done)
        results["seconds"] = results.get("seconds", 0.0) + time.time() - started
        result_file.write_text(json.dumps(results, indent=2))
        print(json.dumps({"seed": seed, "row": name, **results}), flush=True)
    finally:
        result_file.with_suffix(".lock").unlink(missing_ok=True)


def mean_std(values: list[float]) -> str:
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{np.mean(values):.3f} ± {np.std(values, ddof=1):.3f}"


def report(output_dir: Path, rows: list[str], seeds: list[int], header: str, args: argparse.Namespace) -> str:
    """Mean ± sample std over the finished seeds of each row, one table per read-out."""
    files = {name: [result_path(output_dir, seed, name, args) for seed in seeds] for name in rows}
    finished = {name: [json.loads(f.read_text()) for f in paths if f.exists()] for name, paths in files.items()}
    lines = [header, ""]
    for feature in (*FEATURES, "mean_patch_shuffled"):
        if not any(feature in r for results in finished.values() for r in results):
            continue
        lines += [
            f"Features: **{feature}**"
            + (" (θ-shuffled control: chance level)" if feature.endswith("shuffled") else ""),
            "",
            "| configuration | seeds | R² rot | R² color | R² blur | R² trans | mean | k-NN digits |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for name, results in finished.items():
            results = [r for r in results if feature in r]
            if not results:
                continue
            cells = [mean_std([r[feature][key] for r in results if key in r[feature]]) for key in (*FAMILIES, "mean")]
            knn = mean_std([100 * r["knn_digits"] for r in results])
            lines.append(f"| {name} | {len(results)} | " + " | ".join(cells) + f" | {knn} |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="one seed, two rows at 60 steps: the pipeline")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="default 0 1 2 (0 with --quick)")
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps per row (default 300)")
    parser.add_argument("--batch-size", type=int, default=None, help="default 32 (16 with --quick)")
    parser.add_argument("--learning-rate", type=float, default=5e-4)
    parser.add_argument("--num-crops", type=int, default=None, help="benchmark crops (default 4096)")
    parser.add_argument("--folds", type=int, default=5, help="cross-validation folds")
    parser.add_argument("--scored-folds", type=int, default=None, help="score only this many folds (default: all)")
    parser.add_argument(
        "--group-by",
        default="crop",
        choices=("crop", "photo"),
        help="folds of crops (θ read within photos the regressor has seen other crops of: not held out) or of photos "
        "(R² on photos the regressor never saw)",
    )
    parser.add_argument("--regressor-epochs", type=int, default=None, help="at most (early stopping); default 100")
    parser.add_argument("--rows", nargs="+", default=None, choices=[RANDOM_INIT, *ROWS], metavar="ROW")
    parser.add_argument(
        "--eval-dataset",
        default=None,
        help="more photos for the R² benchmark, cross-validated with the embedded ones (image folder, Parquet, "
        "datasets name)",
    )
    parser.add_argument(
        "--photos",
        default="all",
        choices=("all", "held-out"),
        help="embedded photos in the R² benchmark: all 18, or the 4 no row is pretrained on (add --eval-dataset)",
    )
    parser.add_argument("--features", nargs="+", default=list(FEATURES), choices=FEATURES, help="R² read-outs")
    parser.add_argument(
        "--shuffled-families",
        nargs="+",
        default=list(FAMILIES),
        choices=FAMILIES,
        help="families with the shuffled-θ control (on the mean patch read-out)",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--output-dir", default="runs/table1_small")
    parser.add_argument("--report", action="store_true", help="print the table of the finished runs and exit")
    args = parser.parse_args()
    args.seeds = args.seeds or ([0] if args.quick else [0, 1, 2])
    args.steps = args.steps or (60 if args.quick else 300)
    args.batch_size = args.batch_size or (16 if args.quick else 32)
    args.num_crops = args.num_crops or (1024 if args.quick else 4096)
    args.regressor_epochs = args.regressor_epochs or (30 if args.quick else 100)
    args.rows = args.rows or ([RANDOM_INIT, *list(ROWS)[:2]] if args.quick else [RANDOM_INIT, *ROWS])
    if args.threads:
        torch.set_num_threads(args.threads)
    output_dir = Path(args.output_dir)
    settings = {k: v for k, v in vars(args).items() if k not in ("quick", "report", "rows", "output_dir", "threads")}
    header = f"Settings: `{json.dumps(settings)}`"

    if not args.report:
        started = time.time()
        # The rows the comparison rests on (controls, K = 2, K = 1) for every seed first, then the iBOT host, then
        # the other families.
        core = [name for name in args.rows if name in CORE_ROWS]
        ibot = [name for name in args.rows if name in IBOT_ROWS]
        for group in (core, ibot, [name for name in args.rows if name not in (*CORE_ROWS, *IBOT_ROWS)]):
            for seed in args.seeds:
                for name in group:
                    run_one(name, seed, args, output_dir)
        header += f" ({(time.time() - started) / 60:.1f} min this invocation)"
    text = report(output_dir, args.rows, args.seeds, header, args)
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / f"table1_small-by-{args.group_by}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
