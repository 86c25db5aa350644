"""``equirecon evaluate equivariance|knn|linear``: evaluate a frozen checkpoint, write JSON (and a PNG).

Examples::

    equirecon evaluate equivariance --model runs/tiny --output results/equivariance.json
    equirecon evaluate equivariance --model facebook/dinov2-small --dataset ./my_photos --feature cls
    equirecon evaluate knn --model runs/tiny                       # offline default: scikit-learn digits
    equirecon evaluate linear --model runs/tiny --dataset ./pets --test_split validation --label_column label

``--model`` is a local directory or a Hub repository (any ``AutoModel`` vision checkpoint, so baselines run
through the same code). The JSON holds the results, the settings that produced them, and ``eval_results``
entries (``huggingface_hub.EvalResult`` keyword arguments) for the model card.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger("equirecon.evaluate")

__all__ = ["build_parser", "main"]

_EQUIVARIANCE_FAMILIES = ("rotation", "color", "blur", "translation", "se2")
# features.FEATURE_KINDS, spelled out so that `--help` does not import torch.
_FEATURE_KINDS = ("cls", "mean_patch", "cls+mean_patch", "pooled", "invariant", "equivariant")


def _add_common(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model")
    group.add_argument("--model", required=True, help="checkpoint directory or Hub repository id")
    group.add_argument("--revision", default=None, help="Hub revision (branch, tag or commit) of --model")
    group.add_argument("--trust_remote_code", action="store_true", help="allow custom modelling code from the Hub")
    group.add_argument("--image_size", type=int, default=None, help="input resolution (default: the checkpoint's)")
    group.add_argument("--device", default="auto", help="'auto' (CUDA if available), 'cpu', 'cuda:0', ...")
    group.add_argument(
        "--dtype", default=None, choices=("float32", "bfloat16", "float16"), help="model weights' dtype on load"
    )
    group.add_argument("--batch_size", type=int, default=64, help="images per forward pass")
    group = parser.add_argument_group("data")
    group.add_argument("--split", default="train", help="dataset split to use (to train on, for probes)")
    group.add_argument("--test_split", default=None, help="held-out split (default: hold out part of --split)")
    group.add_argument("--image_column", default=None, help="image column (default: found automatically)")
    group.add_argument("--test_fraction", type=float, default=0.25, help="fraction held out without --test_split")
    group.add_argument("--max_images", type=int, default=None, help="use at most this many images per split")
    group = parser.add_argument_group("run")
    group.add_argument("--seed", type=int, default=0)
    group.add_argument("--output", type=Path, default=None, help="write the results JSON here (else print it)")
    group.add_argument("--no_progress", action="store_true", help="hide progress bars")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="equirecon evaluate",
        description="Evaluate a frozen vision encoder: equivariance R² benchmark, k-NN or linear probe.",
    )
    tasks = parser.add_subparsers(dest="task", required=True, metavar="{equivariance,knn,linear}")

    equivariance = tasks.add_parser(
        "equivariance",
        help="R² of regressing transformation parameters from (I, g(I)) features (paper Table 1)",
        description="For each family, regress θ from the frozen features of a crop and its transformed copy "
        "with SIE's MLP; report R² on crops of held-out photos.",
    )
    equivariance.add_argument(
        "--dataset",
        default="embedded",
        help="'embedded' (bundled photos), an image folder, Parquet, or a Hub dataset (default: embedded)",
    )
    _add_common(equivariance)
    group = equivariance.add_argument_group("benchmark")
    group.add_argument(
        "--families",
        nargs="+",
        default=["rotation", "color", "blur", "translation"],
        choices=_EQUIVARIANCE_FAMILIES,
        help="transformation families (default: the paper's four)",
    )
    group.add_argument(
        "--feature",
        default="auto",
        choices=("auto", *_FEATURE_KINDS),
        help="auto (pooled for EquiRecon, else mean_patch), pooled, "
        "invariant, equivariant, cls, mean_patch or cls+mean_patch",
    )
    group.add_argument("--num_train", type=int, default=2048, help="crops to fit the regressor on")
    group.add_argument("--num_test", type=int, default=1024, help="held-out crops to score on")
    group.add_argument(
        "--crop_scale",
        type=float,
        nargs=2,
        default=(0.25, 1.0),
        metavar=("MIN", "MAX"),
        help="crop area range, as a fraction of the largest crop of the photo",
    )
    group.add_argument(
        "--border",
        choices=("context", "fill"),
        default="context",
        help="what rotation/translation bring in at the crop border: the surrounding photo (default; θ cannot be "
        "read off black corners) or black fill, as in the pretraining views",
    )
    group.add_argument(
        "--per_output", action="store_true", help="report the mean of per-parameter R² instead of SIE's global-mean R²"
    )
    group.add_argument("--epochs", type=int, default=50, help="regressor epochs")
    group.add_argument("--regressor_batch_size", type=int, default=256)
    group.add_argument("--learning_rate", type=float, default=1e-3, help="regressor Adam learning rate")
    group.add_argument("--no_standardize", action="store_true", help="fit on raw features and θ, exactly as SIE")
    group.add_argument("--cache_dir", type=Path, default=None, help="cache features here across runs")
    group.add_argument("--plot", type=Path, default=None, help="bar-chart PNG (default: next to --output)")
    group.add_argument("--no_plot", action="store_true", help="do not write the PNG")

    for name, help_text in (("knn", "weighted cosine k-NN accuracy"), ("linear", "logistic-regression probe")):
        probe = tasks.add_parser(name, help=help_text, description=f"{help_text} on frozen features.")
        probe.add_argument(
            "--dataset",
            default="digits",
            help="'digits' or 'lfw_subset' (offline built-ins), an "
            "image folder with class sub-folders, Parquet, or a Hub dataset (default: digits)",
        )
        probe.add_argument("--label_column", default="label", help="column with the class labels")
        _add_common(probe)
        group = probe.add_argument_group("probe")
        group.add_argument(
            "--feature",
            default=None,
            choices=_FEATURE_KINDS,
            help="cls+mean_patch (default; mean_patch for models without "
            "CLS), cls, mean_patch, pooled, invariant or equivariant",
        )
        if name == "knn":
            group.add_argument("--k", type=int, nargs="+", default=[20, 200], help="numbers of neighbours")
            group.add_argument("--temperature", type=float, default=0.07, help="softmax temperature of the votes")
        else:
            group.add_argument(
                "--weight_decays",
                type=float,
                nargs="+",
                default=None,
                help="L2 penalties to choose from on a validation split (default: 1e-6 ... 1)",
            )
            group.add_argument("--max_iter", type=int, default=200, help="L-BFGS iterations per fit")
    return parser


def _run_equivariance(args: argparse.Namespace, model: Any, spec: Any) -> tuple[dict[str, Any], Any, str]:
    from ..training.data import EMBEDDED_VALIDATION_PHOTOS, embedded_photos, find_image_column, load_images
    from .cache import FeatureCache
    from .equivariance import run_equivariance_benchmark
    from .regression import RegressorConfig

    test_images = None
    if args.dataset == "embedded" and args.split == "train" and args.test_split is None:
        images, test_images = embedded_photos("train"), embedded_photos("validation")
        dataset_name = "embedded photos"
        logger.info(
            "images: the %d embedded training photos; held out: the %d embedded validation photos (%s)",
            len(images),
            len(test_images),
            ", ".join(EMBEDDED_VALIDATION_PHOTOS),
        )
    else:
        images = load_images(args.dataset, split=args.split, image_column=args.image_column)
        if args.test_split is not None:
            test_images = load_images(args.dataset, split=args.test_split, image_column=args.image_column)
        dataset_name = str(args.dataset)
        logger.info(
            "images: %s (split %r%s)",
            args.dataset,
            args.split,
            f", held out: split {args.test_split!r}"
            if args.test_split
            else f", {args.test_fraction:.0%} of the photos held out",
        )
    column = find_image_column(images, args.image_column)
    regressor = RegressorConfig(
        epochs=args.epochs,
        batch_size=args.regressor_batch_size,
        learning_rate=args.learning_rate,
        standardize_inputs=not args.no_standardize,
        standardize_targets=not args.no_standardize,
    )
    result = run_equivariance_benchmark(
        model,
        images,
        test_images=test_images,
        families=args.families,
        feature=args.feature,
        num_train=args.num_train,
        num_test=args.num_test,
        test_fraction=args.test_fraction,
        input_spec=spec,
        crop_scale=tuple(args.crop_scale),
        border=args.border,
        regressor=regressor,
        multioutput="per_output" if args.per_output else "global",
        batch_size=args.batch_size,
        seed=args.seed,
        cache=FeatureCache(args.cache_dir) if args.cache_dir is not None else None,
        image_column=column,
        max_images=args.max_images,
        progress=not args.no_progress,
    )
    report = {"results": result.to_dict(), "eval_results": result.to_eval_results(dataset_name)}
    return report, result, dataset_name


def _probe_feature(args: argparse.Namespace, model: Any) -> str:
    from .features import num_prefix_tokens

    if args.feature is not None:
        return args.feature
    if num_prefix_tokens(model) == 0:
        logger.info("the model has no CLS token: probing mean_patch features")
        return "mean_patch"
    return "cls+mean_patch"


def _run_probe(args: argparse.Namespace, model: Any, spec: Any) -> tuple[dict[str, Any], str]:
    from .features import encode_images
    from .labelled import BUILTIN_LABELLED_SETS, load_labelled_images
    from .probes import DEFAULT_WEIGHT_DECAYS, knn_probe, linear_probe

    if args.dataset in BUILTIN_LABELLED_SETS:
        logger.info(
            "labelled set: %s, %s",
            BUILTIN_LABELLED_SETS[args.dataset],
            "the default (no --dataset given)" if args.dataset == "digits" else "built in",
        )
    data = load_labelled_images(
        args.dataset,
        split=args.split,
        test_split=args.test_split,
        image_column=args.image_column,
        label_column=args.label_column,
        test_fraction=args.test_fraction,
        max_images=args.max_images,
        seed=args.seed,
    )
    logger.info(
        "%d training and %d test images, %d classes, resized to %s",
        len(data.train_labels),
        len(data.test_labels),
        data.num_classes,
        spec.image_size,
    )
    kind = _probe_feature(args, model)
    progress = not args.no_progress
    train = encode_images(
        model,
        data.train_images,
        input_spec=spec,
        kinds=(kind,),
        batch_size=args.batch_size,
        progress=progress,
        description="train features",
    )[kind]
    test = encode_images(
        model,
        data.test_images,
        input_spec=spec,
        kinds=(kind,),
        batch_size=args.batch_size,
        progress=progress,
        description="test features",
    )[kind]
    device = next(model.parameters()).device
    common = {"num_classes": data.num_classes, "device": device}
    if args.task == "knn":
        result = knn_probe(
            train, data.train_labels, test, data.test_labels, k=args.k, temperature=args.temperature, **common
        )
        metrics = [(f"k-NN top-1 (k={k})", value) for k, value in result.top1.items()]
    else:
        result = linear_probe(
            train,
            data.train_labels,
            test,
            data.test_labels,
            weight_decays=args.weight_decays or DEFAULT_WEIGHT_DECAYS,
            max_iter=args.max_iter,
            seed=args.seed,
            **common,
        )
        metrics = [("linear probe top-1", result.accuracy)]
    eval_results = [
        {
            "task_type": "image-classification",
            "task_name": f"{'k-NN' if args.task == 'knn' else 'Linear'} probe on frozen {kind} features",
            "dataset_type": str(args.dataset),
            "dataset_name": data.description,
            "metric_type": "accuracy",
            "metric_name": name,
            "metric_value": round(float(value), 4),
        }
        for name, value in metrics
    ]
    report = {
        "results": {**result.to_dict(), "feature": kind, "class_names": data.class_names},
        "eval_results": eval_results,
    }
    return report, data.description


def _summary(task: str, report: dict[str, Any]) -> str:
    results = report["results"]
    if task == "equivariance":
        names = list(results["r2"])
        lines = [
            f"Equivariance R² ({results['r2_convention']}), feature {results['feature']}:",
            "| " + " | ".join(f"R² {n}" for n in names) + " | mean |",
            "|---" * (len(names) + 1) + "|",
            "| " + " | ".join(f"{results['r2'][n]:.3f}" for n in names) + f" | {results['mean_r2']:.3f} |",
        ]
        return "\n".join(lines)
    if task == "knn":
        return "k-NN top-1: " + ", ".join(f"k={k}: {v:.4f}" for k, v in results["top1"].items())
    return f"linear probe top-1: {results['accuracy']:.4f} (weight decay {results['weight_decay']:g})"


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot serialise {type(value).__name__}")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``equirecon evaluate``; returns the process exit code."""
    args = build_parser().parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    if args.no_progress:  # also the bars of transformers (weight loading) and datasets (folder loading)
        import datasets
        from transformers.utils import logging as transformers_logging

        datasets.disable_progress_bars()
        transformers_logging.disable_progress_bar()
    try:
        from .. import __version__
        from .loading import load_model

        model, spec = load_model(
            args.model,
            trust_remote_code=args.trust_remote_code,
            revision=args.revision,
            device=args.device,
            dtype=args.dtype,
            image_size=args.image_size,
        )
        logger.info("model: %s (%s), input %s", args.model, type(model).__name__, spec.image_size)
        if args.task == "equivariance":
            report, result, dataset_name = _run_equivariance(args, model, spec)
        else:
            report, dataset_name = _run_probe(args, model, spec)
            result = None
    except (ValueError, FileNotFoundError, OSError, ImportError) as error:
        print(f"equirecon evaluate {args.task}: error: {error}", file=sys.stderr)
        return 1

    # The result's own keys stay at the top level, so the file is also what `EquivarianceResult.to_dict()` gives
    # (the model-card generator reads `equivariance_results.json` in that shape).
    document = {
        **report["results"],
        "model": args.model,
        "revision": args.revision,
        "dataset": dataset_name,
        "equirecon_version": __version__,
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "arguments": {key: value for key, value in vars(args).items() if key != "task"},
        "eval_results": report["eval_results"],
    }
    text = json.dumps(document, indent=2, default=_json_default, allow_nan=True)
    print(_summary(args.task, report))
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text + "\n")
        print(f"results written to {args.output}")
    else:
        print(text)

    if result is not None and not args.no_plot:
        from .plotting import plot_equivariance

        plot_path = args.plot or (args.output.with_name(args.output.stem + "_r2.png") if args.output else None)
        if plot_path is not None:
            plot_equivariance(result, plot_path, title=f"{args.model}: equivariance R² ({result.feature} features)")
            print(f"bar chart written to {plot_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
