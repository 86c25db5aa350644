"""The arithmetic of an evaluation's matrix products: float32, or bfloat16 autocast where the device has bfloat16
matrix units.

An evaluation spends its time in two kinds of matrix products: the frozen encoder's forward passes and the θ
regressors' training steps. Under bfloat16 autocast both run on a GPU's tensor cores or a CPU's AMX tiles, while
everything that defines the measurement stays float32: the images and g_θ, the pooled features handed on, the
regressors' weights and Adam's state, their early-stopping losses, their predictions and R².
"""

from __future__ import annotations

import torch

__all__ = ["PRECISIONS", "autocast", "resolve_precision"]

#: ``"auto"`` resolves to one of the other two (:func:`resolve_precision`).
PRECISIONS: tuple[str, ...] = ("auto", "float32", "bfloat16")


def _cpu_has_bfloat16_matrix_units() -> bool:
    # AMX tiles (Intel Sapphire Rapids and later). torch has no public query; without one, stay in float32.
    query = getattr(torch.cpu, "_is_amx_tile_supported", None)
    try:
        return bool(query()) if query is not None else False
    except RuntimeError:
        return False


def resolve_precision(precision: str, device: torch.device | str) -> str:
    """``"float32"`` or ``"bfloat16"`` for ``precision`` on ``device``. ``"auto"`` is bfloat16 where the device
    multiplies it natively (a CUDA GPU that supports it; a CPU with AMX tiles, where the tiny preset encodes about 3×
    and fits its θ regressors about 1.7× faster, docs/results.md) and float32 elsewhere, where bfloat16 would be
    emulated and slower."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}.")
    if precision != "auto":
        return precision
    device = torch.device(device)
    if device.type == "cuda":
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float32"
    if device.type == "cpu":
        return "bfloat16" if _cpu_has_bfloat16_matrix_units() else "float32"
    return "float32"


def autocast(device: torch.device | str, precision: str) -> torch.autocast:
    """bfloat16 autocast on ``device`` for ``precision="bfloat16"``; a context that changes nothing for
    ``"float32"``."""
    if precision not in PRECISIONS[1:]:
        raise ValueError(f"expected a resolved precision (float32 or bfloat16), got {precision!r}.")
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=precision == "bfloat16")
