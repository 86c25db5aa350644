"""Metrics: R² (both conventions), accuracy, mean IoU / streaming confusion matrix, evaluate modules offline."""

import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn import metrics as sk_metrics

from equirecon.evaluation.metric_modules import METRIC_NAMES, metric_path
from equirecon.evaluation.metrics import accuracy, r2_score, top_k_accuracy
from equirecon.evaluation.segmentation_metrics import (
    ConfusionMatrix,
    SegmentationMetric,
    confusion_matrix,
    mean_iou,
    metrics_from_confusion_matrix,
)


def _targets(seed=0, n=50):
    # Outputs with different means and scales, so the two R² conventions disagree.
    rng = np.random.default_rng(seed)
    return np.stack([rng.uniform(-45, 45, n), rng.uniform(0.1, 2.0, n), rng.uniform(5, 6, n)], axis=1)


# ----------------------------------------------------------------------------------------------------- R²


@pytest.mark.parametrize("convention", ["global", "per_output"])
def test_r2_perfect_predictor_is_one(convention):
    targets = _targets()
    assert r2_score(y_true=targets, y_pred=targets, multioutput=convention) == pytest.approx(1.0)
    assert r2_score(
        y_true=torch.tensor(targets), y_pred=torch.tensor(targets), multioutput=convention
    ) == pytest.approx(1.0)


def test_r2_mean_predictor_is_zero_under_both_conventions():
    targets = _targets()
    global_mean = np.full_like(targets, targets.mean())
    column_means = np.broadcast_to(targets.mean(axis=0), targets.shape)
    assert r2_score(y_true=targets, y_pred=global_mean, multioutput="global") == pytest.approx(0.0, abs=1e-12)
    assert r2_score(y_true=targets, y_pred=column_means, multioutput="per_output") == pytest.approx(0.0, abs=1e-12)
    np.testing.assert_allclose(
        r2_score(y_true=targets, y_pred=column_means, multioutput="raw_values"), 0.0, atol=1e-12
    )
    # Under SIE's global convention, knowing each output's mean is already worth something when means differ.
    offset = np.random.default_rng(1).uniform(0, 1, (40, 2)) + [0.0, 10.0]
    assert r2_score(y_true=offset, y_pred=np.broadcast_to(offset.mean(0), offset.shape), multioutput="global") > 0.9
    assert r2_score(
        y_true=offset, y_pred=np.broadcast_to(offset.mean(0), offset.shape), multioutput="per_output"
    ) == pytest.approx(0.0)


def test_r2_matches_formulas_and_scikit_learn():
    targets = _targets(1)
    predictions = targets + np.random.default_rng(2).normal(0, [10.0, 0.3, 0.2], targets.shape)
    expected_global = 1 - ((targets - predictions) ** 2).sum() / ((targets - targets.mean()) ** 2).sum()
    assert r2_score(y_true=targets, y_pred=predictions) == pytest.approx(expected_global)
    assert r2_score(y_true=targets, y_pred=predictions, multioutput="per_output") == pytest.approx(
        sk_metrics.r2_score(targets, predictions, multioutput="uniform_average")
    )
    np.testing.assert_allclose(
        r2_score(y_true=targets, y_pred=predictions, multioutput="raw_values"),
        sk_metrics.r2_score(targets, predictions, multioutput="raw_values"),
    )
    assert r2_score(y_true=targets[:, 0], y_pred=predictions[:, 0]) == pytest.approx(
        sk_metrics.r2_score(targets[:, 0], predictions[:, 0])
    )
    assert r2_score(y_true=targets, y_pred=-targets) < 0  # worse than the mean is negative


def test_r2_errors_and_constant_targets():
    with pytest.raises(ValueError, match="same shape"):
        r2_score(y_true=np.zeros((4, 3)), y_pred=np.zeros((4, 2)))
    with pytest.raises(ValueError, match="multioutput"):
        r2_score(y_true=np.arange(4.0), y_pred=np.zeros(4), multioutput="uniform")
    constant = np.ones(5)
    assert r2_score(y_true=constant, y_pred=constant) == 1.0  # scikit-learn's force_finite convention
    assert r2_score(y_true=constant, y_pred=constant + 1) == 0.0


# ----------------------------------------------------------------------------------------------- accuracy


def test_accuracy_labels_logits_and_weights():
    references = np.array([0, 1, 2, 2, 1])
    predictions = np.array([0, 1, 1, 2, 0])
    assert accuracy(predictions, references) == pytest.approx(0.6)
    assert accuracy(predictions, references, normalize=False) == 3.0
    logits = torch.nn.functional.one_hot(torch.tensor(predictions), 3).float() * 5
    assert accuracy(logits, torch.tensor(references)) == pytest.approx(0.6)
    weights = np.array([1, 1, 1, 1, 4])
    assert accuracy(predictions, references, sample_weight=weights) == pytest.approx(
        sk_metrics.accuracy_score(references, predictions, sample_weight=weights)
    )
    scores = np.array([[0.1, 0.5, 0.4], [0.8, 0.15, 0.05], [0.2, 0.3, 0.5]])
    assert top_k_accuracy(scores, [2, 2, 0], k=2) == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="same shape"):
        accuracy([0, 1], [0, 1, 2])


# -------------------------------------------------------------------------------------------- mean IoU

# 4 classes, ignore_index 255. Class 2 is predicted but never a reference; class 3 appears in neither (the 3s
# in the predictions sit on ignored pixels, so they must not count).
REFERENCE = np.array([[0, 0, 1, 1], [0, 255, 1, 1], [255, 0, 1, 0]])
PREDICTION = np.array([[0, 1, 1, 1], [0, 3, 1, 2], [3, 0, 1, 2]])
# Rows: reference, columns: prediction, counted by hand over the 10 valid pixels.
EXPECTED_MATRIX = np.array([[3, 1, 1, 0], [0, 4, 1, 0], [0, 0, 0, 0], [0, 0, 0, 0]])
EXPECTED_IOU = [3 / 5, 4 / 6, 0.0, math.nan]  # 3 / (5 + 3 - 3), 4 / (5 + 5 - 4), 0 / 2, 0 / 0
EXPECTED_ACCURACY = [3 / 5, 4 / 5, math.nan, math.nan]


def _check_hand_example(result):
    np.testing.assert_allclose(result["per_category_iou"], EXPECTED_IOU)
    np.testing.assert_allclose(result["per_category_accuracy"], EXPECTED_ACCURACY)
    assert result["mean_iou"] == pytest.approx((3 / 5 + 4 / 6 + 0.0) / 3)
    assert result["mean_accuracy"] == pytest.approx(0.7)
    assert result["overall_accuracy"] == pytest.approx(7 / 10)


def test_confusion_matrix_by_hand():
    matrix = confusion_matrix(torch.tensor(PREDICTION), torch.tensor(REFERENCE), 4, ignore_index=255)
    np.testing.assert_array_equal(matrix.numpy(), EXPECTED_MATRIX)
    _check_hand_example(metrics_from_confusion_matrix(matrix))


def test_mean_iou_hand_example_and_nan_to_num():
    _check_hand_example(mean_iou([PREDICTION], [REFERENCE], num_labels=4, ignore_index=255))
    _check_hand_example(mean_iou(PREDICTION[None], REFERENCE[None], num_labels=4, ignore_index=255))
    filled = mean_iou([PREDICTION], [REFERENCE], num_labels=4, ignore_index=255, nan_to_num=-1.0)
    np.testing.assert_allclose(filled["per_category_iou"], [3 / 5, 4 / 6, 0.0, -1.0])
    assert filled["mean_iou"] == pytest.approx((3 / 5 + 4 / 6) / 3)  # means are taken before the replacement


def test_mean_iou_label_map_and_reduce_labels():
    # reduce_labels: reference 0 becomes ignored and k becomes k - 1.
    shifted = np.where(REFERENCE == 255, 255, REFERENCE + 1)
    shifted[0, 0] = 0  # now ignored
    result = mean_iou([PREDICTION], [shifted], num_labels=4, reduce_labels=True)
    assert result["overall_accuracy"] == pytest.approx(6 / 9)
    swapped = np.where(REFERENCE == 0, 1, np.where(REFERENCE == 1, 0, REFERENCE))
    mapped = mean_iou([PREDICTION], [swapped], num_labels=4, label_map={0: 1, 1: 0})
    _check_hand_example(mapped)  # simultaneous swap, not a chain


def test_streaming_confusion_matrix_equals_one_shot():
    rng = np.random.default_rng(0)
    references = rng.integers(0, 5, size=(6, 7, 9))
    references[rng.random(references.shape) < 0.1] = 255
    predictions = np.where(rng.random(references.shape) < 0.7, np.where(references == 255, 0, references), 1)
    accumulator = ConfusionMatrix(num_labels=5, ignore_index=255)
    for start in range(0, 6, 4):  # uneven batches
        accumulator.update(torch.tensor(predictions[start : start + 4]), torch.tensor(references[start : start + 4]))
    streamed = accumulator.compute()
    single = mean_iou(predictions, references, num_labels=5)
    for key in ("mean_iou", "mean_accuracy", "overall_accuracy"):
        assert streamed[key] == pytest.approx(single[key])
    valid = references != 255
    np.testing.assert_allclose(
        streamed["per_category_iou"],
        sk_metrics.jaccard_score(references[valid], predictions[valid], labels=list(range(5)), average=None),
    )
    accumulator.reset()
    assert math.isnan(accumulator.compute()["mean_iou"])


def test_out_of_range_labels_raise():
    with pytest.raises(ValueError, match="outside"):
        mean_iou([np.array([[0, 1]])], [np.array([[0, 7]])], num_labels=2)
    with pytest.raises(ValueError, match="outside"):
        mean_iou([np.array([[0, 5]])], [np.array([[0, 1]])], num_labels=2)


def test_segmentation_metric_upsamples_logits_and_ignores_trainer_padding():
    from transformers import EvalPrediction

    metric = SegmentationMetric(num_labels=4, id2label={0: "sky", 1: "road", 2: "car", 3: "tree"})
    # Logits at half resolution whose nearest/bilinear upsampling reproduces PREDICTION exactly is awkward, so use
    # full-resolution logits for the values and check the resize path separately below.
    logits = torch.nn.functional.one_hot(torch.tensor(PREDICTION), 4).permute(2, 0, 1).float()[None] * 10
    labels = torch.tensor(REFERENCE)[None]
    assert metric(EvalPrediction(predictions=logits, label_ids=labels), compute_result=False) == {}
    padded = torch.full((1, 3, 4), -100)  # a padded batch from another process contributes nothing
    result = metric(EvalPrediction(predictions=logits, label_ids=padded), compute_result=True)
    assert result["mean_iou"] == pytest.approx((3 / 5 + 4 / 6) / 3)
    assert result["iou_sky"] == pytest.approx(0.6) and math.isnan(result["iou_tree"])
    assert all(isinstance(value, float) for value in result.values())
    # The metric reset itself: a new evaluation starts from zero.
    constant = torch.zeros(1, 4, 2, 2)
    constant[:, 1] = 1.0  # predicts class 1 everywhere, at a quarter of the label resolution
    result = metric(EvalPrediction(predictions=(constant,), label_ids=torch.ones(1, 8, 8)), compute_result=True)
    assert result["overall_accuracy"] == 1.0 and result["iou_road"] == 1.0


def test_segmentation_metric_inside_trainer_with_batch_eval_metrics(tmp_path):
    from transformers import Trainer, TrainingArguments

    class TinySegmenter(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 3, 1)

        def forward(self, pixel_values, labels=None):
            logits = self.conv(pixel_values)[:, :, ::2, ::2]  # half resolution, like real decode heads
            upsampled = torch.nn.functional.interpolate(logits, size=labels.shape[-2:], mode="bilinear")
            loss = torch.nn.functional.cross_entropy(upsampled, labels, ignore_index=255)
            return {"loss": loss, "logits": logits}

    generator = torch.Generator().manual_seed(0)
    examples = [
        {
            "pixel_values": torch.randn(3, 8, 8, generator=generator),
            "labels": torch.randint(0, 3, (8, 8), generator=generator),
        }
        for _ in range(7)
    ]
    examples[0]["labels"][:2] = 255
    torch.manual_seed(0)
    model = TinySegmenter()
    args = TrainingArguments(
        output_dir=str(tmp_path),
        per_device_eval_batch_size=3,
        batch_eval_metrics=True,
        report_to="none",
        use_cpu=True,
        dataloader_num_workers=0,
    )
    trainer = Trainer(model=model, args=args, eval_dataset=examples, compute_metrics=SegmentationMetric(num_labels=3))
    metrics = trainer.evaluate()

    with torch.no_grad():
        pixels = torch.stack([e["pixel_values"] for e in examples])
        labels = torch.stack([e["labels"] for e in examples])
        logits = torch.nn.functional.interpolate(model(pixels, labels)["logits"], size=(8, 8), mode="bilinear")
    expected = mean_iou(logits.argmax(1), labels, num_labels=3)
    assert metrics["eval_mean_iou"] == pytest.approx(expected["mean_iou"])
    assert metrics["eval_overall_accuracy"] == pytest.approx(expected["overall_accuracy"])
    assert metrics["eval_iou_2"] == pytest.approx(expected["per_category_iou"][2])


# ------------------------------------------------------------------------------------- evaluate modules


def test_metric_modules_load_offline_by_absolute_path(monkeypatch):
    import evaluate

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for name in METRIC_NAMES:
        path = Path(metric_path(name))
        assert path.is_absolute() and (path / f"{name}.py").is_file()

    accuracy_module = evaluate.load(metric_path("accuracy"))
    assert accuracy_module.compute(predictions=[0, 1, 1, 2], references=[0, 1, 2, 2]) == {"accuracy": 0.75}

    r2_module = evaluate.load(metric_path("r_squared"))
    targets = _targets(3)
    predictions = targets + 0.5
    for convention in ("global", "per_output"):
        value = r2_module.compute(
            predictions=predictions.tolist(), references=targets.tolist(), multioutput=convention
        )
        assert value["r_squared"] == pytest.approx(
            r2_score(y_true=targets, y_pred=predictions, multioutput=convention)
        )
    assert r2_module.compute(predictions=[1.0, 2.0, 4.0], references=[1.0, 2.0, 4.0]) == {"r_squared": 1.0}

    iou_module = evaluate.load(metric_path("mean_iou"))
    result = iou_module.compute(predictions=[PREDICTION], references=[REFERENCE], num_labels=4, ignore_index=255)
    _check_hand_example(result)
    # Batches accumulate like any evaluate module.
    iou_module.add_batch(predictions=[PREDICTION], references=[REFERENCE])
    _check_hand_example(iou_module.compute(num_labels=4, ignore_index=255))


def test_no_hub_metric_names_in_the_package():
    package = Path(__file__).resolve().parents[1] / "src" / "equirecon"
    hub_call = re.compile(r"""evaluate\.load\(\s*["'][A-Za-z_-]+["']""")
    offenders = [str(p) for p in package.rglob("*.py") if hub_call.search(p.read_text())]
    assert offenders == []


def test_r2_score_takes_scikit_learns_names_and_refuses_positional_arguments():
    targets, predictions = np.array([1.0, 2.0, 3.0, 4.0]), np.array([1.5, 2.0, 2.0, 4.5])
    expected = sk_metrics.r2_score(targets, predictions)
    assert r2_score(y_true=targets, y_pred=predictions) == pytest.approx(expected)
    assert r2_score(y_pred=predictions, y_true=targets) == pytest.approx(expected)
    # R² is not symmetric: swapped positional arguments would be a wrong number, so there are none.
    assert r2_score(y_true=predictions, y_pred=targets) != pytest.approx(expected)
    with pytest.raises(TypeError, match="positional"):
        r2_score(targets, predictions)
    with pytest.raises(TypeError, match="positional"):
        r2_score(targets, y_pred=predictions)
