"""The README's Python snippets run as written, in order, in one namespace (as a reader pastes them), against a
directory where `equirecon pretrain` would have written `runs/equirecon-tiny`. Snippets that download a Hub checkpoint
are left out: the tests run offline."""

import re
from pathlib import Path

import torch
from model_helpers import tiny_config
from transformers import ViTImageProcessorPil

from equirecon import EquiReconForPreTraining

README = Path(__file__).resolve().parents[1] / "README.md"


def python_snippets() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)


def test_the_readme_snippets_run_as_written(tmp_path, monkeypatch):
    snippets = [code for code in python_snippets() if "facebook/" not in code]
    assert len(snippets) >= 3  # the usage, remote-code and pretraining-step snippets
    run = tmp_path / "runs" / "equirecon-tiny"
    torch.manual_seed(0)
    EquiReconForPreTraining(tiny_config()).save_pretrained(run)
    ViTImageProcessorPil(size={"height": 32, "width": 32}).save_pretrained(run)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for code in snippets:
        exec(compile(code, str(README), "exec"), namespace)  # noqa: S102 - the README's own code
    assert namespace["outputs"].last_hidden_state.ndim == 3
