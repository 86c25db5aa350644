"""Fashion-MNIST as a named source, from IDX files the tests write themselves (the real files are a system package,
never a test dependency), and the held-out protocol of the equivariance benchmark on it."""

import gzip
import json

import numpy as np
import pytest
import torch

from equirecon.commands.evaluate import main as evaluate_main
from equirecon.evaluation.equivariance import PHOTO_SETTINGS, dataset_settings, family_configs
from equirecon.evaluation.labelled import load_labelled_images
from equirecon.imaging.context import reflect_into_box
from equirecon.imaging.fashion_mnist import CLASS_NAMES, fashion_mnist, read_idx
from equirecon.imaging.sources import load_images
from equirecon.imaging.transformations import TransformationConfig
from equirecon.training.views import TransformPairMaker


def _write_idx(path, array):
    codes = {np.dtype(np.uint8): 0x08}
    header = bytes([0, 0, codes[array.dtype], array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as handle:
        handle.write(header + array.tobytes())


def _objects(count, seed):
    """28² greyscale images of a bright upright bar on black (an object with an orientation), and labels."""
    rng = np.random.default_rng(seed)
    images = np.zeros((count, 28, 28), np.uint8)
    labels = rng.integers(0, 10, count).astype(np.uint8)
    for image, label in zip(images, labels, strict=True):
        width = 3 + int(label) % 4
        image[4:24, 14 - width // 2 : 14 + (width + 1) // 2] = 200 + int(rng.integers(0, 55))
    return images, labels


@pytest.fixture
def fashion_dir(tmp_path, monkeypatch):
    for prefix, count, seed in (("train", 96, 0), ("t10k", 48, 1)):
        images, labels = _objects(count, seed)
        _write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", images)
        _write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", labels)
    monkeypatch.setenv("EQUIRECON_FASHION_MNIST_DIR", str(tmp_path))
    return tmp_path


def test_idx_round_trip_and_bad_files(tmp_path):
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    _write_idx(tmp_path / "a.gz", array)
    np.testing.assert_array_equal(read_idx(tmp_path / "a.gz"), array)
    (tmp_path / "bad").write_bytes(b"\x12\x34\x56\x78rest")
    with pytest.raises(ValueError, match="not an IDX file"):
        read_idx(tmp_path / "bad")
    with gzip.open(tmp_path / "short.gz", "wb") as handle:  # header says 2×3×4, data has 5 bytes
        handle.write(bytes([0, 0, 8, 3]) + b"".join(d.to_bytes(4, "big") for d in (2, 3, 4)) + bytes(5))
    with pytest.raises(ValueError, match="header gives shape"):
        read_idx(tmp_path / "short.gz")


def test_splits_images_padded_to_32_and_labels(fashion_dir):
    train, test = fashion_mnist("train"), load_images("fashion_mnist", split="test")
    assert (len(train), len(test)) == (96, 48)
    assert train.features["label"].names == list(CLASS_NAMES)
    image = np.asarray(train[0]["image"])
    raw, labels = _objects(96, 0)
    assert image.shape == (32, 32)  # greyscale; RGB where every image becomes RGB
    np.testing.assert_array_equal(image[2:30, 2:30], raw[0])  # the original, centred
    assert image[:2].max() == image[-2:].max() == image[:, :2].max() == image[:, -2:].max() == 0  # black padding
    assert train[5]["label"] == labels[5]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from model_helpers import tiny_config

    from equirecon import EquiReconForPreTraining

    directory = tmp_path_factory.mktemp("model")
    torch.manual_seed(0)
    EquiReconForPreTraining(tiny_config()).save_pretrained(directory)
    return directory


def test_missing_files_name_the_package(tmp_path, monkeypatch, capsys, model_dir):
    monkeypatch.setenv("EQUIRECON_FASHION_MNIST_DIR", str(tmp_path / "absent"))
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        fashion_mnist("train")
    with pytest.raises(ValueError, match="splits"):
        fashion_mnist("validation")
    code = evaluate_main(["equivariance", "--model", str(model_dir), "--dataset", "fashion_mnist"])
    error = capsys.readouterr().err
    assert code == 2 and "dataset-fashion-mnist" in error and len(error.strip().splitlines()) == 1


def test_probes_read_train_and_test(fashion_dir):
    labelled = load_labelled_images("fashion_mnist")
    assert (len(labelled.train_images), len(labelled.test_images)) == (96, 48)
    assert labelled.class_names == list(CLASS_NAMES)


def test_black_context_fill_pads_with_zeros_where_reflection_mirrors():
    photo = np.zeros((8, 8, 1), np.uint8)
    photo[:, 1] = 255  # an object near the left border
    black, box = reflect_into_box(photo, (-3, 0, 8, 8), fill="black")
    reflected, _ = reflect_into_box(photo, (-3, 0, 8, 8))
    assert box == (0, 0, 11, 8) and black[:, :3].max() == 0 and black[:, 4].min() == 255
    assert reflected[:, :3].max() == 255  # the reflection mirrors the object into the margin
    with pytest.raises(ValueError, match="fill must be one of"):
        reflect_into_box(photo, (-3, 0, 8, 8), fill="edge")


def test_pairs_of_fashion_mnist_have_a_black_context(fashion_dir):
    maker = TransformPairMaker(
        TransformationConfig(family="rotation"), view_preset="crop-only", size=32, context_fill="black", seed=0
    )
    pair = maker(fashion_mnist("train")[0]["image"])
    base = pair["base_pixel_values"]
    assert base.shape == (3, 46, 46)  # the view and a margin for ±45°
    black = (0 - 0.485) / 0.229  # ImageNet-normalised black, red channel
    assert torch.allclose(base[0, :, :5], torch.full_like(base[0, :, :5], black), atol=1e-4)


def test_dataset_settings_and_greyscale_colour_family():
    assert dataset_settings("embedded") == PHOTO_SETTINGS == dataset_settings(None)
    settings = dataset_settings("fashion_mnist")
    assert (settings["crop_scale"], settings["border"], settings["group_by"]) == ((1.0, 1.0), "fill", "photo")
    colour = family_configs(["color", "rotation"], "fashion_mnist")["color"]
    assert colour.saturation_range == colour.hue_range == (0.0, 0.0)
    assert family_configs(["color"], "embedded")["color"].saturation_range == (-0.4, 0.4)


def test_held_out_benchmark_fits_on_train_and_scores_test_images(fashion_dir, tmp_path, model_dir):
    """The held-out check of the README, on the tiny written files: the regressor is fitted on train images and scored
    on as many crops of test images, which it never saw; colour is brightness and contrast only."""
    output = tmp_path / "heldout.json"
    arguments = ["--model", str(model_dir), "--dataset", "fashion_mnist", "--split", "train", "--test_split", "test"]
    arguments += ["--families", "rotation", "color", "--feature", "mean_patch", "--output", str(output)]
    code = evaluate_main(["equivariance", *arguments, "--num_crops", "64", "--epochs", "3", "--no_progress"])
    assert code == 0
    document = json.loads(output.read_text())
    settings = document["settings"]
    assert settings["protocol"] == "held-out photos" and settings["num_test_images"] == 48
    assert (settings["num_crops"], settings["num_images"]) == (64, 96 + 48)
    assert settings["crop_scale"] == [1.0, 1.0] and settings["border"] == "fill"
    colour = document["families"]["color"]
    assert colour["num_test"] == 64  # as many scored crops as fitted ones, all of test images
    assert list(colour["per_parameter_r2"]) == ["brightness", "contrast"]


def test_recipe_and_its_host_only_control_differ_only_in_the_decoders():
    """`--reconstruction_weight 0` on the recipe is the host alone: same encoder, views, g and data, no decoders."""
    from pathlib import Path

    from equirecon.commands.pretrain import parse_arguments
    from equirecon.training.model_setup import build_model

    recipe = str(Path(__file__).resolve().parent.parent / "recipes" / "fashion-mnist-vicreg.json")
    built = {}
    for weight in ("1", "0"):
        model_args, data_args, training_args, _ = parse_arguments(
            ["--config", recipe, "--reconstruction_weight", weight, "--output_dir", "unused", "--use_cpu", "true"]
        )
        assert (data_args.dataset, data_args.validation_split) == ("fashion_mnist", "test")
        assert (training_args.view_preset, training_args.context_fill) == ("crop-only", "black")
        assert training_args.transformation_family == "rotation" and training_args.rotation_range == [-45, 45]
        built[weight] = build_model(model_args, training_args)
    with_decoders, host = built["1"], built["0"]
    assert host.config.image_size == with_decoders.config.image_size == 32 and host.config.patch_size == 4
    assert len(host.decoders) == 0 and len(with_decoders.decoders) == 2
    encoder_keys = {k for k in with_decoders.state_dict() if not k.startswith("decoders.")}
    assert set(host.state_dict()) == encoder_keys
