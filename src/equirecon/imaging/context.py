"""The view and its context margin: one geometry for the pretraining views and the equivariance benchmark.

g_θ (rotation, translation, SE(2), blur) draws pixels from outside the view. Filled black, those pixels would tell
the encoder θ for free, so the view is cut out of a larger image, the *context*, that shares its centre and its
scale: the crop box is drawn first, at the view's size and with the view's scale distribution, then widened about
its centre by the context ratio. The photo is never rescaled for the margin, so the view after g_θ covers exactly
the drawn box. Where the widened box leaves the photo it is shifted inward (the drawn box with it) if the photo is
large enough, and the photo is reflected at its border otherwise.
"""

from __future__ import annotations

import math

import numpy as np
import torch

__all__ = ["CONTEXT_FILLS", "center_crop", "context_side", "reflect_into_box", "widen_box"]

#: What lies beyond a photo's border in a context margin: its reflection (natural photos) or black.
CONTEXT_FILLS: tuple[str, ...] = ("reflect", "black")

Box = tuple[float, float, float, float]


def context_side(view_side: int, ratio: float) -> int:
    """Side of the context image around a ``view_side`` view for a context ``ratio`` (≥ 1): the view plus the
    same whole number of pixels on each side, at least ``view_side · (ratio − 1) / 2``."""
    if not ratio >= 1.0:
        raise ValueError(f"the context ratio must be >= 1 (a multiple of the view's side), got {ratio!r}")
    return view_side + 2 * math.ceil(view_side * (ratio - 1) / 2 - 1e-9)


def center_crop(images: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """The centred ``size`` window of (..., H, W) images: the view inside its context."""
    height, width = (size, size) if isinstance(size, int) else size
    top, left = (images.shape[-2] - height) // 2, (images.shape[-1] - width) // 2
    return images[..., top : top + height, left : left + width]


def widen_box(box: Box, factor: float | tuple[float, float], photo_size: tuple[int, int]) -> Box:
    """``box`` = (left, top, right, bottom) widened about its centre by ``factor`` (x, y), then shifted inward on
    each axis where the photo (width, height) has room for the widened box. An axis where it has not stays
    centred on the box; :func:`reflect_into_box` supplies its pixels."""
    factor_x, factor_y = (factor, factor) if isinstance(factor, (int, float)) else factor
    left, top, right, bottom = box
    widened = []
    for low, high, factor_axis, extent in (
        (left, right, factor_x, photo_size[0]),
        (top, bottom, factor_y, photo_size[1]),
    ):
        half = (high - low) * factor_axis / 2
        centre = (low + high) / 2
        if 2 * half <= extent:
            centre = min(max(centre, half), extent - half)
        widened.append((centre - half, centre + half))
    (new_left, new_right), (new_top, new_bottom) = widened
    return new_left, new_top, new_right, new_bottom


def reflect_into_box(photo: np.ndarray, box: Box, fill: str = "reflect") -> tuple[np.ndarray, Box]:
    """``photo`` (H, W, C) padded far enough to hold ``box``, and the box in the padded image's coordinates.
    Returns the photo itself when the box lies inside it.

    ``fill="reflect"`` reflects the photo at its border (OpenCV's REFLECT_101), the best guess for a natural photo's
    surroundings; ``fill="black"`` pads with zeros, the true surroundings of an object photographed on black (as in
    Fashion-MNIST), where a reflection would mirror parts of the object into view."""
    if fill not in CONTEXT_FILLS:
        raise ValueError(f"fill must be one of {CONTEXT_FILLS}, got {fill!r}")
    height, width = photo.shape[:2]
    left, top, right, bottom = box
    pad_left, pad_top = max(0, math.ceil(-left)), max(0, math.ceil(-top))
    pad_right, pad_bottom = max(0, math.ceil(right - width)), max(0, math.ceil(bottom - height))
    if not (pad_left or pad_top or pad_right or pad_bottom):
        return photo, box
    offset_x, offset_y = pad_left, pad_top
    if fill == "black":
        padding = [(pad_top, pad_bottom), (pad_left, pad_right)] + [(0, 0)] * (photo.ndim - 2)
        return np.pad(photo, padding), (left + offset_x, top + offset_y, right + offset_x, bottom + offset_y)
    padded = photo
    # np.pad's "reflect" is REFLECT_101; repeat while one reflection is not enough (a box over twice the photo).
    while pad_left or pad_top or pad_right or pad_bottom:
        h, w = padded.shape[:2]
        step = [(min(pad_top, h - 1), min(pad_bottom, h - 1)), (min(pad_left, w - 1), min(pad_right, w - 1))]
        padded = np.pad(padded, step + [(0, 0)] * (padded.ndim - 2), mode="reflect")
        pad_top, pad_bottom = pad_top - step[0][0], pad_bottom - step[0][1]
        pad_left, pad_right = pad_left - step[1][0], pad_right - step[1][1]
    return padded, (left + offset_x, top + offset_y, right + offset_x, bottom + offset_y)
