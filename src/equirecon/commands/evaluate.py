"""``equirecon evaluate equivariance|knn|linear``: evaluate a frozen checkpoint, write JSON (and a PNG).

Arguments are dataclasses for `HfArgumentParser`, as for `equirecon pretrain` and `equirecon finetune`; a JSON/YAML
recipe given with ``--config FILE`` sets defaults that later flags override. Examples::

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
import dataclasses
import datetime
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from transformers import HfArgumentParser

from ..argument_checks import ArgumentError, check_model_path
from ..evaluation.arguments import (
    TASK_ARGUMENTS,
    EvaluateDataArguments,
    EvaluateModelArguments,
    EvaluateRunArguments,
)
from ..imaging.fashion_mnist import FASHION_MNIST
from ..imaging.fashion_mnist import check_installed as check_fashion_mnist
from .parsing import config_action, format_help, parse_dataclass_arguments, pop_config_file
from .runner import setup

logger = logging.getLogger("equirecon.evaluate")

__all__ = ["main", "parse_arguments"]

_DEFAULT_DATASETS = {"equivariance": "embedded", "knn": "digits", "linear": "digits"}

_EXAMPLES = {
    "equivariance": "equirecon evaluate equivariance --model runs/equirecon-tiny --output results.json",
    "knn": "equirecon evaluate knn --model runs/equirecon-tiny --dataset digits",
    "linear": "equirecon evaluate linear --model runs/equirecon-tiny --dataset ./pets --test_split validation",
}

_USAGE = "equirecon evaluate {equivariance,knn,linear} --model MODEL [--config RECIPE] [options]"


def parse_arguments(argv: Sequence[str]) -> argparse.Namespace:
    """``TASK [--config FILE] [flags]`` → one namespace of every argument of the task (recipe values first, then the
    command line); a bad argument raises a one-line `ArgumentError`."""
    argv = list(argv)
    if not argv or argv[0] not in TASK_ARGUMENTS:
        if argv and argv[0] in ("-h", "--help"):
            print(
                f"usage: {_USAGE}\n\nEvaluate a frozen vision encoder: equivariance R² benchmark, k-NN or linear "
                "probe.\n`equirecon evaluate TASK --help` lists a task's arguments."
            )
            raise SystemExit(0)
        raise ArgumentError(f"name the task, one of {list(TASK_ARGUMENTS)} (usage: {_USAGE})")
    task, argv = argv[0], argv[1:]
    dataclasses_ = (EvaluateModelArguments, EvaluateDataArguments, EvaluateRunArguments, TASK_ARGUMENTS[task])
    parser = HfArgumentParser(dataclasses_)
    if "-h" in argv or "--help" in argv:
        print(
            format_help(
                parser,
                usage=_USAGE.replace("{equivariance,knn,linear}", task),
                description=" ".join((TASK_ARGUMENTS[task].__doc__ or "").split()),
                example=_EXAMPLES[task],
                own=dataclasses_,
                extra=[config_action()],
            )
        )
        raise SystemExit(0)
    recipe, argv = pop_config_file(argv)
    parsed = parse_dataclass_arguments(parser, recipe + argv, "evaluate")
    check_model_path(parsed[0].model)
    args = argparse.Namespace(task=task, **{k: v for part in parsed for k, v in dataclasses.asdict(part).items()})
    args.dataset = args.dataset or _DEFAULT_DATASETS[task]
    for name in ("output", "plot", "cache_dir"):
        if getattr(args, name, None) is not None:
            setattr(args, name, Path(getattr(args, name)))
    return args


def _run_equivariance(
    args: argparse.Namespace, model: Any, spec: Any, shuffled_control: bool = True
) -> tuple[dict[str, Any], Any, str]:
    """One encoder's benchmark; the θ-shuffled control (chance) only where asked: the model's row carries it, and a
    reference row, scored on the same crops, needs no second one."""
    from ..evaluation.cache import FeatureCache
    from ..evaluation.equivariance import dataset_settings, family_configs, run_equivariance_benchmark
    from ..evaluation.regression import RegressorConfig
    from ..imaging.decoding import decode_images
    from ..imaging.sources import (
        EMBEDDED_VALIDATION_PHOTOS,
        embedded_photos,
        find_image_column,
        load_images,
        undecoded_images,
    )

    settings = dataset_settings(args.dataset)
    group_by = settings["group_by"] if args.group_by == "auto" else args.group_by
    test_images = None
    if args.dataset == "embedded" and args.split == "train" and args.test_split is None:
        # The photos an equirecon model pretrained on the embedded set has not seen (`--split all` adds the others).
        images = embedded_photos("validation")
        dataset_name = "embedded photos (validation)"
        logger.info(
            "images: the %d embedded validation photos (%s), cross-validated by %s (%d folds)",
            len(images),
            ", ".join(EMBEDDED_VALIDATION_PHOTOS),
            group_by,
            args.folds,
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
            else f", cross-validated by {group_by} ({args.folds} folds)",
        )
    column = find_image_column(images, args.image_column)
    # Decoded here, skipping (and counting) files that cannot be read, so one bad photo does not end the run.
    images, _, skipped = decode_images(undecoded_images(images, column), limit=args.max_images)
    if test_images is not None:
        test_column = find_image_column(test_images, args.image_column)
        decoded = decode_images(undecoded_images(test_images, test_column), limit=args.max_images)
        test_images, skipped = decoded.images, skipped + decoded.skipped
    regressor = RegressorConfig(
        epochs=args.epochs,
        patience=args.patience,
        batch_size=args.regressor_batch_size,
        learning_rate=args.learning_rate,
        standardize_inputs=not args.no_standardize,
        standardize_targets=not args.no_standardize,
    )
    if args.dataset == FASHION_MNIST and "color" in args.families:
        logger.info("fashion_mnist is greyscale: the colour family is brightness and contrast alone")
    result = run_equivariance_benchmark(
        model,
        images,
        test_images=test_images,
        families=family_configs(args.families, args.dataset),
        feature=args.feature,
        num_crops=args.num_crops,
        folds=args.folds,
        group_by="photo" if test_images is not None else group_by,
        scored_folds=args.scored_folds,
        input_spec=spec,
        crop_scale=tuple(args.crop_scale or settings["crop_scale"]),
        border=settings["border"] if args.border == "auto" else args.border,
        regressor=regressor,
        multioutput="per_output" if args.per_output else "global",
        batch_size=args.batch_size,
        seed=args.seed,
        cache=FeatureCache(args.cache_dir) if args.cache_dir is not None else None,
        max_images=args.max_images,
        progress=not args.no_progress,
        shuffled_control=shuffled_control,
        precision=args.precision,
    )
    report = {
        "results": {**result.to_dict(), "skipped_images": skipped},
        "eval_results": result.to_eval_results(dataset_name),
    }
    return report, result, dataset_name


def _probe_feature(args: argparse.Namespace, model: Any) -> str:
    from ..evaluation.features import num_prefix_tokens

    if args.feature is not None:
        return args.feature
    if num_prefix_tokens(model) == 0:
        logger.info("the model has no CLS token: probing mean_patch features")
        return "mean_patch"
    return "cls+mean_patch"


def _run_probe(args: argparse.Namespace, model: Any, spec: Any) -> tuple[dict[str, Any], str]:
    from ..evaluation.features import encode_images
    from ..evaluation.labelled import BUILTIN_LABELLED_SETS, load_labelled_images
    from ..evaluation.probes import DEFAULT_WEIGHT_DECAYS, knn_probe, linear_probe

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
    train, test = (
        encode_images(
            model,
            images,
            input_spec=spec,
            kinds=(kind,),
            batch_size=args.batch_size,
            progress=progress,
            description=f"{part} features",
            precision=args.precision,
        )[kind]
        for part, images in (("train", data.train_images), ("test", data.test_images))
    )
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
        "results": {
            **result.to_dict(),
            "feature": kind,
            "class_names": data.class_names,
            "skipped_images": data.skipped,
        },
        "eval_results": eval_results,
    }
    return report, data.description


def _summary(task: str, report: dict[str, Any]) -> str:
    results = report["results"]
    skipped = results.get("skipped_images", 0)
    note = f"\n{skipped} image(s) could not be decoded and were skipped." if skipped else ""
    return _result_lines(task, results) + note


def _result_lines(task: str, results: dict[str, Any]) -> str:
    if task == "equivariance":
        from ..reporting import equivariance_table, lowered_by_training

        heading = f"Equivariance R² ({results['r2_convention']}), feature {results['feature']}, with its controls:"
        return "\n".join([heading, equivariance_table(results), *lowered_by_training(results)])
    reference = results.get("reference")
    if task == "knn":
        line = "k-NN top-1: " + ", ".join(f"k={k}: {v:.4f}" for k, v in results["top1"].items())
        control = reference and ", ".join(f"k={k}: {v:.4f}" for k, v in reference["top1"].items())
    else:
        line = f"linear probe top-1: {results['accuracy']:.4f} (weight decay {results['weight_decay']:g})"
        control = reference and f"{reference['accuracy']:.4f} (weight decay {reference['weight_decay']:g})"
    return line + (f"\n  the control, {reference['label']}: {control}" if reference else "")


def _reference_label(args: argparse.Namespace) -> str:
    if args.reference == "random":
        return f"random initialisation (the same architecture, untrained, seed {args.seed})"
    return f"reference model {args.reference}"


def _reference_model(args: argparse.Namespace, model: Any) -> Any:
    """The control encoder `--reference` names: the model's architecture at random initialisation, or a checkpoint."""
    import torch
    from transformers import AutoModel

    from ..evaluation.loading import load_model

    if args.reference != "random":
        reference, _ = load_model(
            args.reference, trust_remote_code=args.trust_remote_code, device=args.device, dtype=args.dtype
        )
        return reference
    torch.manual_seed(args.seed)
    reference = AutoModel.from_config(model.config, trust_remote_code=args.trust_remote_code, dtype=model.dtype)
    return reference.eval().requires_grad_(False).to(model.device)


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
    setup(log_format="%(message)s")
    try:
        args = parse_arguments(sys.argv[1:] if argv is None else argv)
    except SystemExit as exit_:  # --help
        return int(exit_.code or 0)
    except (ArgumentError, ValueError) as error:
        print(f"equirecon evaluate: error: {error}", file=sys.stderr)
        return 2
    try:
        return _evaluate(args)
    except KeyboardInterrupt:
        print(f"equirecon evaluate {args.task}: interrupted; nothing was written.", file=sys.stderr)
        return 130


def _evaluate(args: argparse.Namespace) -> int:
    if args.no_progress:  # also the bars of transformers (weight loading) and datasets (folder loading)
        import datasets
        from transformers.utils import logging as transformers_logging

        datasets.disable_progress_bars()
        transformers_logging.disable_progress_bar()
    if args.dataset == FASHION_MNIST:  # a missing system package stops before the model is loaded
        try:
            check_fashion_mnist()
        except FileNotFoundError as error:
            print(f"equirecon evaluate {args.task}: error: {error}", file=sys.stderr)
            return 2
    try:
        from .. import __version__
        from ..evaluation.loading import load_model

        model, spec = load_model(
            args.model,
            trust_remote_code=args.trust_remote_code,
            revision=args.revision,
            device=args.device,
            dtype=args.dtype,
            image_size=args.image_size,
        )
        logger.info("model: %s (%s), input %s", args.model, type(model).__name__, spec.image_size)
        encoders = {args.model: model}
        if args.reference != "none":  # the control, scored on the same data
            encoders[_reference_label(args)] = _reference_model(args, model)
        reports, results = {}, {}
        for label, encoder in encoders.items():
            logger.info("scoring %s", label)
            if args.task == "equivariance":
                reports[label], results[label], dataset_name = _run_equivariance(
                    args, encoder, spec, shuffled_control=label == args.model
                )
            else:
                reports[label], dataset_name = _run_probe(args, encoder, spec)
        report, result = reports.pop(args.model), results.get(args.model)
        for label, control in reports.items():  # next to the model's results, in the shape `equirecon pretrain` writes
            control = control["results"]
            report["results"]["reference"] = (
                {"label": label, "read_outs": {control["feature"]: control}}
                if args.task == "equivariance"
                else {"label": label, **control}
            )
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
        from ..evaluation.plotting import plot_equivariance

        plot_path = args.plot or (args.output.with_name(args.output.stem + "_r2.png") if args.output else None)
        if plot_path is not None:
            title = f"{args.model}: equivariance R² ({result.feature} features)"
            plot_equivariance(results, plot_path, title=title)
            print(f"bar chart written to {plot_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
