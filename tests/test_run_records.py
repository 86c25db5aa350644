"""What a run's card and summaries say about the run: every effect figure next to its controls, the figures training
lowered in words, skipped images, interruptions, and no placeholder the reader must fill in."""

import json

import pytest
from model_helpers import tiny_config
from PIL import Image

from equirecon.argument_checks import ArgumentError
from equirecon.model_card import EQUIVARIANCE_FILE, LOSS_CURVES_FILE, RUN_FILE, TRAINING_LOG_FILE, build_model_card
from equirecon.reporting import equivariance_table, lowered_by_training, reconstruction_controls
from equirecon.run_directory import check_output_dir
from equirecon.training.figures import save_loss_curves

FAMILIES = ("rotation", "blur", "translation")


def _record(**fields):
    record = {
        "data_arguments": {"dataset": "./photos", "train_split": "train"},
        "training_arguments": {"max_steps": 200, "learning_rate": 5e-4, "weight_decay": 0.05, "seed": 0},
        "effective_batch_size": 32,
        "world_size": 1,
        "wall_time_seconds": 600.0,
        "metrics": {},
    }
    return record | fields


def _equivariance(trained, reference, chance):
    def result(values, shuffled=None):
        return {"feature": "mean_patch", "r2": dict(zip(FAMILIES, values, strict=True))} | (
            {"shuffled_r2": dict(zip(FAMILIES, shuffled, strict=True))} if shuffled else {}
        )

    headline = result(trained, chance)
    return headline | {
        "mean_r2": sum(trained) / len(trained),
        "r2_convention": "global",
        "read_outs": {"mean_patch": headline},
        "reference": {"label": "random initialisation", "read_outs": {"mean_patch": result(reference)}},
        "eval_results": [
            {
                "task_type": "image-feature-extraction",
                "dataset_type": "photos",
                "dataset_name": "photos",
                "metric_type": "r_squared",
                "metric_name": f"R² {name}",
                "metric_value": value,
            }
            for name, value in zip(FAMILIES, trained, strict=True)
        ],
    }


def _card(tmp_path, record, equivariance=None):
    tiny_config().save_pretrained(tmp_path)
    (tmp_path / RUN_FILE).write_text(json.dumps(record))
    if equivariance is not None:
        (tmp_path / EQUIVARIANCE_FILE).write_text(json.dumps(equivariance))
    return build_model_card(tmp_path)


def test_a_resumed_run_gives_its_total_and_resumed_wall_time(tmp_path):
    resumed = {"checkpoint": "runs/a/checkpoint-100", "step": 100, "training_seconds_before": 300.0}
    text = _card(tmp_path, _record(resumed=resumed)).text
    assert (
        "Wall time: 15.0 min in total: the run was interrupted and resumed from `checkpoint-100` at step 100" in text
    )
    assert "after 5.0 min of training; 10.0 min after resuming" in text
    plain = _card(tmp_path, _record(resumed=None)).text
    assert "Wall time: 10.0 min." in plain and "interrupted" not in plain


def test_skipped_images_are_counted_on_the_card(tmp_path):
    text = _card(tmp_path, _record(skipped_images=["bad.png", "worse.jpg"])).text
    assert "2 undecodable image(s) were skipped: `bad.png`, `worse.jpg`." in text
    assert "none was skipped" in _card(tmp_path, _record(skipped_images=[])).text


def test_an_unevaluated_card_names_the_directory_not_a_placeholder(tmp_path):
    text = _card(tmp_path, _record()).text
    assert f"equirecon evaluate equivariance --model {tmp_path} --output {tmp_path}/{EQUIVARIANCE_FILE}" in text
    assert "DIR" not in text


def test_decoders_that_do_not_beat_the_blend_are_said_to(tmp_path):
    metrics = {
        "eval_reconstruction_loss": 0.30,
        "eval_copy_view2_loss": 0.36,
        "eval_copy_blurred_view2_loss": 0.32,
        "eval_copy_view1_loss": 2.0,
        "eval_copy_blend_loss": 0.31,
        "eval_copy_blurred_blend_loss": 0.28,
    }
    line = reconstruction_controls(metrics)
    assert "the decoders do **not** beat the best blend of the blurred views:" in line
    assert "copying view 2" in line and "the best blend a_k·v1 + b_k·v2 0.3100" in line
    assert "do **not** beat the best blend of the blurred views" in _card(tmp_path, _record(metrics=metrics)).text
    better = reconstruction_controls(metrics | {"eval_reconstruction_loss": 0.2})
    assert "the decoders beat all 5 θ-free answers" in better


def test_figures_training_lowered_are_said_in_words(tmp_path):
    results = _equivariance(trained=(0.70, 0.373, 0.549), reference=(0.66, 0.569, 0.716), chance=(0.0, -0.1, 0.02))
    (sentence,) = lowered_by_training(results)
    assert "on 2 of 3 families (R² blur 0.569 → 0.373; R² translation 0.716 → 0.549)" in sentence
    table = equivariance_table(results)
    assert "| random initialisation, mean_patch | 0.660 | 0.569 | 0.716 |" in table
    assert "| θ-shuffled control (chance), mean_patch | 0.000 | -0.100 | 0.020 |" in table
    assert sentence in _card(tmp_path, _record(), results).text
    assert lowered_by_training(_equivariance((0.7, 0.6, 0.8), (0.6, 0.5, 0.7), (0, 0, 0))) == []


def test_the_controls_are_model_index_entries_of_their_own(tmp_path):
    results = _equivariance(trained=(0.70, 0.373, 0.549), reference=(0.66, 0.569, 0.716), chance=(0.0, -0.1, 0.02))
    metrics = {
        entry.metric_name: entry.metric_value for entry in _card(tmp_path, _record(), results).data.eval_results
    }
    assert metrics["R² blur"] == 0.373
    assert metrics["R² blur (random initialisation, control)"] == 0.569
    assert metrics["R² blur (θ-shuffled chance, control)"] == -0.1
    assert metrics["R² mean (random initialisation, control)"] == pytest.approx((0.66 + 0.569 + 0.716) / 3, abs=1e-4)


def test_loss_curves_are_drawn_from_a_single_log_and_skipped_without_one(tmp_path):
    history = [
        {"loss": 31.4, "ssl_loss": 30.6, "reconstruction_loss": 0.76, "grad_norm": 591.4, "step": 1},
        {"eval_loss": 10.8, "eval_reconstruction_loss": 0.92, "eval_copy_blend_loss": 0.34, "step": 1},
        {"train_loss": 31.4, "train_runtime": 0.7, "step": 1},
    ]
    path = save_loss_curves(history, tmp_path / LOSS_CURVES_FILE)
    with Image.open(path) as picture:  # the total/SSL panel and the reconstruction panel
        assert picture.format == "PNG" and picture.size == (1200, 400)
    with Image.open(save_loss_curves(history[:1], tmp_path / "total.png")) as picture:
        assert picture.size == (1200, 400)
    with Image.open(save_loss_curves([{"loss": 1.0, "step": 1}], tmp_path / "one.png")) as picture:
        assert picture.size == (600, 400)  # nothing to draw in the reconstruction panel: one panel
    assert save_loss_curves([], tmp_path / "none.png") is None
    assert save_loss_curves(history[2:], tmp_path / "summary.png") is None  # Trainer's run average is no curve
    assert not (tmp_path / "none.png").exists() and not (tmp_path / "summary.png").exists()


def test_the_card_links_the_loss_curves_or_says_why_there_are_none(tmp_path):
    record = _record(data_arguments={"dataset": "./photos", "train_split": "train", "validation_split": "test"})
    (tmp_path / TRAINING_LOG_FILE).write_text(json.dumps([{"train_loss": 1.0, "step": 2}]))
    text = _card(tmp_path, record).text
    assert "No loss curves: the run logged no loss" in text and "](loss_curves.png)" not in text
    (tmp_path / TRAINING_LOG_FILE).write_text(json.dumps([{"loss": 1.0, "step": 1}]))
    assert f"the logged losses are in `{TRAINING_LOG_FILE}`" in _card(tmp_path, record).text
    save_loss_curves([{"loss": 1.0, "step": 1}], tmp_path / LOSS_CURVES_FILE)
    text = _card(tmp_path, record).text
    assert "![Loss curves](loss_curves.png)" in text and "No loss" not in text
    assert "No reconstruction picture" not in text  # a held-out split: its picture is simply not here
    no_split = _record(data_arguments={"dataset": "./photos", "train_split": "train", "validation_split": None})
    assert "No reconstruction picture: it is drawn from held-out pairs" in _card(tmp_path, no_split).text


def test_resuming_a_finished_run_says_how_to_continue_it(tmp_path):
    (tmp_path / "config.json").write_text("{}")  # a finished run: the model, no checkpoint-*
    with pytest.raises(ArgumentError) as error:
        check_output_dir(str(tmp_path), command="pretrain", resume="last")
    message = str(error.value)
    assert "no checkpoint-*" in message and "--keep_checkpoints" in message
    assert f"--model_name_or_path {tmp_path}" in message
