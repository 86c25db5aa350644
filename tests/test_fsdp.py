"""Sharded training (FSDP2) of a model with an EMA teacher, checked on CPU; recipes/accelerate-fsdp-vit-l.yaml."""

import json
import math
from pathlib import Path

import pytest
import torch
import yaml
from distributed_helpers import run_two_processes

from equirecon import EquiReconConfig, EquiReconForPreTraining
from equirecon.commands.pretrain import parse_arguments

RECIPES = Path(__file__).parents[1] / "recipes"
ACCELERATE_CONFIG = RECIPES / "accelerate-fsdp-vit-l.yaml"


def test_the_accelerate_config_wraps_the_vit_l_layers_of_student_and_teacher():
    fsdp = yaml.safe_load(ACCELERATE_CONFIG.read_text())["fsdp_config"]
    # FSDP2 pairs the shards of student and teacher; a FULL_STATE_DICT is what save_pretrained writes.
    assert fsdp["fsdp_version"] == 2 and fsdp["fsdp_state_dict_type"] == "FULL_STATE_DICT"
    with torch.device("meta"):
        model = EquiReconForPreTraining(EquiReconConfig.from_preset("ibot-vit-l16"))
    layers = [name for name, module in model.named_modules() if type(module).__name__ == "Dinov2Layer"]
    assert fsdp["fsdp_transformer_layer_cls_to_wrap"] == "Dinov2Layer"
    assert sum(name.startswith("teacher.") for name in layers) == sum(name.startswith("equirecon.") for name in layers)
    assert len(layers) == 48  # 24 student and 24 teacher layers, each its own FSDP unit


def test_the_ibot_vit_l_recipe_has_the_papers_batch_and_schedule():
    _, _, training_args, _ = parse_arguments(
        ["--config", str(RECIPES / "pretrain-ibot-vit-l16-se2.json"), "--bf16", "False"]
    )
    processes = yaml.safe_load(ACCELERATE_CONFIG.read_text())["num_processes"]
    batch = training_args.per_device_train_batch_size * training_args.gradient_accumulation_steps * processes
    assert batch == 1024
    steps_per_epoch = 1_281_167 // 1024
    assert training_args.max_steps == 250 * steps_per_epoch and training_args.warmup_steps == 10 * steps_per_epoch
    assert training_args.base_learning_rate == 5e-4


def test_two_processes_shard_student_and_teacher_alike_and_keep_the_ema(tmp_path):
    # FSDP2 on CPU (gloo), wrapped by accelerate from the recipe's accelerate config; tests/scripts/distributed_fsdp.py.
    run_two_processes("distributed_fsdp.py", tmp_path, ACCELERATE_CONFIG, port_base=28700, timeout=300)
    ranks = [json.loads((tmp_path / f"fsdp-rank{rank}.json").read_text()) for rank in range(2)]
    for record in ranks:
        assert record["world_size"] == 2
        # Each backbone layer of student and teacher is an FSDP unit, and a teacher tensor holds the same rows of
        # the same shape as its student tensor on each rank.
        for prefix in ("equirecon", "teacher.equirecon"):
            assert {f"{prefix}.backbone.encoder.layer.{i}" for i in range(2)} <= set(record["units"])
        assert record["shard_rows"] == [16, 16, 32]
        assert record["shard_placements"] == ["(Shard(dim=0),)"] * 2
        assert record["teacher_frozen"]
        assert len(record["losses"]) == 2 and all(math.isfinite(loss) for loss in record["losses"])
        assert record["copied_difference"] == 0  # the teacher starts as the student
        assert record["ema_difference"] <= 1e-6  # the gathered teacher is the EMA of the gathered students
        assert record["student_teacher_difference"] > 1e-4  # and lags behind them
        assert "must be copied from the student before its first forward" in record["refusal"]
        assert "needs FSDP2" in record["fsdp1_refusal"]
        # The same through Trainer.train(): TeacherCallback copies the sharded teacher and updates it per step.
        assert record["trainer_sharded"]
        assert len(record["trainer_losses"]) == 2 and all(math.isfinite(loss) for loss in record["trainer_losses"])
        assert record["trainer_copied_difference"] == 0
        assert record["trainer_ema_difference"] <= 1e-6
        assert record["trainer_student_teacher_difference"] > 1e-4
        # Evaluation on the sharded model, the unpaired control included (the decoders run outside the forward).
        assert {"reconstruction_loss", "unpaired_reconstruction_loss"} <= set(record["evaluation"])
        assert all(math.isfinite(value) for value in record["evaluation"].values())
    assert ranks[0]["evaluation"] == ranks[1]["evaluation"]  # reduced over the processes
    assert ranks[0]["reload_difference"] == 0  # save_pretrained of the gathered state dict, then from_pretrained
    # The unsharded buffers (the centres) agree on both ranks too.
    assert ranks[0]["fingerprint"] == pytest.approx(ranks[1]["fingerprint"], rel=1e-5)
