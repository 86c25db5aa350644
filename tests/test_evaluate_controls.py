"""`equirecon evaluate` shows every figure next to its controls: the same architecture untrained (or another
reference checkpoint) beside the model, and the θ-shuffled chance level, in the printout, the JSON and the chart."""

import json

import pytest
import torch
from model_helpers import tiny_config

from equirecon import EquiReconForPreTraining
from equirecon.commands.evaluate import main
from equirecon.evaluation.plotting import equivariance_figure
from equirecon.evaluation.scores import EquivarianceResult, FamilyResult

FAST = ["--no_progress", "--batch_size", "32"]


@pytest.fixture(scope="module")
def trained_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("equirecon")
    torch.manual_seed(0)
    model = EquiReconForPreTraining(tiny_config())
    with torch.no_grad():  # not the weights a fresh initialisation draws, so model and control differ
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    model.save_pretrained(directory)
    return directory


def test_probes_print_the_untrained_encoder_beside_the_model(trained_dir, tmp_path, capsys):
    output = tmp_path / "linear.json"
    assert main(["linear", "--model", str(trained_dir), "--max_images", "120", "--output", str(output), *FAST]) == 0
    printed = capsys.readouterr().out
    document = json.loads(output.read_text())
    reference = document["reference"]
    assert reference["label"].startswith("random initialisation (the same architecture, untrained, seed")
    assert 0 <= reference["accuracy"] <= 1 and reference["accuracy"] != document["accuracy"]
    assert f"linear probe top-1: {document['accuracy']:.4f}" in printed
    assert f"the control, {reference['label']}: {reference['accuracy']:.4f}" in printed


def test_the_control_can_be_left_out(trained_dir, tmp_path, capsys):
    output = tmp_path / "knn.json"
    arguments = ["knn", "--model", str(trained_dir), "--max_images", "80", "--reference", "none", *FAST]
    assert main([*arguments, "--output", str(output)]) == 0
    assert "the control" not in capsys.readouterr().out and "reference" not in json.loads(output.read_text())


def test_equivariance_prints_and_charts_the_reference_and_chance(trained_dir, tmp_path, capsys):
    output = tmp_path / "equivariance.json"
    arguments = ["equivariance", "--model", str(trained_dir), "--families", "rotation", "blur", *FAST]
    assert main([*arguments, "--num_crops", "64", "--epochs", "2", "--output", str(output)]) == 0
    printed = capsys.readouterr().out
    document = json.loads(output.read_text())
    label = document["reference"]["label"]
    control = document["reference"]["read_outs"][document["feature"]]
    assert set(control["r2"]) == {"rotation", "blur"}
    assert f"| this model, {document['feature']} | {document['r2']['rotation']:.3f}" in printed
    assert f"| {label}, {document['feature']} | {control['r2']['rotation']:.3f}" in printed
    assert f"| θ-shuffled control (chance), {document['feature']} |" in printed
    assert (tmp_path / "equivariance_r2.png").is_file()


def _result(r2, shuffled=None):
    families = {
        name: FamilyResult(
            name, ("p",), value, value, value, {"p": value}, 0.0, 10, 10, shuffled_r2=(shuffled or {}).get(name)
        )
        for name, value in r2.items()
    }
    return EquivarianceResult(families=families, feature="mean_patch")


def test_the_chart_has_bars_for_the_model_its_reference_and_chance():
    model = _result({"rotation": 0.7, "blur": 0.37}, shuffled={"rotation": 0.01, "blur": -0.02})
    figure = equivariance_figure({"trained": model, "untrained": _result({"rotation": 0.66, "blur": 0.57})})
    (axes,) = figure.axes
    assert [text.get_text() for text in axes.get_legend().get_texts()] == [
        "trained",
        "untrained",
        "θ-shuffled chance (trained)",
    ]
    assert len(axes.containers) == 3 and all(len(bars) == 3 for bars in axes.containers)  # 2 families + the mean
    chance = [bar.get_height() for bar in axes.containers[2]]
    assert chance == pytest.approx([0.01, -0.02, -0.005])
    alone = equivariance_figure(model, chance=False).axes[0]
    assert len(alone.containers) == 1 and alone.get_legend() is None
