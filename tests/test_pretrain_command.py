import json

import pytest
import yaml
from PIL import Image
from trainer_helpers import FAST_PRETRAIN
from transformers import AutoImageProcessor, AutoModel

from equirecon import EquiReconModel
from equirecon.commands import main as cli_main
from equirecon.commands.pretrain import parse_arguments
from equirecon.model_card import build_model_card


@pytest.fixture(scope="module")
def pretrained_run(tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("run")
    assert cli_main(["pretrain", "--output_dir", str(output_dir), *FAST_PRETRAIN]) == 0
    return output_dir


def test_default_run_writes_a_complete_loadable_model_directory(pretrained_run):
    for name in (
        "config.json", "model.safetensors", "preprocessor_config.json", "configuration_equirecon.py",
        "modeling_equirecon.py", "objectives.py", "training_log.json", "reconstructions.png", "loss_curves.png",
        "README.md", "equirecon_run.json", "equivariance_results.json",
    ):  # fmt: skip
        assert (pretrained_run / name).is_file(), name
    model = AutoModel.from_pretrained(pretrained_run, trust_remote_code=True)
    assert isinstance(model, EquiReconModel)
    processor = AutoImageProcessor.from_pretrained(pretrained_run)
    assert processor.size == {"height": 64, "width": 64}
    run = json.loads((pretrained_run / "equirecon_run.json").read_text())
    assert set(run["final_train_losses"]) == {"loss", "ssl_loss", "reconstruction_loss"}
    assert "eval_reconstruction_loss" in run["metrics"]
    log = json.loads((pretrained_run / "training_log.json").read_text())
    assert [entry["step"] for entry in log if "ssl_loss" in entry] == [1, 2]


def test_model_card_reports_the_measured_results(pretrained_run):
    equivariance = json.loads((pretrained_run / "equivariance_results.json").read_text())
    card = build_model_card(pretrained_run)
    metadata = card.data.to_dict()
    results = metadata["model-index"][0]["results"]
    measured = {m["name"]: m["value"] for r in results for m in r["metrics"]}
    assert measured["R² rotation"] == round(equivariance["r2"]["rotation"], 4)
    assert measured["R² mean"] == round(equivariance["mean_r2"], 4)
    assert metadata["library_name"] == "transformers" and "custom_code" in metadata["tags"]
    assert "trust_remote_code=True" in card.text and "d_equi" not in card.text  # rendered, not a raw template
    assert "| invariant | 128 (first) |" in card.text
    (pretrained_run / "README.md").unlink()
    assert cli_main(["model-card", str(pretrained_run)]) == 0
    assert "R² rotation" in (pretrained_run / "README.md").read_text()


def test_closing_evaluation_reports_read_outs_next_to_their_controls(pretrained_run):
    equivariance = json.loads((pretrained_run / "equivariance_results.json").read_text())
    assert equivariance["feature"] == "mean_patch"  # the headline: the backbone, where reconstruction acts
    assert equivariance["reference"]["label"] == "random initialisation"
    assert (
        set(equivariance["read_outs"]) == set(equivariance["reference"]["read_outs"]) == {"mean_patch", "equivariant"}
    )
    assert set(equivariance["shuffled_r2"]) == {"rotation", "color", "blur", "translation"}
    card = build_model_card(pretrained_run).text
    reference = equivariance["reference"]["read_outs"]["mean_patch"]["r2"]["rotation"]
    assert "| random initialisation, mean_patch | " + f"{reference:.3f}" in card
    assert "| θ-shuffled control (chance), mean_patch |" in card
    metrics = json.loads((pretrained_run / "equirecon_run.json").read_text())["metrics"]
    names = ("view2", "blurred_view2", "view1", "blend", "blurred_blend")
    controls = [metrics[f"eval_copy_{name}_loss"] for name in names]
    assert all(value > 0 for value in controls)
    assert "Reconstruction control (held-out pairs, masked MSE)" in card
    assert f"the best blend a_k·v1 + b_k·v2 {metrics['eval_copy_blend_loss']:.4f}" in card
    beats = metrics["eval_reconstruction_loss"] < min(controls)
    assert ("beat all 5 θ-free answers" in card) == beats  # after 2 steps: the card must say they do not
    assert beats or "do **not** beat" in card
    # The headline R² has its controls in the model-index too, named as such.
    index = {
        m["name"]
        for r in build_model_card(pretrained_run).data.to_dict()["model-index"][0]["results"]
        for m in r["metrics"]
    }
    assert {"R² rotation (random initialisation, control)", "R² rotation (θ-shuffled chance, control)"} <= index
    run = json.loads((pretrained_run / "equirecon_run.json").read_text())
    assert run["resumed"] is None and run["skipped_images"] == []
    assert "none was skipped" in card
    unpaired = metrics["eval_unpaired_reconstruction_loss"]
    assert f"given another pair's view 1 {unpaired:.4f}" in card
    assert ("their error rises by" in card) == (unpaired > metrics["eval_reconstruction_loss"])


def test_evaluate_gives_the_model_the_r2_of_its_card(pretrained_run, tmp_path):
    """One protocol: `equirecon evaluate equivariance` on the run directory, with the run's crops and epochs, gives
    the R² the closing benchmark wrote (on the CPU, the same figures)."""
    closing = json.loads((pretrained_run / "equivariance_results.json").read_text())
    output = tmp_path / "evaluate.json"
    arguments = ["--num_crops", "48", "--epochs", "2", "--reference", "none", "--no_progress", "--no_plot"]
    assert (
        cli_main(["evaluate", "equivariance", "--model", str(pretrained_run), *arguments, "--output", str(output)])
        == 0
    )
    evaluated = json.loads(output.read_text())
    assert evaluated["settings"]["num_crops"] == closing["settings"]["num_crops"] == 48
    assert evaluated["r2"] == pytest.approx(closing["r2"], abs=1e-6)
    assert evaluated["shuffled_r2"] == pytest.approx(closing["shuffled_r2"], abs=1e-6)


def test_model_card_shows_the_reconstructions_and_the_loss_curves(pretrained_run):
    card = build_model_card(pretrained_run).text
    assert "![Reconstructions of held-out pairs](reconstructions.png)" in card
    assert "![Loss curves](loss_curves.png)" in card
    assert card.index("## Training data and recipe") < card.index("### Pictures") < card.index("## Evaluation")
    with Image.open(pretrained_run / "loss_curves.png") as picture:  # two panels: total/SSL and reconstruction
        assert picture.format == "PNG" and picture.size == (1200, 400)


def test_model_card_command_rewrites_the_card(pretrained_run):
    (pretrained_run / "README.md").unlink()
    assert cli_main(["model-card", str(pretrained_run)]) == 0
    assert "R² rotation" in (pretrained_run / "README.md").read_text()


def test_recipe_file_then_command_line_overrides(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({"max_steps": 7, "rotation_range": [-30, 30], "preset": "vicreg-vit-s16"}))
    model_args, _, training_args, _ = parse_arguments(["--config", str(recipe), "--max_steps", "9"])
    assert training_args.max_steps == 9
    assert training_args.rotation_range == [-30.0, 30.0]
    assert model_args.preset == "vicreg-vit-s16"


def test_every_recipe_in_the_repository_parses():
    from pathlib import Path

    recipes = sorted((Path(__file__).parents[1] / "recipes").glob("pretrain-*.json"))
    assert len(recipes) >= 6
    for recipe in recipes:
        # bf16 needs an accelerator this machine may lack; everything else must parse as written.
        model_args, _, training_args, _ = parse_arguments(["--config", str(recipe), "--bf16", "False"])
        assert training_args.max_steps > 0 and model_args.preset, recipe


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--nope", "3"], "unknown argument(s): --nope 3"),
        (["--max_steps", "abc"], "argument --max_steps/--max-steps: invalid int value: 'abc'"),
        (["--rotation_range", "10", "-10"], "rotation_range must be finite with low <= high"),
        (["--transformation_family", "shear"], "family must be one of"),
        (
            ["--image_column", "pixels"],
            "image_column='pixels' is not a column of this dataset; found ['image', 'name']",
        ),
        (["--preset", "huge"], "Unknown preset 'huge'"),
        (["--view_preset", "strong"], "--view_preset must be one of"),
        (["--config", "/nonexistent/recipe.json"], "--config /nonexistent/recipe.json: no such file"),
    ],
)
def test_bad_arguments_fail_with_one_line_before_training(tmp_path, capsys, arguments, message):
    assert cli_main(["pretrain", "--output_dir", str(tmp_path / "out"), *FAST_PRETRAIN, *arguments]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and error[0].startswith("equirecon pretrain: error: ")
    assert message in error[0]
    assert not list((tmp_path / "out").glob("checkpoint-*"))


def test_a_logger_that_is_not_installed_is_named_before_training(tmp_path, capsys, monkeypatch):
    from equirecon.training import arguments

    monkeypatch.setattr(arguments, "get_available_reporting_integrations", lambda: ["wandb"])
    command = ["pretrain", "--output_dir", str(tmp_path / "out"), *FAST_PRETRAIN, "--report_to", "tensorboard"]
    assert cli_main(command) == 2
    error = capsys.readouterr().err.strip()
    assert error == (
        "equirecon pretrain: error: --report_to tensorboard: not installed here (e.g. `pip install tensorboard`); "
        "installed loggers: wandb."
    )


def test_unwritable_output_dir_is_reported(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert cli_main(["pretrain", "--output_dir", str(blocker / "run"), *FAST_PRETRAIN]) == 2
    assert f"--output_dir {blocker / 'run'} is not writable" in capsys.readouterr().err


def test_unknown_command_and_help(capsys):
    assert cli_main(["train"]) == 2
    assert "unknown command 'train'" in capsys.readouterr().err
    assert cli_main(["--help"]) == 0
    assert "pretrain" in capsys.readouterr().out


def test_the_reference_row_is_the_model_before_its_first_step(tmp_path):
    """With a learning rate of 0 training changes nothing, so the rebuilt start must score exactly as the model."""
    output_dir = tmp_path / "still"
    arguments = ["--learning_rate", "0", "--equivariance_features", "mean_patch", "--output_dir", str(output_dir)]
    assert cli_main(["pretrain", *arguments, *FAST_PRETRAIN]) == 0
    equivariance = json.loads((output_dir / "equivariance_results.json").read_text())
    reference = equivariance["reference"]["read_outs"]["mean_patch"]["r2"]
    assert reference == pytest.approx(equivariance["read_outs"]["mean_patch"]["r2"], abs=1e-6)


def test_training_flags_are_in_the_config_the_model_is_built_with(tmp_path):
    """K and g_θ's family and ranges given as training flags are set when the config is built (one flag per range of
    `TransformationConfig`), not written into it after the model exists."""
    from equirecon.imaging.transformations import RANGE_FIELDS, TransformationConfig
    from equirecon.training.model_setup import build_model

    flags = [f"--{name}" for name in RANGE_FIELDS]
    for flag in flags:
        _, _, training_args, _ = parse_arguments(["--output_dir", str(tmp_path), flag, "0", "0.5"])
        assert getattr(training_args, flag[2:]) == [0.0, 0.5]
    arguments = ["--num_intermediates", "3", "--transformation_family", "rotation", "--rotation_range", "-30", "30"]
    model_args, _, training_args, _ = parse_arguments(["--output_dir", str(tmp_path), *arguments])
    model = build_model(model_args, training_args)
    assert model.config.num_intermediates == len(model.decoders) == 3
    assert model.config.transformation == TransformationConfig(family="rotation", rotation_range=(-30, 30)).to_dict()
