"""Image decoding: anything a dataset holds (PIL, bytes, paths, arrays, tensors, any mode or bit depth) → RGB uint8.

Shared by pretraining (transform pairs), the benchmarks and probes (crops, model inputs) and fine-tuning.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
from collections import OrderedDict
from collections.abc import Iterable
from typing import NamedTuple

import cv2
import numpy as np
import torch
from PIL import Image, ImageOps

__all__ = ["DecodeCache", "DecodedImages", "ImageLike", "decode_images", "to_rgb_uint8"]

ImageLike = Image.Image | np.ndarray | torch.Tensor | bytes | dict

logger = logging.getLogger(__name__)


class DecodedImages(NamedTuple):
    """What :func:`decode_images` kept: the RGB uint8 arrays, their indices in the input, and how many it skipped."""

    images: list[np.ndarray]
    indices: list[int]
    skipped: int


def decode_images(images: Iterable[ImageLike], *, limit: int | None = None) -> DecodedImages:
    """The decodable images of ``images`` as RGB uint8 arrays (at most ``limit``); an image that cannot be decoded
    is skipped with a warning and counted, so one bad file does not end an evaluation. Give undecoded items
    (``datasets.Image(decode=False)``) so that the failure happens here."""
    decoded, kept, skipped = [], [], 0
    for index, image in enumerate(images):
        if limit is not None and len(decoded) >= limit:
            break
        try:
            decoded.append(to_rgb_uint8(image, min_size=1))
        except (OSError, ValueError, TypeError) as error:
            skipped += 1
            logger.warning(
                "Skipping image %d, which cannot be decoded (%s); %d skipped so far.", index, error, skipped
            )
            continue
        kept.append(index)
    return DecodedImages(decoded, kept, skipped)


def to_rgb_uint8(image: ImageLike, *, min_size: int = 32) -> np.ndarray:
    """Any decodable image → RGB uint8 HWC array, upscaled so its short side is at least ``min_size``.

    Handles what real datasets contain: grayscale, 1-bit, palette (with transparency), RGBA/LA (composited on
    white, as a viewer shows them), CMYK, 16-bit and 32-bit integer and float images, EXIF-rotated photos,
    encoded bytes or a ``{"bytes", "path"}`` dict (``datasets.Image(decode=False)``), numpy HWC/HW arrays and
    CHW torch tensors. Raises on undecodable input; the data pipeline counts and skips those.
    """
    if isinstance(image, dict):
        if image.get("bytes") is not None:
            image = image["bytes"]
        elif image.get("path"):
            image = Image.open(image["path"])
        else:
            raise ValueError("image dict has neither 'bytes' nor 'path'")
    if isinstance(image, bytes | bytearray | memoryview):
        image = Image.open(io.BytesIO(image))
    if isinstance(image, str | os.PathLike):
        image = Image.open(image)
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu().numpy()
        if image.ndim == 3 and image.shape[0] in (1, 3, 4):
            image = np.moveaxis(image, 0, -1)

    if isinstance(image, Image.Image):
        array = _pil_to_rgb(image)
    elif isinstance(image, np.ndarray):
        array = _array_to_rgb(image)
    else:
        raise TypeError(f"unsupported image type {type(image).__name__}")

    height, width = array.shape[:2]
    if min(height, width) < min_size:
        scale = min_size / min(height, width)
        new_size = (max(min_size, round(width * scale)), max(min_size, round(height * scale)))
        array = cv2.resize(array, new_size, interpolation=cv2.INTER_CUBIC)
    return np.ascontiguousarray(array)


class DecodeCache:
    """:func:`to_rgb_uint8` for encoded images, remembering the decoded arrays (least recently used out) within
    ``max_bytes``, keyed by a digest of the encoded bytes.

    A handful of photos streamed for hundreds of steps (the embedded photos) would otherwise be decoded again for
    every example, and decoding a PNG costs about twice the two views cut from it. Cached arrays are read-only and
    shared between calls, so a transform that tried to change one in place would fail instead of corrupting the
    next example. Images that are not encoded bytes (arrays, PIL images, paths) are converted without caching.
    """

    def __init__(self, max_bytes: int) -> None:
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0, got {max_bytes}.")
        self.max_bytes = max_bytes
        self.hits = self.misses = self.num_bytes = 0
        self._arrays: OrderedDict[tuple[bytes, int], np.ndarray] = OrderedDict()

    def __call__(self, image: ImageLike, *, min_size: int = 32) -> np.ndarray:
        encoded = image.get("bytes") if isinstance(image, dict) else image
        if self.max_bytes == 0 or not isinstance(encoded, bytes | bytearray | memoryview):
            return to_rgb_uint8(image, min_size=min_size)
        key = (hashlib.blake2b(encoded, digest_size=16).digest(), min_size)
        array = self._arrays.get(key)
        if array is not None:
            self.hits += 1
            self._arrays.move_to_end(key)
            return array
        self.misses += 1
        array = to_rgb_uint8(encoded, min_size=min_size)
        if array.nbytes <= self.max_bytes:
            array.flags.writeable = False
            self._arrays[key] = array
            self.num_bytes += array.nbytes
            while self.num_bytes > self.max_bytes:
                _, evicted = self._arrays.popitem(last=False)
                self.num_bytes -= evicted.nbytes
        return array


def _pil_to_rgb(image: Image.Image) -> np.ndarray:
    image.load()  # decode now, so truncated or corrupt files fail here
    if image.getexif().get(0x0112, 1) != 1:  # EXIF orientation
        image = ImageOps.exif_transpose(image)
    mode = image.mode
    if mode == "RGB":
        return np.asarray(image)
    if mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
        mode = image.mode
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(background, rgba).convert("RGB"))
    if mode.startswith("I") or mode == "F":  # 16/32-bit integer or float: PIL's convert would clip at 255
        return _array_to_rgb(np.asarray(image))
    return np.asarray(image.convert("RGB"))  # L, 1, CMYK, YCbCr, LAB, HSV


def _array_to_rgb(array: np.ndarray) -> np.ndarray:
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (3, 4)):
        raise ValueError(f"expected an HW, HWC (C in 1, 3, 4) image array, got shape {array.shape}")
    if array.size == 0:
        raise ValueError("empty image")
    array = _to_uint8(array)
    if array.ndim == 2:
        return np.repeat(array[..., None], 3, axis=-1)
    if array.shape[-1] == 4:
        alpha = array[..., 3:].astype(np.float32) / 255.0
        return np.round(array[..., :3] * alpha + 255.0 * (1.0 - alpha)).astype(np.uint8)
    return array


def _to_uint8(array: np.ndarray) -> np.ndarray:
    """Rescale by the data's range: 16-bit by 1/257, float [0, 1] by 255, float [0, 255] as is, else min-max."""
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.bool_:
        return array.astype(np.uint8) * 255
    if array.dtype.kind == "f":
        if not np.isfinite(array).all():
            raise ValueError("image contains non-finite values")
        if array.min() >= 0.0 and array.max() <= 1.0:
            return np.round(array * 255.0).astype(np.uint8)
        if array.min() >= 0.0 and array.max() <= 255.0:
            return np.round(array).astype(np.uint8)
    elif array.dtype.kind in "iu":
        if array.min() >= 0 and array.max() <= 255 and array.dtype.itemsize > 2:
            return array.astype(np.uint8)  # 8-bit data stored in a wide integer mode ("I")
        if array.min() >= 0 and array.max() <= 65535:
            return np.round(array.astype(np.float32) / 257.0).astype(np.uint8)
    else:
        raise ValueError(f"unsupported image dtype {array.dtype}")
    low, high = float(array.min()), float(array.max())
    scaled = (array.astype(np.float64) - low) / (high - low) if high > low else np.zeros(array.shape)
    return np.round(scaled * 255.0).astype(np.uint8)
