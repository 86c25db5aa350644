"""Builders shared by the trainer tests and the 2-process script: a tiny model and a stream of transform pairs from
the embedded photos, all seeded."""

import os

from model_helpers import TINY_BACKBONE, tiny_config
from transformers import TrainerCallback, set_seed

from equirecon import EquiReconForPreTraining
from equirecon.imaging.transformations import TransformationConfig
from equirecon.training.arguments import EquiReconTrainingArguments
from equirecon.training.data import build_transform_pair_dataset, collate_transform_pairs, load_images
from equirecon.training.masking import BlockMaskGenerator
from equirecon.training.trainer import EquiReconTrainer
from equirecon.training.views import TransformPairMaker

TRANSFORMATION = TransformationConfig(family="rotation")


def pair_stream(
    split: str = "train", seed: int = 0, num_shards: int | None = None, mask_generator=None, **maker_options
):
    """Each process of a distributed run gets its own augmentation stream: its rank seeds the pair maker.
    `maker_options` go to `TransformPairMaker` (e.g. local crops)."""
    rank = int(os.environ.get("RANK", 0))
    images = load_images("embedded", split=split)
    maker = TransformPairMaker(
        TRANSFORMATION,
        view_preset="crop-only",
        size=32,
        seed=seed,
        rank=rank,
        mask_generator=mask_generator,
        **maker_options,
    )
    return build_transform_pair_dataset(images, maker, num_shards=num_shards, shuffle_seed=seed, repeat=None)


#: DINO heads small enough for a unit test.
SMALL_HEADS = {"dino_out_dim": 32, "dino_hidden_dim": 32, "dino_bottleneck_dim": 8, "ibot_out_dim": 24}


def dino_config(objective: str = "dino", **overrides):
    """A tiny config for a DINO-family host; iBOT and DINOv2 get an encoder with a mask token."""
    backbone = {**TINY_BACKBONE, "use_mask_token": objective != "dino"}
    return tiny_config(ssl_objective=objective, backbone_config=backbone, **{**SMALL_HEADS, **overrides})


def dino_trainer(output_dir, objective="dino", model_overrides=None, **argument_overrides) -> EquiReconTrainer:
    """A tiny DINO-family trainer on a stream that carries masks when the objective masks."""
    set_seed(0)
    config = dino_config(objective, **(model_overrides or {}))
    masks = BlockMaskGenerator.from_config(config) if config.uses_masks else None
    return EquiReconTrainer(
        model=EquiReconForPreTraining(config),
        args=training_arguments(output_dir, **argument_overrides),
        train_dataset=pair_stream(mask_generator=masks),
        data_collator=collate_transform_pairs,
        transformation=TRANSFORMATION,
    )


def training_arguments(output_dir, **overrides) -> EquiReconTrainingArguments:
    fields = {
        "output_dir": str(output_dir),
        "max_steps": 4,
        "per_device_train_batch_size": 4,
        "learning_rate": 1e-3,
        "warmup_steps": 0,
        "logging_steps": 1,
        "save_steps": 100,
        "save_total_limit": None,
        "use_cpu": True,
        "seed": 0,
        "disable_tqdm": True,
    }
    fields.update(overrides)
    return EquiReconTrainingArguments(**fields)


def tiny_trainer(output_dir, model_overrides=None, eval_dataset=None, **argument_overrides) -> EquiReconTrainer:
    set_seed(0)
    model = EquiReconForPreTraining(tiny_config(**(model_overrides or {})))
    return EquiReconTrainer(
        model=model,
        args=training_arguments(output_dir, **argument_overrides),
        train_dataset=pair_stream(),
        eval_dataset=eval_dataset,
        data_collator=collate_transform_pairs,
        transformation=TRANSFORMATION,
    )


#: `equirecon pretrain` arguments for a seconds-long run: 2 steps, a few held-out pairs, a tiny benchmark.
FAST_PRETRAIN = [
    "--max_steps", "2",
    "--per_device_train_batch_size", "4",
    "--logging_steps", "1",
    "--max_eval_samples", "8",
    "--equivariance_num_crops", "48",
    "--equivariance_epochs", "2",
    "--disable_tqdm", "True",
]  # fmt: skip


class StopAt(TrainerCallback):
    """Ends training after optimizer step `step`, as an interrupted run would."""

    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            control.should_training_stop = True
