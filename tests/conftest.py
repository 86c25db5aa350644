"""Shared test set-up: offline, quiet, deterministic, tiny."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_EVALUATE_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

# Tiny models gain nothing from intra-op threads, and on a loaded 2-core machine two threads spin-wait on each other.
torch.set_num_threads(1)


@pytest.fixture
def tiny_equirecon_config():
    from model_helpers import tiny_config

    return tiny_config()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A saved, untrained tiny pretraining model (seed 0), one per test module that asks for it."""
    from model_helpers import tiny_config

    from equirecon import EquiReconForPreTraining

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("pretrained")
    EquiReconForPreTraining(tiny_config()).save_pretrained(path)
    return path
