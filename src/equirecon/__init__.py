"""equirecon: equivariance-coherent self-supervised learning as a transformers model family.

Importing the package registers the EquiRecon classes with the transformers Auto classes. The classes themselves
load on first use, and the `equirecon` console script defers the registration until it has parsed its arguments
(`equirecon.commands.main`), so that `equirecon --help` does not wait for torch and transformers.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = [
    "PRESETS",
    "SSL_OBJECTIVES",
    "EquiReconBackbone",
    "EquiReconConfig",
    "EquiReconForImageClassification",
    "EquiReconForPreTraining",
    "EquiReconForPreTrainingOutput",
    "EquiReconForSemanticSegmentation",
    "EquiReconModel",
    "EquiReconModelOutput",
    "EquiReconPreTrainedModel",
    "register_auto_classes",
]

if TYPE_CHECKING:
    from .modeling import (
        PRESETS,
        SSL_OBJECTIVES,
        EquiReconBackbone,
        EquiReconConfig,
        EquiReconForImageClassification,
        EquiReconForPreTraining,
        EquiReconForPreTrainingOutput,
        EquiReconForSemanticSegmentation,
        EquiReconModel,
        EquiReconModelOutput,
        EquiReconPreTrainedModel,
    )
    from .registration import register_auto_classes


def __getattr__(name: str) -> Any:
    if name == "register_auto_classes":
        return importlib.import_module(".registration", __name__).register_auto_classes
    if name in __all__:
        return getattr(importlib.import_module(".modeling", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _started_by_console_script() -> bool:
    """True while the `equirecon` console script imports `equirecon.commands`: it registers after parsing."""
    main_file = getattr(sys.modules.get("__main__"), "__file__", None) or ""
    return Path(main_file).stem in ("equirecon", "equirecon-script")


if not _started_by_console_script():
    from .registration import register_auto_classes as _register

    _register()
