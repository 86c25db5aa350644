"""`equirecon pretrain`: pretraining end to end with `EquiReconTrainer`, then the equivariance benchmark.

With no arguments it pretrains the `tiny` preset on the embedded photos on CPU in a few minutes, evaluates it and
writes a complete, loadable model directory (weights, config, preprocessor, Hub custom code, logs, a picture of the
reconstructions, the equivariance results and a model card).
"""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from transformers import HfArgumentParser
from transformers.image_processing_utils import ImageProcessingMixin

from ..imaging.sources import load_images
from ..model_card import EQUIVARIANCE_FILE
from ..modeling import EquiReconForPreTraining
from ..reporting import equivariance_table, lowered_by_training
from ..training import pretrain
from ..training.arguments import DataArguments, EquiReconTrainingArguments, EvaluationArguments, ModelArguments
from .parsing import config_action, format_help, parse_dataclass_arguments, pop_config_file
from .runner import run_command

__all__ = ["evaluate_equivariance", "main", "parse_arguments", "run"]

logger = logging.getLogger(__name__)

Arguments = tuple[ModelArguments, DataArguments, EquiReconTrainingArguments, EvaluationArguments]


def parse_arguments(argv: list[str]) -> Arguments:
    """Recipe file first, then the command line; unknown keys and invalid values raise `ArgumentError`."""
    dataclasses_ = (ModelArguments, DataArguments, EquiReconTrainingArguments, EvaluationArguments)
    parser = HfArgumentParser(dataclasses_)
    if "-h" in argv or "--help" in argv:
        print(
            format_help(
                parser,
                usage="equirecon pretrain [--config RECIPE] [options]",
                description="Pretrain with EquiReconTrainer, run the equivariance benchmark on the validation split "
                "and write a loadable model directory with its model card. With no arguments: the tiny preset on "
                "the embedded photos, a few minutes on a CPU. `--init_from facebook/dinov2-small` (or a local "
                "directory) starts the encoder from a transformers DINOv2/ViT checkpoint instead of at random. "
                "Checkpoints every --save_steps; after Ctrl-C, `--resume_from_checkpoint last` continues the run.",
                example="equirecon pretrain --config recipes/pretrain-tiny-cpu.json --dataset ./photos --output_dir runs/a",
                own=dataclasses_,
                extra=[config_action()],
            )
        )
        raise SystemExit(0)
    recipe, argv = pop_config_file(list(argv))
    return parse_dataclass_arguments(parser, recipe + argv, "pretrain")


def evaluate_equivariance(
    model: EquiReconForPreTraining,
    image_processor: ImageProcessingMixin | None,
    data_args: DataArguments,
    evaluation_args: EvaluationArguments,
    seed: int,
    output_dir: Path,
    reference: pretrain.ReferenceEncoder | None = None,
) -> dict[str, Any]:
    """The paper's equivariance R² benchmark on the frozen encoder; writes `equivariance_results.json`.

    Every read-out in `evaluation_args.equivariance_features` is scored (the first, with its θ-shuffled control, is
    the headline), and so is `reference`, the model the run started from (a random initialisation of the same
    config and seed, or the checkpoint of `--init_from` / `--model_name_or_path`), so the card shows what this run's
    pretraining added. The crops are cut from the validation split's photos (never seen in pretraining) with the
    protocol of `equirecon evaluate equivariance` (its folds, scored folds, seed and the dataset's settings), so the
    card and that command give the same model the same R²; what `evaluation_args` leaves unset (None) is that
    command's default. Inputs are normalised as `image_processor`, the run's, says (a warm start keeps its
    checkpoint's statistics)."""
    from ..evaluation import FeatureCache, InputSpec, RegressorConfig, run_equivariance_benchmark
    from ..evaluation.arguments import DEFAULT_PRECISION, DEFAULT_SEED, EquivarianceArguments
    from ..evaluation.equivariance import dataset_settings, family_configs

    chosen = {
        "families": evaluation_args.equivariance_families,
        "num_crops": evaluation_args.equivariance_num_crops,
        "epochs": evaluation_args.equivariance_epochs,
    }
    protocol = replace(EquivarianceArguments(), **{name: value for name, value in chosen.items() if value is not None})
    settings = dataset_settings(data_args.dataset)

    # Photos the encoder was not pretrained on.
    images = load_images(data_args.dataset, split=data_args.validation_split)
    features = evaluation_args.equivariance_features
    input_spec = InputSpec.from_model(model, image_processor)

    def score(encoder: torch.nn.Module, shuffled_control: bool) -> dict[str, Any]:
        cache = FeatureCache()  # one encoding pass shared by the read-outs
        return {
            feature: run_equivariance_benchmark(
                encoder,
                images,
                families=family_configs(protocol.families, data_args.dataset),
                feature=feature,
                input_spec=input_spec,
                num_crops=protocol.num_crops,
                folds=protocol.folds,
                scored_folds=protocol.scored_folds,
                group_by=settings["group_by"],
                crop_scale=settings["crop_scale"],
                border=settings["border"],
                regressor=RegressorConfig(epochs=protocol.epochs, patience=protocol.patience),
                max_images=evaluation_args.equivariance_max_images,
                image_column=data_args.image_column or "image",
                seed=DEFAULT_SEED,
                cache=cache,
                shuffled_control=shuffled_control and feature == features[0],
                precision=DEFAULT_PRECISION,
            )
            for feature in features
        }

    read_outs = score(model.equirecon, shuffled_control=True)
    headline = read_outs[features[0]]
    dataset_name = "equirecon embedded photos (validation)" if data_args.dataset == "embedded" else data_args.dataset
    # The shape `equirecon evaluate equivariance --output` writes (the headline result, then its model-index
    # entries), plus every read-out and the reference.
    results = {
        **headline.to_dict(),
        "dataset": dataset_name,
        "eval_results": headline.to_eval_results(dataset_name),
        "read_outs": {feature: result.to_dict() for feature, result in read_outs.items()},
    }
    if reference is not None:
        encoder = reference.encoder.to(model.device).eval()
        results["reference"] = {
            "label": reference.label,
            "read_outs": {
                feature: result.to_dict() for feature, result in score(encoder, shuffled_control=False).items()
            },
        }
    (output_dir / EQUIVARIANCE_FILE).write_text(json.dumps(results, indent=2))
    summary = [equivariance_table(results), *lowered_by_training(results)]
    logger.info("Equivariance benchmark, with its controls:\n%s", "\n".join(summary))
    return results


def run(
    model_args: ModelArguments,
    data_args: DataArguments,
    training_args: EquiReconTrainingArguments,
    evaluation_args: EvaluationArguments | None = None,
) -> dict:
    """Pretrain, run the equivariance benchmark, and write the run directory; returns the final metrics."""
    return pretrain.run(
        model_args, data_args, training_args, evaluation_args, evaluate_equivariance=evaluate_equivariance
    )


def main(argv: list[str] | None = None) -> int:
    """Entry point of `equirecon pretrain`; returns the exit status."""
    return run_command("pretrain", argv, parse_arguments, run)
