"""`equirecon evaluate equivariance|knn|linear` end to end on tiny local checkpoints, offline."""

import json
import logging

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import ViTConfig, ViTImageProcessor, ViTModel

from equirecon.commands.evaluate import main

TINY_VIT = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "image_size": 32,
    "patch_size": 8,
}
FAST = ["--no_progress", "--batch_size", "32"]
FAST_EQUIVARIANCE = [*FAST, "--num_crops", "96", "--epochs", "3"]


@pytest.fixture(scope="module")
def vit_dir(tmp_path_factory):
    """A ViT checkpoint with an image processor whose statistics differ from ImageNet's."""
    directory = tmp_path_factory.mktemp("vit")
    torch.manual_seed(0)
    ViTModel(ViTConfig(**TINY_VIT), add_pooling_layer=False).save_pretrained(directory)
    ViTImageProcessor(size={"height": 32, "width": 32}, image_mean=[0.5] * 3, image_std=[0.5] * 3).save_pretrained(
        directory
    )
    return directory


@pytest.fixture(scope="module")
def equirecon_dir(tmp_path_factory):
    from model_helpers import tiny_config

    from equirecon import EquiReconForPreTraining

    directory = tmp_path_factory.mktemp("equirecon")
    torch.manual_seed(0)
    EquiReconForPreTraining(tiny_config()).save_pretrained(directory)  # no image processor: config + ImageNet
    return directory


def _read(path):
    return json.loads(path.read_text())


def test_equivariance_on_embedded_photos_writes_json_and_bar_chart(vit_dir, tmp_path, caplog):
    output = tmp_path / "results" / "equivariance.json"
    with caplog.at_level(logging.INFO):
        code = main(
            [
                "equivariance",
                "--model",
                str(vit_dir),
                "--families",
                "rotation",
                "color",
                "--output",
                str(output),
                *FAST_EQUIVARIANCE,
            ]
        )
    assert code == 0
    document = _read(output)
    assert document["task"] == "equivariance" and document["feature"] == "mean_patch"
    assert list(document["r2"]) == ["rotation", "color"]
    assert document["mean_r2"] == pytest.approx(np.mean(list(document["r2"].values())))
    assert document["r2_convention"] == "global"
    assert document["settings"]["input"]["image_mean"] == [0.5, 0.5, 0.5]  # from the image processor
    assert document["settings"]["num_images"] == 4 and document["settings"]["protocol"] == "cross-validation by crop"
    assert [entry["metric_name"] for entry in document["eval_results"]] == ["R² rotation", "R² color", "R² mean"]
    assert "4 embedded validation photos" in caplog.text  # says which default set was used
    # Says how long it will take before it starts: the encoding passes and the regressors' folds, fits and epochs.
    estimate = next(record.getMessage() for record in caplog.records if "estimated time" in record.getMessage())
    assert "encoding 96 crops × 3 passes" in estimate
    assert "1 of 5 fold(s) × 4 regressors (2 families + 2 θ-shuffled controls) × ~3 epochs" in estimate
    chart = output.with_name("equivariance_r2.png")
    with Image.open(chart) as image:
        assert image.format == "PNG" and image.width > 300


def test_equivariance_on_an_image_folder_with_an_equirecon_checkpoint(equirecon_dir, tmp_path, capsys):
    folder = tmp_path / "photos"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for index in range(4):
        gradient = np.linspace(0, 255, 80, dtype=np.float64)[None, :, None] * rng.uniform(0.3, 1.0, 3)
        pixels = np.clip(gradient + rng.normal(0, 20, (60, 80, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"photo_{index}.png")
    plot = tmp_path / "chart.png"
    code = main(
        [
            "equivariance",
            "--model",
            str(equirecon_dir),
            "--dataset",
            str(folder),
            "--families",
            "blur",
            "--per_output",
            "--plot",
            str(plot),
            *FAST_EQUIVARIANCE,
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    document = json.loads(printed[printed.index("{") : printed.rindex("}") + 1])  # no --output: JSON on stdout
    assert document["feature"] == "mean_patch"  # the default for every model, EquiRecon loaded through AutoModel
    assert document["r2_convention"] == "per_output"
    assert document["settings"]["num_images"] == 4 and document["settings"]["num_test_images"] is None
    assert plot.is_file()


@pytest.mark.parametrize("task", ["knn", "linear"])
def test_probes_on_the_default_labelled_set(vit_dir, tmp_path, task, caplog):
    output = tmp_path / f"{task}.json"
    extra = ["--k", "5", "20"] if task == "knn" else ["--weight_decays", "1e-3", "1e-1"]
    with caplog.at_level(logging.INFO):
        code = main([task, "--model", str(vit_dir), "--max_images", "120", "--output", str(output), *extra, *FAST])
    assert code == 0
    assert "digits" in caplog.text and "default" in caplog.text
    document = _read(output)
    assert document["feature"] == "cls+mean_patch" and document["num_classes"] == 10
    assert document["num_train"] == 120 and document["num_test"] == 120
    values = list(document["top1"].values()) if task == "knn" else [document["accuracy"]]
    assert all(0.0 <= value <= 1.0 for value in values)
    if task == "knn":
        assert list(document["top1"]) == ["5", "20"]
    assert document["eval_results"][0]["metric_type"] == "accuracy"


def test_linear_probe_on_a_labelled_image_folder(vit_dir, tmp_path):
    # Class sub-folders become labels; dark and bright images are trivially separable.
    rng = np.random.default_rng(0)
    for label, level in (("dark", 40), ("bright", 215)):
        (tmp_path / "data" / label).mkdir(parents=True)
        for index in range(12):
            pixels = np.clip(level + rng.normal(0, 15, (36, 36, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(tmp_path / "data" / label / f"{index}.png")
    output = tmp_path / "linear.json"
    code = main(
        [
            "linear",
            "--model",
            str(vit_dir),
            "--dataset",
            str(tmp_path / "data"),
            "--test_fraction",
            "0.5",
            "--weight_decays",
            "1e-2",
            "--output",
            str(output),
            *FAST,
        ]
    )
    assert code == 0
    document = _read(output)
    assert document["class_names"] == ["bright", "dark"] and document["num_test"] == 12
    assert document["accuracy"] == 1.0


def test_clear_errors(vit_dir, capsys):
    assert main(["equivariance", "--model", str(vit_dir), "--feature", "equivariant", *FAST_EQUIVARIANCE]) == 1
    assert "EquiRecon" in capsys.readouterr().err
    assert (
        main(
            [
                "knn",
                "--model",
                str(vit_dir),
                "--dataset",
                "digits",
                "--label_column",
                "x",
                "--test_split",
                "test",
                *FAST,
            ]
        )
        == 1
    )
    assert "'test' not found" in capsys.readouterr().err
    assert main(["equivariance"]) == 2  # --model is required: one line, exit status 2
    assert "model" in capsys.readouterr().err


def test_recipes_and_help(vit_dir, tmp_path, capsys):
    recipe = tmp_path / "knn.yaml"
    recipe.write_text(f"model: {vit_dir}\nmax_images: 40\nk: [3]\nno_progress: true\n")
    output = tmp_path / "knn.json"
    assert main(["knn", "--config", str(recipe), "--output", str(output), "--batch_size", "32"]) == 0
    assert list(_read(output)["top1"]) == ["3"]
    assert main(["linear", "--help"]) == 0
    assert "--weight_decays" in capsys.readouterr().out


def test_a_corrupt_image_is_skipped_and_counted(equirecon_dir, tmp_path, capsys):
    folder = tmp_path / "photos"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for index in range(4):
        Image.fromarray(rng.integers(0, 255, (60, 80, 3), dtype=np.uint8)).save(folder / f"photo_{index}.png")
    (folder / "photo_9.png").write_bytes(b"not an image")
    output = tmp_path / "results.json"
    argv = ["equivariance", "--model", str(equirecon_dir), "--dataset", str(folder), "--families", "blur"]
    assert main([*argv, "--output", str(output), "--no_plot", *FAST_EQUIVARIANCE]) == 0
    document = _read(output)
    assert document["skipped_images"] == 1
    assert document["settings"]["num_images"] == 4 and document["settings"]["num_test_images"] is None
    assert "1 image(s) could not be decoded" in capsys.readouterr().out
