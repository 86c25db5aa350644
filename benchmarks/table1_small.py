"""The paper's Table 1 in miniature: does the reconstruction task put transformation information back into the
features that the invariance objective removes?

Same data (crops of the embedded photos), same budget, same seed for every row; a tiny ViT (the `tiny` preset:
64² crops, 8×8 patches, 6 layers) is pretrained with

    (a) VICReg alone, with the rotation in its base augmentations (λ = 0, no decoders),
    (b) VICReg + reconstruction, g = rotation and g = SE(2) (K = 2),
    (c) VICReg + reconstruction, g = rotation, K = 1,

then the equivariance benchmark regresses θ of rotation / colour / blur / translation from frozen features of
(I, g_θ(I)) on held-out photos. R² is reported for two read-outs: the backbone's mean patch token and the
equivariant part of the head (mean over patches). A randomly initialised encoder is the reference row.

The regressor is fitted on crops of the 14 training photos and scored on crops of the 4 held-out ones, so it must
generalise across photos: with fewer than ~4000 training crops it does not, and every row scores R² rot ≤ 0
(measured). Hence 4096 crops by default.

    python benchmarks/table1_small.py            # ~30 min on 2 CPU cores
    python benchmarks/table1_small.py --quick    # ~5 min: the pipeline, not the effect
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from transformers import set_seed  # noqa: E402

from equirecon import EquiReconConfig, EquiReconForPreTraining  # noqa: E402
from equirecon.evaluation import FeatureCache, RegressorConfig, run_equivariance_benchmark  # noqa: E402
from equirecon.training.arguments import (  # noqa: E402
    DataArguments,
    EquiReconTrainingArguments,
    EvaluationArguments,
    ModelArguments,
)
from equirecon.training.data import load_images  # noqa: E402
from equirecon.training.pretrain import run  # noqa: E402

FAMILIES = ("rotation", "color", "blur", "translation")
FEATURES = ("mean_patch", "equivariant")
ROWS = {
    # name: (transformation family, reconstruction weight λ, K)
    "VICReg (all, rot in views)": ("rotation", 0.0, 2),
    "Ours(VICReg, all, rot), K=2": ("rotation", 1.0, 2),
    "Ours(VICReg, all, SE(2)), K=2": ("se2", 1.0, 2),
    "Ours(VICReg, all, rot), K=1": ("rotation", 1.0, 1),
}


def pretrain(name: str, family: str, weight: float, k: int, args: argparse.Namespace, output_dir: Path) -> Path:
    model_args = ModelArguments(
        preset="tiny", config_overrides=f"num_intermediates={k},reconstruction_weight={weight}"
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
        seed=args.seed,
        transformation_family=family,
        view_preset="all",
        disable_tqdm=True,
        use_cpu=not torch.cuda.is_available(),
    )
    print(
        f"[{name}] pretraining {args.steps} steps, batch {args.batch_size}, g={family}, λ={weight}, K={k}", flush=True
    )
    run(model_args, data_args, training_args, EvaluationArguments(equivariance_benchmark=False))
    return output_dir


def evaluate(model, args: argparse.Namespace) -> dict[str, dict[str, float]]:
    """R² per feature read-out and family, sharing the encoded features across read-outs."""
    cache = FeatureCache()
    train_photos, held_out = load_images("embedded", split="train"), load_images("embedded", split="validation")
    results = {}
    for feature in FEATURES:
        result = run_equivariance_benchmark(
            model,
            train_photos,
            test_images=held_out,
            families=FAMILIES,
            feature=feature,
            num_train=args.num_train,
            num_test=args.num_test,
            regressor=RegressorConfig(epochs=args.regressor_epochs),
            seed=args.seed,
            cache=cache,
            progress=False,
        )
        results[feature] = {**result.r2, "mean": result.mean_r2}
    return results


def markdown(table: dict[str, dict[str, dict[str, float]]], command: str, seconds: float) -> str:
    lines = [f"Command: `{command}` ({seconds / 60:.1f} min)", ""]
    for feature in FEATURES:
        lines += [
            f"Features: **{feature}**",
            "",
            "| configuration | R² rot | R² color | R² blur | R² trans | mean |",
            "|---|---|---|---|---|---|",
        ]
        for name, results in table.items():
            r = results[feature]
            lines.append(
                f"| {name} | {r['rotation']:.3f} | {r['color']:.3f} | {r['blur']:.3f} | {r['translation']:.3f} "
                f"| {r['mean']:.3f} |"
            )
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="rows (a) and (b, rot) at 60 steps: the pipeline")
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps per row (default 300)")
    parser.add_argument("--batch-size", type=int, default=None, help="default 32 (16 with --quick)")
    parser.add_argument("--learning-rate", type=float, default=5e-4)
    parser.add_argument("--num-train", type=int, default=None, help="regressor training crops (default 4096)")
    parser.add_argument("--num-test", type=int, default=None, help="held-out crops (default 1024)")
    parser.add_argument("--regressor-epochs", type=int, default=None, help="default 30")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rows", nargs="+", default=None, choices=list(ROWS), metavar="ROW")
    parser.add_argument("--output-dir", default="runs/table1_small")
    args = parser.parse_args()
    args.steps = args.steps or (60 if args.quick else 300)
    args.batch_size = args.batch_size or (16 if args.quick else 32)
    args.num_train = args.num_train or (1024 if args.quick else 4096)
    args.num_test = args.num_test or (256 if args.quick else 1024)
    args.regressor_epochs = args.regressor_epochs or (20 if args.quick else 30)
    args.rows = args.rows or (list(ROWS)[:2] if args.quick else list(ROWS))
    command = (
        "python benchmarks/table1_small.py "
        + " ".join(
            f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k not in ("quick", "rows", "output_dir")
        )
        + " --rows "
        + " ".join(f"'{row}'" for row in args.rows)
    )
    started = time.time()
    output_dir = Path(args.output_dir)
    table: dict[str, dict[str, dict[str, float]]] = {}

    if not args.quick:
        set_seed(args.seed)
        reference = EquiReconForPreTraining(EquiReconConfig.from_preset("tiny")).equirecon
        table["random initialisation"] = evaluate(reference, args)
    for index, name in enumerate(args.rows):
        family, weight, k = ROWS[name]
        run_dir = pretrain(name, family, weight, k, args, output_dir / f"row{index}")
        model = EquiReconForPreTraining.from_pretrained(run_dir).equirecon
        table[name] = evaluate(model, args)
        print(json.dumps({name: table[name]["mean_patch"]}), flush=True)

    text = markdown(table, command, time.time() - started)
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "table1_small.json").write_text(json.dumps(table, indent=2))
    (output_dir / "table1_small.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
