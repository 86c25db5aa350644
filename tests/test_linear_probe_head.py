"""A frozen encoder's classification head starts where the linear probe ends, and trains on the views it is scored on:
the README's `equirecon finetune classification --freeze_backbone` learns in its default epochs."""

import json

import numpy as np
import pytest
import torch
from model_helpers import tiny_config
from transformers import ViTConfig, ViTForImageClassification

from equirecon import EquiReconForImageClassification
from equirecon.commands.finetune import main
from equirecon.finetuning import data as dd
from equirecon.finetuning.head_init import initialise_linear_head


def _digit_batches(num_images=120, size=32, batch_size=40):
    """Batches of digits, upscaled and normalised as the fine-tune's evaluation transform does."""
    data = dd.load_downstream_dataset("classification", "digits", max_train_samples=num_images, seed=0)
    images = torch.stack(
        [torch.as_tensor(np.asarray(image.convert("RGB").resize((size, size)))) for image in data.train["image"]]
    )
    pixels = (images.permute(0, 3, 1, 2).float() / 255 - 0.5) / 0.25
    labels = torch.as_tensor(data.train["label"])
    return [
        {"pixel_values": pixels[i : i + batch_size], "labels": labels[i : i + batch_size]}
        for i in range(0, len(labels), batch_size)
    ]


def _accuracy(model, batches):
    model.eval()
    with torch.no_grad():
        right = sum(
            int((model(pixel_values=b["pixel_values"]).logits.argmax(1) == b["labels"]).sum()) for b in batches
        )
    return right / sum(len(b["labels"]) for b in batches)


def test_the_head_starts_at_the_linear_probe_of_the_frozen_features():
    torch.manual_seed(0)
    model = EquiReconForImageClassification(tiny_config(num_labels=10))
    batches = _digit_batches()
    assert _accuracy(model, batches) < 0.3  # a fresh head
    fitted = initialise_linear_head(model, batches, num_labels=10)
    assert fitted > 0.6  # 10 classes: chance is 0.1
    assert _accuracy(model, batches) == pytest.approx(fitted)  # the model's own forward gives the probe's answers
    features = model.feature_norm.running_mean
    assert features.abs().sum() > 0 and not torch.allclose(model.feature_norm.running_var, torch.ones_like(features))


def test_a_head_without_a_normalisation_layer_gets_the_standardisation_folded_in():
    torch.manual_seed(0)
    config = ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2)
    config.intermediate_size, config.num_labels = 64, 10
    model = ViTForImageClassification(config)
    batches = _digit_batches()
    fitted = initialise_linear_head(model, batches, num_labels=10)
    assert fitted > 0.4
    assert _accuracy(model, batches) == pytest.approx(fitted)


def test_a_model_without_a_linear_head_is_left_as_it_is():
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 10))
    assert initialise_linear_head(model, _digit_batches(num_images=40), num_labels=10) is None


def _frozen_run(checkpoint, output, *extra):
    arguments = ["classification", "--model", checkpoint, "--output_dir", output, "--freeze_backbone"]
    arguments += ["--max_train_samples", "120", "--max_eval_samples", "60", "--num_train_epochs", "1"]
    arguments += ["--save_strategy", "no", "--eval_strategy", "no", "--use_cpu", "--seed", "0", *extra]
    assert main([str(a) for a in arguments]) == 0
    return json.loads((output / "equirecon_run.json").read_text())


def test_the_frozen_fine_tune_learns_in_its_default_epochs(checkpoint, tmp_path):
    probe = _frozen_run(checkpoint, tmp_path / "probe")
    assert "head started from logistic regression" in probe["description"]
    assert "random resized crops of 1-1 of the area" in probe["description"]  # digits: whole glyphs
    random = _frozen_run(checkpoint, tmp_path / "random", "--head_init", "random")
    assert "head started from random" in random["description"]
    # One epoch at the fine-tuning learning rate barely moves a head that starts at random.
    assert probe["metrics"]["eval_accuracy"] > random["metrics"]["eval_accuracy"] + 0.2
