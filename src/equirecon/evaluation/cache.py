"""A cache of extracted features, in memory and optionally on disk, keyed by what determines them.

Encoding is the expensive part of every evaluation here; fitting a regressor or a probe on cached features takes
seconds. Keys hash everything the features depend on (the model's weights and config, the exact images, the
transformation and its parameters, the preprocessing), so a cache directory can be shared between runs that
sweep the regressor, the R² convention or the feature kind without ever returning stale features.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

__all__ = ["FeatureCache", "cache_key", "model_fingerprint"]


def model_fingerprint(model: nn.Module) -> str:
    """Hash of a model's class, config and every parameter and buffer (names, shapes, dtypes and values).

    Hashing all weights costs about a second per GB; it only runs when a cache needs a key.
    """
    digest = hashlib.blake2b(digest_size=20)
    digest.update(type(model).__qualname__.encode())
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "to_json_string"):
        digest.update(config.to_json_string(use_diff=False).encode())
    for name, tensor in model.state_dict().items():
        tensor = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def cache_key(**parts: Any) -> str:
    """A stable key from JSON-serialisable parts (tensors and arrays are hashed by value)."""

    def encode(value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            value = value.detach().cpu().contiguous()
            return hashlib.blake2b(value.reshape(-1).view(torch.uint8).numpy().tobytes(), digest_size=16).hexdigest()
        if hasattr(value, "tobytes"):  # numpy
            return hashlib.blake2b(value.tobytes(), digest_size=16).hexdigest()
        return value

    payload = json.dumps({key: encode(value) for key, value in parts.items()}, sort_keys=True, default=str)
    return hashlib.blake2b(payload.encode(), digest_size=20).hexdigest()


class FeatureCache:
    """``{key: {feature_kind: (N, D) tensor}}`` in memory, mirrored to ``directory`` as safetensors if given."""

    def __init__(self, directory: str | Path | None = None) -> None:
        self.directory = Path(directory) if directory is not None else None
        if self.directory is not None:
            self.directory.mkdir(parents=True, exist_ok=True)
        self._memory: dict[str, dict[str, torch.Tensor]] = {}

    def _path(self, key: str) -> Path:
        assert self.directory is not None
        return self.directory / f"{key}.safetensors"

    def get(self, key: str) -> dict[str, torch.Tensor] | None:
        if key in self._memory:
            return self._memory[key]
        if self.directory is not None and self._path(key).is_file():
            self._memory[key] = load_file(self._path(key))
            return self._memory[key]
        return None

    def __contains__(self, key: str) -> bool:
        return key in self._memory or (self.directory is not None and self._path(key).is_file())

    def put(self, key: str, features: dict[str, torch.Tensor]) -> None:
        features = {kind: values.detach().cpu().contiguous() for kind, values in features.items()}
        self._memory[key] = features
        if self.directory is not None:
            temporary = self._path(key).with_suffix(".tmp")
            save_file(features, str(temporary))
            temporary.replace(self._path(key))  # atomic: a crashed run never leaves a truncated entry
