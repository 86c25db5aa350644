"""Do a pretrained model's decoders read the transformation from the pair? Its decoders against their controls.

For each pretraining checkpoint (an `equirecon pretrain` output directory, or one of `benchmarks/table1_small.py`'s
checkpoints), `EquiReconTrainer.evaluate` scores the decoders on transform pairs of the embedded photos held out
from pretraining (the model's own g_θ, image size, normalisation, masks and base augmentations) next to the
controls it logs on the same pairs:

    decoders        eval_reconstruction_loss
    unpaired        the decoders given the next pair's view 1 (eval_unpaired_reconstruction_loss): θ links the two
                    views of a pair, so decoders that read θ from the pair do worse here
    copy v2         every target := view 2
    blurred v2      every target := view 2 through a 5×5 box blur (the trivial answer a low-pass decoder must beat)
    copy v1         every target := view 1

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
from equirecon.training.pretrain import image_statistics  # noqa: E402
from equirecon.training.trainer import EquiReconTrainer  # noqa: E402

COLUMNS = {
    "decoders": "eval_reconstruction_loss",
    "unpaired": "eval_unpaired_reconstruction_loss",
    "copy v2": "eval_copy_view2_loss",
    "blurred v2": "eval_copy_blurred_view2_loss",
    "copy v1": "eval_copy_view1_loss",
}


def training_views(checkpoint: Path) -> str:
    """The base augmentations the checkpoint was pretrained with (its `equirecon_run.json`), "all" if unknown."""
    run = checkpoint / RUN_FILE
    arguments = json.loads(run.read_text()).get("training_arguments", {}) if run.is_file() else {}
    return arguments.get("view_preset") or "all"


def decoder_controls(checkpoint: Path, num_pairs: int, seed: int, views: str) -> dict[str, float]:
    model = EquiReconForPreTraining.from_pretrained(checkpoint)
    config = model.config
    transformation = TransformationConfig.from_dict(config.transformation)
    image_mean, image_std = image_statistics(ModelArguments(model_name_or_path=str(checkpoint)))
    maker = TransformPairMaker(
        transformation,
        view_preset=views,
        size=config.image_size,
        image_mean=image_mean,
        image_std=image_std,
        seed=seed,
        mask_generator=BlockMaskGenerator.from_config(config) if config.uses_masks else None,
    )
    pairs = build_transform_pair_dataset(
        load_images("embedded", split="validation"), maker, num_shards=1, shuffle_seed=None, repeat=None
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

    print(f"Held-out pairs: {args.num_pairs} of the 4 embedded validation photos, seed {args.seed}; lower is better.")
    print()
    print("| checkpoint | g | views | " + " | ".join(COLUMNS) + " | unpaired / decoders |")
    print("|---|---|---|" + "---|" * len(COLUMNS) + "---|")
    for checkpoint in args.checkpoints:
        views = args.views or training_views(checkpoint)
        metrics = decoder_controls(checkpoint, args.num_pairs, args.seed, views)
        family = EquiReconForPreTraining.config_class.from_pretrained(checkpoint).transformation["family"]
        cells = [f"{metrics[key]:.4f}" for key in COLUMNS.values()]
        ratio = metrics[COLUMNS["unpaired"]] / metrics[COLUMNS["decoders"]]
        print(f"| {checkpoint.name} | {family} | {views} | " + " | ".join(cells) + f" | {ratio:.3f} |", flush=True)


if __name__ == "__main__":
    main()
