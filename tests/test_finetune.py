"""`equirecon finetune` end to end (tiny models, a handful of steps), its data, recipes and argument errors."""

import json
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from distributed_helpers import run_two_processes
from huggingface_hub import ModelCard
from PIL import Image
from safetensors.torch import load_file
from transformers import AutoModelForImageClassification, AutoModelForSemanticSegmentation, pipeline

from equirecon.commands import main as cli_main
from equirecon.commands.finetune import main, parse_arguments
from equirecon.evaluation.loading import InputSpec
from equirecon.finetuning import data as dd
from equirecon.finetuning import shapes as fs
from equirecon.finetuning import transforms
from equirecon.finetuning.arguments import FinetuneModelArguments
from equirecon.finetuning.models import load_model

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
SHAPE_NAMES = {**dict(enumerate(fs.SHAPE_CLASSES)), 4: "star"}  # "star" never occurs: an absent class


def _run(argv, capsys):
    status = main([str(a) for a in argv])
    return status, capsys.readouterr().err


@pytest.fixture(scope="module")
def classification_run(checkpoint, tmp_path_factory):
    """A linear probe on the offline default (digits): 64 training images, two epochs, evaluated after each (so a
    metric that forgot to reset between evaluations would show in the final figures)."""
    output = tmp_path_factory.mktemp("classification")
    status = main(
        ["classification", "--model", str(checkpoint), "--output_dir", str(output), "--freeze_backbone"]
        + ["--max_train_samples", "64", "--max_eval_samples", "40", "--num_train_epochs", "2"]
        + ["--per_device_train_batch_size", "16", "--per_device_eval_batch_size", "16", "--learning_rate", "1e-2"]
        + ["--save_strategy", "no", "--eval_strategy", "epoch", "--use_cpu", "--seed", "0"]
    )
    assert status == 0
    return output


@pytest.fixture(scope="module")
def segmentation_dataset(tmp_path_factory):
    """Generated shapes saved with save_to_disk, with an id2label.json naming a class that never occurs and a frame
    of ignored (255) pixels around every evaluation label map."""
    shapes = fs.shapes_dataset(num_train=8, num_validation=10, image_size=48, seed=3)

    def frame(example):
        label = np.array(example["label"])
        label[:4], label[-4:], label[:, :4], label[:, -4:] = 255, 255, 255, 255
        return {"label": Image.fromarray(label)}

    shapes["validation"] = shapes["validation"].map(frame)
    path = tmp_path_factory.mktemp("shapes")
    shapes.save_to_disk(path)
    (path / "id2label.json").write_text(json.dumps({str(k): v for k, v in SHAPE_NAMES.items()}))
    return path


@pytest.fixture(scope="module")
def segmentation_run(checkpoint, segmentation_dataset, tmp_path_factory):
    """Full fine-tuning with the UPerNet head on the saved dataset above, one epoch."""
    output = tmp_path_factory.mktemp("segmentation")
    status = main(
        ["segmentation", "--model", str(checkpoint), "--dataset", str(segmentation_dataset)]
        + ["--output_dir", str(output), "--segmentation_head", "upernet", "--num_train_epochs", "1"]
        + ["--per_device_train_batch_size", "4", "--per_device_eval_batch_size", "4", "--learning_rate", "1e-3"]
        + ["--save_strategy", "no", "--eval_strategy", "no", "--use_cpu", "--seed", "0"]
    )
    assert status == 0
    return output


def _eval_batches(output, task, dataset, batch_size):
    """The evaluation set as the run saw it: same transform, size and normalisation (read back from the saved
    image processor), same batching."""
    processor = json.loads((output / "preprocessor_config.json").read_text())
    spec = InputSpec(
        (processor["size"]["height"], processor["size"]["width"]), processor["image_mean"], processor["image_std"]
    )
    transform = transforms.DownstreamTransform(
        task,
        transforms.build_transform(
            task, train=False, size=spec.image_size, image_mean=spec.image_mean, image_std=spec.image_std
        ),
        image_column="image",
        label_column="label",
    )
    examples = dataset.with_transform(transform)
    for start in range(0, len(examples), batch_size):
        yield transforms.collate_downstream(
            [examples[i] for i in range(start, min(start + batch_size, len(examples)))]
        )


# --------------------------------------------------------------------------------------------------- end to end


def test_linear_probe_writes_a_complete_model_directory(classification_run, checkpoint):
    output = classification_run
    for name in ("config.json", "model.safetensors", "preprocessor_config.json", "README.md", "eval_results.json"):
        assert (output / name).is_file(), name
    config = json.loads((output / "config.json").read_text())
    assert config["id2label"] == {str(i): str(i) for i in range(10)}
    assert config["architectures"] == ["EquiReconForImageClassification"] and config["freeze_backbone"] is True
    processor = json.loads((output / "preprocessor_config.json").read_text())
    assert processor["image_processor_type"] == "ViTImageProcessor" and processor["size"] == {
        "height": 32,
        "width": 32,
    }
    # The probe trained the classifier only: the encoder is the pretraining checkpoint's, bit for bit.
    trained, pretrained = load_file(output / "model.safetensors"), load_file(checkpoint / "model.safetensors")
    encoder = [key for key in trained if key.startswith("equirecon.")]
    assert encoder and all(torch.equal(trained[key], pretrained[key]) for key in encoder)
    card = (output / "README.md").read_text()
    results = json.loads((output / "eval_results.json").read_text())
    assert "digits" in card and "built-in offline default" in card and "linear probe" in card
    assert f"| accuracy | {results['eval_accuracy']:.4f} |" in card
    assert "More information needed" not in card.split("## Training procedure")[0]
    index = {r.metric_type: r for r in ModelCard.load(output / "README.md").data.eval_results}
    assert index["accuracy"].metric_value == pytest.approx(results["eval_accuracy"])
    assert (index["accuracy"].task_type, index["accuracy"].dataset_split) == ("image-classification", "validation")
    (output / "README.md").unlink()  # the one card builder rebuilds it from the directory alone
    assert cli_main(["model-card", str(output)]) == 0 and (output / "README.md").read_text() == card


def test_accuracy_matches_a_direct_evaluation(classification_run):
    model = AutoModelForImageClassification.from_pretrained(classification_run).eval()
    data = dd.load_downstream_dataset("classification", max_eval_samples=40)
    predictions, references = [], []
    with torch.no_grad():
        for batch in _eval_batches(classification_run, "classification", data.eval, 16):
            predictions.append(model(batch["pixel_values"]).logits.argmax(-1))
            references.append(batch["labels"])
    predictions, references = torch.cat(predictions).numpy(), torch.cat(references).numpy()
    results = json.loads((classification_run / "eval_results.json").read_text())
    assert results["eval_accuracy"] == pytest.approx((predictions == references).mean(), abs=1e-12)
    recalls = [(predictions[references == c] == c).mean() for c in np.unique(references)]
    assert results["eval_mean_class_accuracy"] == pytest.approx(np.mean(recalls), abs=1e-12)


def test_full_fine_tune_trains_the_encoder_and_upernet_head(segmentation_run, checkpoint):
    trained, pretrained = (
        load_file(segmentation_run / "model.safetensors"),
        load_file(checkpoint / "model.safetensors"),
    )
    encoder = [key for key in trained if key.startswith("equirecon.backbone.")]
    assert any(not torch.equal(trained[key], pretrained[key]) for key in encoder)
    config = json.loads((segmentation_run / "config.json").read_text())
    assert config["segmentation_head"] == "upernet" and config["freeze_backbone"] is False
    assert config["id2label"] == {str(k): v for k, v in SHAPE_NAMES.items()}  # from the dataset's id2label.json
    processor = json.loads((segmentation_run / "preprocessor_config.json").read_text())
    assert processor["image_processor_type"] == "SegformerImageProcessor"


def test_segmentation_head_defaults_to_linear_except_for_a_segmentation_checkpoint(checkpoint, segmentation_run):
    fresh, new = load_model(
        FinetuneModelArguments(task="segmentation", model=str(checkpoint)), SHAPE_NAMES, "segmentation"
    )
    assert fresh.config.segmentation_head == "linear" and new and all(key.startswith("head.") for key in new)
    again, new = load_model(
        FinetuneModelArguments(task="segmentation", model=str(segmentation_run)), SHAPE_NAMES, "segmentation"
    )
    assert again.config.segmentation_head == "upernet" and new == []


def test_mean_iou_matches_a_direct_evaluation(segmentation_run, segmentation_dataset):
    """The streamed, batch-wise metrics of the run equal a confusion matrix computed here from every pixel, with
    the ignored frame left out and the absent class ("star") NaN and out of the means."""
    model = AutoModelForSemanticSegmentation.from_pretrained(segmentation_run).eval()
    validation = datasets.load_from_disk(str(segmentation_dataset))["validation"]
    confusion = np.zeros((5, 5), dtype=np.int64)
    ignored = 0
    with torch.no_grad():
        for batch in _eval_batches(segmentation_run, "segmentation", validation, 4):
            logits = model(batch["pixel_values"]).logits
            labels = batch["labels"].numpy()
            predicted = F.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=False)
            predicted = predicted.argmax(1).numpy()
            keep = labels != 255
            ignored += int((~keep).sum())
            confusion += np.bincount(labels[keep] * 5 + predicted[keep], minlength=25).reshape(5, 5)
    assert ignored > 0 and confusion[4].sum() == 0
    intersection = np.diag(confusion)
    union = confusion.sum(0) + confusion.sum(1) - intersection
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, intersection / union, np.nan)
    results = json.loads((segmentation_run / "eval_results.json").read_text())
    assert results["eval_mean_iou"] == pytest.approx(np.nanmean(iou), abs=1e-12)
    assert results["eval_overall_accuracy"] == pytest.approx(intersection.sum() / confusion.sum(), abs=1e-12)
    for index, name in SHAPE_NAMES.items():
        if np.isnan(iou[index]):
            assert np.isnan(results[f"eval_iou_{name}"]), name
        else:
            assert results[f"eval_iou_{name}"] == pytest.approx(iou[index], abs=1e-12), name
    assert np.isnan(results["eval_iou_star"])
    index = {r.metric_type: r.metric_value for r in ModelCard.load(segmentation_run / "README.md").data.eval_results}
    assert index["mean_iou"] == pytest.approx(results["eval_mean_iou"])


def test_the_three_pipelines_run_on_the_fine_tuned_models(classification_run, segmentation_run):
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (45, 60, 3), dtype=np.uint8))

    classify = pipeline("image-classification", model=str(classification_run), top_k=3)
    predictions = classify(image)
    assert len(predictions) == 3 and all(p["label"] in {str(i) for i in range(10)} for p in predictions)
    with torch.no_grad():
        probabilities = classify.model(**classify.image_processor(image, return_tensors="pt")).logits.softmax(-1)[0]
    assert predictions[0]["label"] == str(int(probabilities.argmax()))
    assert predictions[0]["score"] == pytest.approx(float(probabilities.max()), abs=1e-5)

    segment = pipeline("image-segmentation", model=str(segmentation_run))
    segments = segment(image)
    assert segments and all(s["label"] in SHAPE_NAMES.values() for s in segments)
    masks = np.stack([np.asarray(s["mask"]) > 0 for s in segments])
    assert masks.shape[1:] == (45, 60) and (masks.sum(0) == 1).all()  # one class per pixel, every pixel

    extract = pipeline("image-feature-extraction", model=str(segmentation_run))
    features = torch.tensor(extract(image))
    encoder_input = extract.image_processor(image, return_tensors="pt")
    with torch.no_grad():
        expected = extract.model(**encoder_input).last_hidden_state
    assert features.shape == (1, 1 + 16, 32) and torch.allclose(features, expected, atol=1e-5)


def test_evaluation_sees_what_the_saved_image_processor_makes(classification_run):
    """Evaluation (albumentations) and `pipeline(...)` (the saved PIL processor) resample alike: measured 0.25 grey
    levels apart on average when enlarging, 2.9 when shrinking (PIL's antialiasing filter is not OpenCV's area
    average); bicubic resampling would be 4.9 and 6.7 apart, bilinear without area-averaging 5.8 when shrinking."""
    from transformers import AutoImageProcessor

    processor = AutoImageProcessor.from_pretrained(classification_run)
    size = (processor.size["height"], processor.size["width"])
    transform = transforms.build_transform(
        "classification", train=False, size=size, image_mean=processor.image_mean, image_std=processor.image_std
    )
    grey_levels = torch.tensor(processor.image_std).view(3, 1, 1) * 255
    rng = np.random.default_rng(0)
    for shape, tolerance in (((8, 8), 1.0), ((120, 90), 4.0)):  # 4× up, ~3× down
        smooth = Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8))
        image = np.asarray(smooth.resize(shape[::-1], Image.Resampling.BICUBIC))
        expected = processor(Image.fromarray(image), return_tensors="pt")["pixel_values"][0]
        error = ((transform(image=image)["image"] - expected) * grey_levels).abs().mean()
        assert error < tolerance, (shape, float(error))


# ------------------------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--label_column", "nope"], "--label_column 'nope' is not a column"),
        (["--image_column", "picture"], "image_column='picture' is not a column"),
        (["--eval_split", "test"], "--eval_split 'test' not found"),
        (["--dataset", "embedded-shapes"], "built-in dataset 'embedded-shapes' is for segmentation"),
        (["--segmentation_head", "linear"], "--segmentation_head is a segmentation option"),
        (["--crop_scale", "0.5"], "--crop_scale takes two numbers"),
    ],
)
def test_bad_arguments_fail_in_one_line_before_training(checkpoint, tmp_path, capsys, extra, message):
    output = tmp_path / "run"
    status, err = _run(["classification", "--model", checkpoint, "--output_dir", output, *extra], capsys)
    assert status == 2 and message in err and err.count("\n") == 1, err
    assert not (output / "model.safetensors").exists() and not (output / "trainer_state.json").exists()


def test_unlabelled_split_unwritable_output_and_unknown_model_are_reported(checkpoint, tmp_path, capsys):
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b"])})
    image = Image.new("RGB", (8, 8))
    datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_dict({"image": [image] * 4, "label": [0, 1, 0, 1]}, features=features),
            "test": datasets.Dataset.from_dict({"image": [image] * 2, "label": [-1, -1]}, features=features),
        }
    ).save_to_disk(tmp_path / "unlabelled")
    base = ["classification", "--model", checkpoint]
    status, err = _run([*base, "--dataset", tmp_path / "unlabelled", "--output_dir", tmp_path / "a"], capsys)
    assert status == 2 and "split 'test' has examples without a label" in err, err

    (tmp_path / "file").write_text("")
    status, err = _run([*base, "--output_dir", tmp_path / "file" / "run"], capsys)
    assert status == 2 and "is not writable" in err, err

    status, err = _run(["classification", "--model", tmp_path / "missing", "--output_dir", tmp_path / "b"], capsys)
    assert status == 2 and "no such directory" in err, err

    for argv, message in [
        (["detection", "--model", checkpoint], "unknown task 'detection'"),
        (["classification"], "--model is required"),
        (["--model", checkpoint], "name the task"),
        (["segmentation", "--config", RECIPES / "finetune-full.json", "--model", checkpoint], "recipe is for"),
        (
            ["segmentation", "--model", checkpoint, "--reduce_labels", "--output_dir", tmp_path / "c"],
            "real background",
        ),
    ]:
        status, err = _run(argv, capsys)
        assert status == 2 and message in err, (argv, err)


# ------------------------------------------------------------------------------------------------------ recipes


@pytest.mark.parametrize(
    ("recipe", "task", "frozen", "head"),
    [
        ("finetune-linear-probe", "classification", True, None),
        ("finetune-full", "classification", False, None),
        ("segmentation-linear", "segmentation", True, "linear"),
        ("segmentation-upernet", "segmentation", False, "upernet"),
    ],
)
def test_recipes_parse_into_their_protocols(recipe, task, frozen, head):
    model_args, data_args, training_args = parse_arguments(
        ["--config", str(RECIPES / f"{recipe}.json"), "--model", "m", "--learning_rate", "0.5", "--bf16", "false"]
    )
    assert (model_args.task, model_args.freeze_backbone, model_args.segmentation_head) == (task, frozen, head)
    assert training_args.learning_rate == 0.5  # the command line overrides the recipe
    assert training_args.output_dir == f"runs/equirecon-{task}"
    assert not training_args.remove_unused_columns and training_args.batch_eval_metrics
    if task == "segmentation":
        assert data_args.reduce_labels and data_args.num_labels == 150 and model_args.image_size == 512


# --------------------------------------------------------------------------------------------------------- data


def test_shape_masks_are_exact():
    """Composite the same shapes onto two backgrounds: the pixels that differ are exactly the background label."""
    dark, light = np.zeros((64, 64, 3), np.uint8), np.full((64, 64, 3), 255, np.uint8)
    for seed in range(5):
        image_a, label_a = fs._draw_shapes_example(dark, np.random.default_rng(seed))
        image_b, label_b = fs._draw_shapes_example(light, np.random.default_rng(seed))
        assert np.array_equal(label_a, label_b) and (label_a > 0).any()
        assert np.array_equal((image_a != image_b).any(-1), label_a == 0)


def test_built_in_defaults(monkeypatch):
    digits = dd.load_downstream_dataset("classification")
    assert (digits.name, len(digits.train), len(digits.eval), digits.num_labels) == ("digits", 1437, 360, 10)
    assert not digits.flip_invariant and digits.crop_scale == (0.5, 1.0) and digits.builtin
    small = fs.shapes_dataset
    monkeypatch.setattr(dd, "shapes_dataset", lambda: small(num_train=6, num_validation=4, image_size=32))
    shapes = dd.load_downstream_dataset("segmentation")
    assert (shapes.name, len(shapes.train), len(shapes.eval)) == ("embedded-shapes", 6, 4)
    assert shapes.id2label == dict(enumerate(fs.SHAPE_CLASSES)) and shapes.flip_invariant
    labels = np.stack([np.asarray(label) for label in shapes.eval["label"]])
    assert 0 in labels and set(np.unique(labels)) <= set(range(len(fs.SHAPE_CLASSES)))


def test_segmentation_training_crop_pads_labels_with_the_ignore_index():
    transform = transforms.DownstreamTransform(
        "segmentation",
        transforms.build_transform(
            "segmentation",
            train=True,
            size=32,
            image_mean=[0.5] * 3,
            image_std=[0.25] * 3,
            scale_range=(0.5, 0.5),
            horizontal_flip=False,
        ),
        image_column="image",
        label_column="label",
    )
    image, label = np.full((40, 40, 3), 200, np.uint8), np.ones((40, 40), np.uint8)
    out = transform({"image": [image], "label": [label]})
    pixels, labels = out["pixel_values"][0], out["labels"][0]
    assert labels.dtype == torch.long and labels.shape == (32, 32)
    padded = labels == 255
    assert padded.float().mean() == pytest.approx(0.75)  # a 16×16 image in a 32×32 crop
    assert torch.all(labels[~padded] == 1)
    assert torch.allclose(pixels[:, padded], torch.tensor(-2.0))  # (0 - 0.5) / 0.25: padding is black


def test_reduce_labels_maps_zero_to_ignore():
    transform = transforms.DownstreamTransform(
        "segmentation",
        transforms.build_transform("segmentation", train=False, size=2, image_mean=[0] * 3, image_std=[1] * 3),
        image_column="image",
        label_column="label",
        reduce_labels=True,
    )
    out = transform({"image": [np.zeros((2, 2, 3), np.uint8)], "label": [np.array([[0, 1], [150, 255]], np.uint8)]})
    assert out["labels"][0].tolist() == [[255, 0], [149, 255]]


def test_image_folder_labels_come_from_sub_folders(tmp_path):
    rng = np.random.default_rng(0)
    for name in ("cats", "dogs"):
        (tmp_path / name).mkdir()
        for i in range(10):
            Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)).save(tmp_path / name / f"{i}.png")
    data = dd.load_downstream_dataset("classification", str(tmp_path), validation_fraction=0.2)
    assert data.id2label == {0: "cats", 1: "dogs"}
    assert (len(data.train), len(data.eval)) == (16, 4)
    assert sorted(data.eval["label"]) == [0, 0, 1, 1]  # stratified hold-out


def test_ade20k_folder_layout_pairs_images_with_annotations(tmp_path, caplog):
    """ADEChallengeData2016: images/{training,validation}/*.jpg ↔ annotations/{training,validation}/*.png."""
    rng = np.random.default_rng(0)
    for split, count in (("training", 3), ("validation", 2)):
        (tmp_path / "images" / split).mkdir(parents=True)
        (tmp_path / "annotations" / split).mkdir(parents=True)
        for i in range(count):
            Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(
                tmp_path / "images" / split / f"ADE_{split}_{i}.jpg"
            )
            Image.fromarray(np.full((20, 24), i, np.uint8)).save(
                tmp_path / "annotations" / split / f"ADE_{split}_{i}.png"
            )
    Image.new("RGB", (8, 8)).save(tmp_path / "images" / "training" / "orphan.jpg")  # no annotation
    data = dd.load_downstream_dataset("segmentation", str(tmp_path), num_labels=3)
    assert (len(data.train), len(data.eval), data.id2label) == (3, 2, {0: "0", 1: "1", 2: "2"})
    assert "1 of 4 images" in caplog.text
    assert np.asarray(data.eval[1]["label"]).tolist() == np.full((20, 24), 1).tolist()
    with pytest.raises(ValueError, match="num_labels is 2"):
        dd.load_downstream_dataset("segmentation", str(tmp_path), num_labels=2)


def test_two_process_ddp_fine_tune_without_find_unused_parameters(checkpoint, tmp_path):
    """Every parameter of the classification model gets a gradient, so plain DDP (gloo, CPU) trains it."""
    result = run_two_processes("distributed_finetune.py", checkpoint, tmp_path / "run", port_base=29700)
    assert "find_unused_parameters" not in result.stderr
    state = json.loads((tmp_path / "run" / "trainer_state.json").read_text())
    assert state["global_step"] == 2
    assert AutoModelForImageClassification.from_pretrained(tmp_path / "run").num_labels == 10
