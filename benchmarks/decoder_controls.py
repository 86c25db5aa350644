"""Do a pretrained model's decoders read the transformation from the pair? Its decoders against their controls.

For each pretraining checkpoint (an `equirecon pretrain` output directory, or one of `benchmarks/table1_small.py`'s
checkpoints), `EquiReconTrainer.evaluate` scores the decoders on transform pairs of the split its run held out
(the embedded validation photos, Fashion-MNIST's `test`, ...; the model's own g_θ, image size, normalisation, masks,
base augmentations, crop scale and context) next to the controls it logs on the same pairs:

    decoders        eval_reconstruction_loss
    unpaired        the decoders given the next pair's view 1 (eval_unpaired_reconstruction_loss): θ links the two
                    views of a pair, so decoders that read θ from the pair do worse here
    copy v2         every target := view 2
    blurred v2      every target := view 2 through a 5×5 box blur (the trivial answer a low-pass decoder must beat)
    copy v1         every target := view 1
    blend           every target k := a_k·v1 + b_k·v2, the best θ-free blend of the two views (eval_copy_blend_loss;
                    a_k, b_k fitted by least squares on one half of the pairs, scored on the other)
    blurred blend   the same blend of the two views through the 5×5 box blur (eval_copy_blurred_blend_loss)

The last column says which controls the decoders do not beat: where they lose to one, they have learnt nothing about
the in-between states beyond what that θ-free answer gives.

    python benchmarks/decoder_controls.py runs/equirecon-tiny
    python benchmarks/decoder_controls.py runs/table1_small/checkpoints/seed*-ours-*    # ~20 s per checkpoint on CPU
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from transformers import PrinterCallback  # noqa: E402

from equirecon import EquiReconForPreTraining  # noqa: E402
from equirecon.imaging.transformations import TransformationConfig  # noqa: E402
from equirecon.model_card import RUN_FILE  # noqa: E402
from equirecon.training import TransformPairMaker, build_transform_pair_dataset, load_images  # noqa: E402
from equirecon.training.arguments import EquiReconTrainingArguments, ModelArguments  # noqa: E402
from equirecon.training.data import collate_transform_pairs  # noqa: E402
from equirecon.training.masking import BlockMaskGenerator  # noqa: E402
from equirecon.training.model_setup import image_statistics  # noqa: E402
from equirecon.training.trainer import EquiReconTrainer  # noqa: E402

COLUMNS = {
    "decoders": "eval_reconstruction_loss",
    "unpaired": "eval_unpaired_reconstruction_loss",
    "copy v2": "eval_copy_view2_loss",
    "blurred v2": "eval_copy_blurred_view2_loss",
    "copy v1": "eval_copy_view1_loss",
    "blend": "eval_copy_blend_loss",
    "blurred blend": "eval_copy_blurred_blend_loss",
}
CONTROLS = ("copy v2", "blurred v2", "copy v1", "blend", "blurred blend")


def pretraining_settings(checkpoint: Path) -> dict[str, object]:
    """How the checkpoint was pretrained (its `equirecon_run.json`): its dataset and held-out split, base
    augmentations, crop scale and context fill; the embedded photos and the defaults where the record is silent."""
    run = json.loads((checkpoint / RUN_FILE).read_text()) if (checkpoint / RUN_FILE).is_file() else {}
    data, training = run.get("data_arguments", {}), run.get("training_arguments", {})
    dataset = data.get("dataset") or "embedded"
    return {
        "dataset": dataset,
        "split": data.get("validation_split") or "validation",
        "views": training.get("view_preset") or "all",
        "crop_scale": tuple(training.get("crop_scale") or (0.32, 1.0)),
        # Objects on black (Fashion-MNIST) were pretrained with a black context.
        "context_fill": training.get("context_fill") or ("black" if dataset == "fashion_mnist" else "reflect"),
    }


def decoder_controls(checkpoint: Path, num_pairs: int, seed: int, settings: dict[str, object]) -> dict[str, float]:
    model = EquiReconForPreTraining.from_pretrained(checkpoint)
    config = model.config
    transformation = TransformationConfig.from_dict(config.transformation)
    image_mean, image_std = image_statistics(ModelArguments(model_name_or_path=str(checkpoint)))
    maker = TransformPairMaker(
        transformation,
        view_preset=settings["views"],
        crop_scale=settings["crop_scale"],
        context_fill=settings["context_fill"],
        size=config.image_size,
        image_mean=image_mean,
        image_std=image_std,
        seed=seed,
        mask_generator=BlockMaskGenerator.from_config(config) if config.uses_masks else None,
    )
    pairs = build_transform_pair_dataset(
        load_images(settings["dataset"], split=settings["split"]), maker, num_shards=1, shuffle_seed=None, repeat=None
    )
    with tempfile.TemporaryDirectory() as output_dir:
        arguments = EquiReconTrainingArguments(
            output_dir=output_dir,
            per_device_eval_batch_size=64,
            use_cpu=not torch.cuda.is_available(),
            report_to="none",
            disable_tqdm=True,
        )
        trainer = EquiReconTrainer(
            model=model,
            args=arguments,
            eval_dataset=list(pairs.take(num_pairs)),
            data_collator=collate_transform_pairs,
            transformation=transformation,
            image_mean=image_mean,
            image_std=image_std,
        )
        trainer.remove_callback(PrinterCallback)  # the table is the output
        return trainer.evaluate()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoints", nargs="+", type=Path)
    parser.add_argument("--num-pairs", type=int, default=256, help="held-out transform pairs (default 256)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--views", default=None, help="base augmentations (default: each checkpoint's own, else all)")
    args = parser.parse_args()

    print(f"Held-out pairs: {args.num_pairs} of each checkpoint's held-out split, seed {args.seed}; lower is better.")
    print()
    print("| checkpoint | g | views | " + " | ".join(COLUMNS) + " | unpaired / decoders | decoders do not beat |")
    print("|---|---|---|" + "---|" * len(COLUMNS) + "---|---|")
    for checkpoint in args.checkpoints:
        settings = pretraining_settings(checkpoint)
        settings["views"] = args.views or settings["views"]
        views = settings["views"]
        metrics = decoder_controls(checkpoint, args.num_pairs, args.seed, settings)
        family = EquiReconForPreTraining.config_class.from_pretrained(checkpoint).transformation["family"]
        cells = [f"{metrics[key]:.4f}" for key in COLUMNS.values()]
        ratio = metrics[COLUMNS["unpaired"]] / metrics[COLUMNS["decoders"]]
        lost = [name for name in CONTROLS if metrics[COLUMNS["decoders"]] >= metrics[COLUMNS[name]]] or ["–"]
        row = f"| {checkpoint.name} | {family} | {views} | " + " | ".join(cells)
        print(row + f" | {ratio:.3f} | {', '.join(lost)} |", flush=True)


if __name__ == "__main__":
    main()
