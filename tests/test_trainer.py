import json
import logging
import math

import datasets
import pytest
import torch
from _data_helpers import awkward_images
from distributed_helpers import run_two_processes
from model_helpers import tiny_config
from trainer_helpers import TRANSFORMATION, StopAt, pair_stream, tiny_trainer, training_arguments
from transformers import AutoModel, set_seed

from equirecon import EquiReconForPreTraining, EquiReconModel
from equirecon.training.data import build_transform_pair_dataset, collate_transform_pairs
from equirecon.training.progress import TRAINING_TIME_FILE
from equirecon.training.trainer import EquiReconTrainer, NonFiniteLossError
from equirecon.training.views import TransformPairMaker


def _losses(history):
    return {entry["step"]: entry for entry in history if "loss" in entry}


def test_components_are_logged_next_to_the_loss(tmp_path):
    trainer = tiny_trainer(
        tmp_path,
        model_overrides={"reconstruction_weight": 0.5},
        eval_dataset=list(pair_stream("validation").take(8)),
        eval_strategy="no",
    )
    trainer.train()
    logged = _losses(trainer.state.log_history)
    assert sorted(logged) == [1, 2, 3, 4]
    for entry in logged.values():
        assert entry["loss"] == pytest.approx(entry["ssl_loss"] + 0.5 * entry["reconstruction_loss"], rel=1e-3)
    metrics = trainer.evaluate()
    assert metrics["eval_loss"] == pytest.approx(
        metrics["eval_ssl_loss"] + 0.5 * metrics["eval_reconstruction_loss"], rel=1e-4
    )


def test_components_are_averaged_over_accumulation_steps(tmp_path):
    trainer = tiny_trainer(tmp_path, gradient_accumulation_steps=2, logging_steps=2, max_steps=2)
    trainer.train()
    (entry,) = _losses(trainer.state.log_history).values()
    # Trainer's loss is the mean over the 4 micro-batches since the last log; so must the components be.
    assert entry["loss"] == pytest.approx(entry["ssl_loss"] + entry["reconstruction_loss"], rel=1e-3)


def test_the_config_owns_the_loss_weights(tmp_path):
    weights = {"ssl_weight": 0.0, "reconstruction_weight": 2.0}
    trainer = tiny_trainer(tmp_path, model_overrides=weights, max_steps=1, **weights)  # agreeing arguments are fine
    trainer.train()
    (entry,) = _losses(trainer.state.log_history).values()
    assert entry["loss"] == pytest.approx(2.0 * entry["reconstruction_loss"], rel=1e-4)


@pytest.mark.parametrize(("name", "value"), [("reconstruction_weight", 2.0), ("ssl_weight", 0.5)])
def test_training_weights_that_disagree_with_the_config_are_refused(tmp_path, name, value):
    # Before, a trainer λ > 0 on a config with λ = 0 silently trained SSL only.
    with pytest.raises(ValueError, match=f"--{name} {value} does not match the model's {name}"):
        tiny_trainer(tmp_path, model_overrides={"reconstruction_weight": 0.0}, **{name: value})


def test_learning_rate_scales_with_the_effective_batch(tmp_path):
    args = training_arguments(
        tmp_path, base_learning_rate=1e-4, per_device_train_batch_size=32, gradient_accumulation_steps=4
    )
    assert args.effective_batch_size == 128
    assert args.learning_rate == pytest.approx(1e-4 * 128 / 256)


def test_mismatched_intermediate_count_is_refused(tmp_path):
    with pytest.raises(ValueError, match="--num_intermediates 3 does not match the model's num_intermediates 2"):
        tiny_trainer(tmp_path, num_intermediates=3)


def test_resumed_run_logs_the_same_losses_as_an_uninterrupted_run(tmp_path):
    uninterrupted = tiny_trainer(tmp_path / "a", max_steps=6)
    uninterrupted.train()

    interrupted = tiny_trainer(tmp_path / "b", max_steps=6, save_steps=3)
    interrupted.add_callback(StopAt(3))
    interrupted.train()
    assert interrupted.state.global_step == 3
    resumed = tiny_trainer(tmp_path / "b", max_steps=6, save_steps=3)
    resumed.train(resume_from_checkpoint=str(tmp_path / "b" / "checkpoint-3"))

    expected = _losses(uninterrupted.state.log_history)
    actual = _losses(resumed.state.log_history)
    for step in (4, 5, 6):
        for key in ("loss", "ssl_loss", "reconstruction_loss"):
            assert actual[step][key] == pytest.approx(expected[step][key], rel=1e-4), (step, key)


def test_non_finite_loss_stops_and_keeps_the_last_checkpoint(tmp_path):
    trainer = tiny_trainer(tmp_path, max_steps=6, save_steps=2)
    objective = trainer.model.ssl_objective
    original = objective.forward
    calls = {"n": 0}

    def poisoned(first, second):
        calls["n"] += 1
        loss = original(first, second)
        return loss * math.nan if calls["n"] == 4 else loss

    objective.forward = poisoned
    with pytest.raises(NonFiniteLossError, match=r"at step 3 .*Last good checkpoint: .*checkpoint-2"):
        trainer.train()
    assert not (tmp_path / "checkpoint-4").exists()
    reloaded = AutoModel.from_pretrained(tmp_path / "checkpoint-2")
    assert all(torch.isfinite(p).all() for p in reloaded.parameters())


def test_two_processes_read_different_data_and_save_a_loadable_model(tmp_path):
    run_two_processes("distributed_pretrain.py", tmp_path, port_base=29600)
    seen = [json.loads((tmp_path / f"seen-rank{rank}.json").read_text()) for rank in range(2)]
    assert seen[0]["world_size"] == seen[1]["world_size"] == 2
    assert len(seen[0]["batches"]) == len(seen[1]["batches"]) == 3
    assert set(map(tuple, seen[0]["batches"])).isdisjoint(map(tuple, seen[1]["batches"]))
    model = AutoModel.from_pretrained(tmp_path)
    assert isinstance(model, EquiReconModel)
    # Each process left the group before the interpreter finalised: no gloo thread is left to abort the exit.
    for rank in range(2):
        exit_record = json.loads((tmp_path / f"exit-rank{rank}.json").read_text())
        assert not exit_record["group_initialized"]
        assert exit_record["threads"] is None or not any("gloo" in name for name in exit_record["threads"])


def test_skipped_images_are_counted_once_each_over_workers_and_passes(tmp_path):
    files = awkward_images()  # 7 that decode, 2 that do not
    table = datasets.Dataset.from_dict(
        {"image": [{"bytes": content, "path": f"{name}.png"} for name, content in files.items()]},
        features=datasets.Features({"image": datasets.Image()}),
    )
    maker = TransformPairMaker(TRANSFORMATION, view_preset="crop-only", size=32, seed=0)
    stream = build_transform_pair_dataset(table, maker, num_shards=2, shuffle_seed=0, repeat=None)
    set_seed(0)
    trainer = EquiReconTrainer(
        model=EquiReconForPreTraining(tiny_config()),
        args=training_arguments(tmp_path, max_steps=6, dataloader_num_workers=2),  # 42 images: 4 passes
        train_dataset=stream,
        data_collator=collate_transform_pairs,
        transformation=TRANSFORMATION,
    )
    trainer.train()
    assert trainer.skipped_images == ["corrupt.png", "truncated.png"]
    counts = [entry["skipped_images"] for entry in trainer.state.log_history if "skipped_images" in entry]
    assert counts and counts[-1] == 2 and counts == sorted(counts)  # each image once, however often it was read


def test_a_resumed_run_says_so_and_adds_the_time_before_the_interruption(tmp_path, caplog):
    interrupted = tiny_trainer(tmp_path, max_steps=4, save_steps=2)
    interrupted.add_callback(StopAt(2))
    interrupted.train()
    assert interrupted.training_time.resumed is None
    recorded = json.loads((tmp_path / "checkpoint-2" / TRAINING_TIME_FILE).read_text())["training_seconds"]
    assert recorded > 0
    resumed = tiny_trainer(tmp_path, max_steps=4, save_steps=2)
    with caplog.at_level(logging.INFO, logger="equirecon.training.progress"):
        resumed.train(resume_from_checkpoint=str(tmp_path / "checkpoint-2"))
    assert resumed.training_time.resumed == {
        "checkpoint": str(tmp_path / "checkpoint-2"),
        "step": 2,
        "training_seconds_before": pytest.approx(recorded),
    }
    assert resumed.training_time.training_seconds > recorded
    assert any("Resuming the run from" in r.getMessage() and "step 2 of 4" in r.getMessage() for r in caplog.records)
