"""`--push_to_hub`: the Hub copy is the finished directory, with the project's card (its `model-index` holds the
measured results), the run record and the pictures, pushed once at the end (a local stand-in replaces the Hub)."""

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from huggingface_hub import HfApi
from model_helpers import tiny_config
from trainer_helpers import FAST_PRETRAIN

from equirecon import EquiReconForPreTraining
from equirecon.commands import main as cli_main
from equirecon.commands.finetune import main as finetune_main


@pytest.fixture
def hub(monkeypatch):
    """Records every upload: the repository, the commit message and the folder's files as they were then."""
    uploads = []

    def create_repo(self, repo_id, **kwargs):
        return SimpleNamespace(repo_id=repo_id)

    def upload_folder(self, *, repo_id, folder_path, commit_message=None, ignore_patterns=None, **kwargs):
        files = {
            path.relative_to(folder_path).as_posix(): path.read_bytes()
            for path in Path(folder_path).rglob("*")
            if path.is_file() and not any(path.relative_to(folder_path).match(p) for p in ignore_patterns or ())
        }
        uploads.append(SimpleNamespace(repo_id=repo_id, message=commit_message, files=files))
        return SimpleNamespace(commit_url=f"https://example.invalid/{repo_id}")

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    return uploads


def _card_metadata(readme: bytes) -> dict:
    text = readme.decode()
    assert text.startswith("---\n"), "the card has no metadata block"
    return yaml.safe_load(text.split("---\n")[1])


def test_pretraining_pushes_the_finished_directory_with_the_projects_card(tmp_path, hub):
    hub_args = ["--push_to_hub", "True", "--hub_model_id", "someone/equirecon-tiny", "--save_strategy", "no"]
    assert cli_main(["pretrain", "--output_dir", str(tmp_path), *FAST_PRETRAIN, *hub_args]) == 0
    assert len(hub) == 1, [upload.message for upload in hub]  # no early push from `save_model`
    (upload,) = hub
    assert upload.repo_id == "someone/equirecon-tiny"
    for name in (
        "model.safetensors",
        "config.json",
        "modeling_equirecon.py",
        "reconstructions.png",
        "loss_curves.png",
    ):
        assert upload.files[name] == (tmp_path / name).read_bytes(), name
    assert upload.files["README.md"] == (tmp_path / "README.md").read_bytes()  # the card as the run left it
    assert b"![Loss curves](loss_curves.png)" in upload.files["README.md"]
    results = _card_metadata(upload.files["README.md"])["model-index"][0]["results"]
    assert any(metric["name"].startswith("R²") for result in results for metric in result["metrics"])
    assert "equirecon_run.json" in upload.files and "equivariance_results.json" in upload.files


def test_fine_tuning_pushes_the_finished_directory_with_the_projects_card(tmp_path, hub):
    torch.manual_seed(0)
    checkpoint = tmp_path / "pretrained"
    EquiReconForPreTraining(tiny_config()).save_pretrained(checkpoint)
    output = tmp_path / "probe"
    status = finetune_main(
        ["classification", "--model", str(checkpoint), "--output_dir", str(output), "--freeze_backbone"]
        + ["--max_train_samples", "16", "--max_eval_samples", "16", "--num_train_epochs", "1"]
        + ["--per_device_train_batch_size", "8", "--save_strategy", "no", "--use_cpu", "--seed", "0"]
        + ["--push_to_hub", "--hub_model_id", "someone/equirecon-probe"]
    )
    assert status == 0
    assert len(hub) == 1, [upload.message for upload in hub]
    (upload,) = hub
    assert upload.files["README.md"] == (output / "README.md").read_bytes()
    results = _card_metadata(upload.files["README.md"])["model-index"][0]["results"]
    assert any(metric["type"] == "accuracy" for result in results for metric in result["metrics"])
