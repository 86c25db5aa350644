"""Random square crops of a few photos, at the model's resolution, as the equivariance benchmark's images.

The benchmark needs thousands of images I but a user (or the bundled set of ~15 natural photos) may only have a
handful, so it draws many random crops per photo. Crops are described by boxes and rendered on demand, batch by
batch, so memory does not grow with the number of crops. Each crop records its photo, so that the regressor is
fitted and scored on crops of different photos (:func:`.scores.score_feature_pairs`).

A crop is a small window of a photo resized to a few dozen pixels, and resizing from the full photo reads every pixel
of the box, which can cost more than encoding the crop. So each photo is downscaled once to :data:`OVERSAMPLING`
times the resolution its smallest crop needs (never below it), and padded once for the crops whose context reaches
past its border; smaller copies of that one, each :data:`LEVEL_STEP` times smaller than the last, are made as crops
need them. A crop is then one small resize of the smallest copy that still holds :data:`OVERSAMPLING` times its
pixels, close to the full-size rendering (``tests/test_equivariance_benchmark.py`` checks how close): the resize
reads about (reduction)² pixels of the copy per pixel it makes, so a crop twice the smallest one's side costs no
more than the smallest.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..imaging.context import reflect_into_box, widen_box
from ..imaging.decoding import to_rgb_uint8

__all__ = ["LEVEL_STEP", "OVERSAMPLING", "CropSet", "as_photos"]

#: How much finer than a crop's output the copy it is cut from is at least: a crop is then rendered by reducing its
#: copy at least twofold (antialiased), which the full-size rendering matches to rounding.
OVERSAMPLING = 2.0
#: How much smaller each copy of a photo is than the previous one: every crop reduces its copy by a factor between
#: OVERSAMPLING and OVERSAMPLING × LEVEL_STEP.
LEVEL_STEP = math.sqrt(2.0)


def as_photos(images: Any, *, image_column: str = "image", max_images: int | None = None) -> list[Image.Image]:
    """RGB PIL images from a sequence of images/arrays/tensors or a ``datasets.Dataset`` (column ``image_column``)."""
    column_names = getattr(images, "column_names", None)
    if column_names is not None:  # datasets.Dataset
        if image_column not in column_names:
            raise ValueError(f"the dataset has no column {image_column!r} (columns: {column_names}).")
        count = len(images) if max_images is None else min(len(images), max_images)
        items: Sequence[Any] = [images[index][image_column] for index in range(count)]
    else:
        items = list(images)[:max_images] if max_images is not None else list(images)
    return [Image.fromarray(to_rgb_uint8(item, min_size=1)) for item in items]


@dataclass(frozen=True)
class CropSet:
    """``len(photo_index)`` crops: crop ``i`` is box ``boxes[i]`` = (left, top, right, bottom) of photo
    ``photo_index[i]``, resized to ``image_size`` (height, width)."""

    photos: tuple[Image.Image, ...]
    photo_index: np.ndarray
    boxes: np.ndarray
    image_size: tuple[int, int]
    _sources: dict[int, _Source] = field(default_factory=dict, init=False, repr=False, compare=False)

    @classmethod
    def sample(
        cls,
        photos: Sequence[Image.Image],
        photo_ids: Sequence[int],
        num_crops: int,
        image_size: tuple[int, int],
        *,
        scale: tuple[float, float] = (0.25, 1.0),
        context_size: tuple[int, int] | None = None,
        generator: np.random.Generator,
    ) -> CropSet:
        """Draw ``num_crops`` crops uniformly over ``photo_ids``.

        Each crop has the aspect ratio of ``image_size`` and covers a uniform fraction in ``scale`` of the
        largest such box that fits the photo, at a uniform position. With ``context_size`` (larger than
        ``image_size``), the box is then widened about its centre into the photo
        (:func:`~equirecon.imaging.context.widen_box`) and rendered at ``context_size``, so that the centred
        ``image_size`` window is exactly the drawn crop and the margin is the photo around it.
        """
        if num_crops < 1:
            raise ValueError(f"num_crops must be positive, got {num_crops}.")
        low, high = scale
        if not 0.0 < low <= high <= 1.0:
            raise ValueError(f"crop scale must satisfy 0 < low <= high <= 1, got {scale}.")
        height, width = image_size
        out_height, out_width = context_size or image_size
        factor = (out_width / width, out_height / height)
        chosen = np.asarray(photo_ids)[generator.integers(0, len(photo_ids), size=num_crops)]
        fractions = generator.uniform(low, high, size=num_crops)
        positions = generator.uniform(0.0, 1.0, size=(num_crops, 2))
        boxes = np.empty((num_crops, 4), dtype=np.float64)
        for i, (photo_id, fraction) in enumerate(zip(chosen, fractions, strict=True)):
            photo = photos[photo_id]
            fit = min(photo.width / width, photo.height / height)  # largest box of the target aspect ratio
            box_w, box_h = width * fit * np.sqrt(fraction), height * fit * np.sqrt(fraction)
            left = positions[i, 0] * (photo.width - box_w)
            top = positions[i, 1] * (photo.height - box_h)
            boxes[i] = widen_box((left, top, left + box_w, top + box_h), factor, photo.size)
        return cls(tuple(photos), chosen.astype(np.int64), boxes, (int(out_height), int(out_width)))

    def __len__(self) -> int:
        return len(self.photo_index)

    def render(self, indices: Sequence[int] | slice, pool: ThreadPoolExecutor | None = None) -> torch.Tensor:
        """Crops ``indices`` as a float ``(B, 3, H, W)`` tensor in [0, 1] (bicubic, antialiased resize), their resizes
        spread over ``pool``'s threads if given (PIL resizes without the GIL)."""
        height, width = self.image_size
        size = (width, height)
        # Which copy each crop is cut from is decided here, on one thread; only the resizes run on the pool.
        jobs = [
            self._source(int(self.photo_index[i])).copy_for(self.boxes[i], size) for i in np.arange(len(self))[indices]
        ]

        def cut(job: tuple[Image.Image, tuple[float, float, float, float]]) -> np.ndarray:
            return np.asarray(job[0].resize(size, Image.Resampling.BICUBIC, box=job[1]))

        arrays = list(pool.map(cut, jobs)) if pool is not None else [cut(job) for job in jobs]
        # Channels first in memory too: g_θ's and the normalisation's elementwise passes run 1.3-2.7× faster on it.
        return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous().float().div_(255.0)

    def _source(self, photo_id: int) -> _Source:
        """Photo ``photo_id`` downscaled for its crops and padded for their context, made at its first crop."""
        if photo_id not in self._sources:
            boxes = self.boxes[self.photo_index == photo_id]
            self._sources[photo_id] = _Source.for_crops(self.photos[photo_id], boxes, self.image_size)
        return self._sources[photo_id]

    def batches(self, batch_size: int, *, background: bool = False) -> Iterator[torch.Tensor]:
        """The crops in order, ``batch_size`` at a time.

        By default each batch is rendered when asked for, on as many threads as torch uses: an encoder on the CPU
        then has every core for its forward and rendering every core for its resizes, in turn. ``background``:
        render each batch on one thread while the caller works on the previous one, so that rendering overlaps an
        encoder on an accelerator; not for an encoder on the CPU, where that thread takes a core from torch's
        threads (2 cores, 2,048 crops × 5 passes: 7.1 s against 6.6 s rendering in turn on one thread,
        docs/results.md)."""
        if not background:
            threads = torch.get_num_threads()
            with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="crops") as pool:
                for start in range(0, len(self), batch_size):
                    yield self.render(slice(start, start + batch_size), pool if threads > 1 else None)
            return
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="crops") as renderer:
            pending = renderer.submit(self.render, slice(0, batch_size))
            for start in range(0, len(self), batch_size):
                batch = pending.result()
                if start + batch_size < len(self):
                    pending = renderer.submit(self.render, slice(start + batch_size, start + 2 * batch_size))
                yield batch

    def num_batches(self, batch_size: int) -> int:
        return -(-len(self) // batch_size)

    def fingerprint(self) -> str:
        """Hash of the photos' pixels, the boxes and the output size (a cache key for features of these crops)."""
        digest = hashlib.sha256()
        for photo in self.photos:
            digest.update(f"{photo.size}".encode())
            digest.update(photo.tobytes())
        digest.update(self.photo_index.tobytes())
        digest.update(np.round(self.boxes, 6).tobytes())
        digest.update(f"{self.image_size}".encode())
        return digest.hexdigest()

    @staticmethod
    def concatenate(first: CropSet, second: CropSet) -> CropSet:
        same_photos = len(first.photos) == len(second.photos) and all(
            a is b for a, b in zip(first.photos, second.photos, strict=True)
        )
        if not same_photos:
            raise ValueError("can only concatenate crops of the same photos.")
        if first.image_size != second.image_size:
            raise ValueError("can only concatenate crops of the same size.")
        return CropSet(
            first.photos,
            np.concatenate([first.photo_index, second.photo_index]),
            np.concatenate([first.boxes, second.boxes]),
            first.image_size,
        )


@dataclass(frozen=True)
class _Source:
    """What the crops of one photo are cut from: the photo resized by ``scale`` (x, y), then padded by ``offset``
    (level 0), and copies of that, each :data:`LEVEL_STEP` times smaller than the last, made when a crop needs one."""

    image: Image.Image
    scale: tuple[float, float]
    offset: tuple[int, int]
    _levels: dict[int, Image.Image] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def for_crops(cls, photo: Image.Image, boxes: np.ndarray, image_size: tuple[int, int]) -> _Source:
        """The smallest copy of ``photo`` that renders each of ``boxes`` at ``image_size`` (height, width) from
        :data:`OVERSAMPLING` times as many pixels (the photo itself when that is not smaller), reflected at its
        border (:func:`~equirecon.imaging.context.reflect_into_box`) as far as the boxes reach."""
        height, width = image_size
        need = max(
            float(np.max(width / (boxes[:, 2] - boxes[:, 0]))), float(np.max(height / (boxes[:, 3] - boxes[:, 1])))
        )
        factor = OVERSAMPLING * need
        image = photo
        if factor < 1.0:
            size = (math.ceil(photo.width * factor), math.ceil(photo.height * factor))
            image = photo.resize(size, Image.Resampling.BICUBIC)
        scale = (image.width / photo.width, image.height / photo.height)
        scaled = boxes * np.array([scale[0], scale[1], scale[0], scale[1]])
        reach = (*scaled[:, :2].min(axis=0), *scaled[:, 2:].max(axis=0))
        pixels = np.asarray(image)
        padded, moved = reflect_into_box(pixels, tuple(float(value) for value in reach))
        if padded is not pixels:
            image = Image.fromarray(padded)
        return cls(image, scale, (round(moved[0] - reach[0]), round(moved[1] - reach[1])))  # whole pixels

    def box(self, box: np.ndarray) -> tuple[float, float, float, float]:
        """A box of the photo in the coordinates of :attr:`image` (level 0)."""
        (scale_x, scale_y), (offset_x, offset_y) = self.scale, self.offset
        left, top, right, bottom = (float(value) for value in box)
        return (
            left * scale_x + offset_x,
            top * scale_y + offset_y,
            right * scale_x + offset_x,
            bottom * scale_y + offset_y,
        )

    def copy_for(
        self, box: np.ndarray, size: tuple[int, int]
    ) -> tuple[Image.Image, tuple[float, float, float, float]]:
        """The smallest copy that renders the photo's ``box`` at ``size`` (width, height) from at least
        :data:`OVERSAMPLING` times its pixels, and the box in that copy's coordinates."""
        left, top, right, bottom = self.box(box)
        reduction_x, reduction_y = (right - left) / size[0], (bottom - top) / size[1]  # from level 0
        level = max(0, math.floor(math.log(min(reduction_x, reduction_y) / OVERSAMPLING, LEVEL_STEP)))
        while level > 0:
            image = self._level(level)
            shrink_x, shrink_y = image.width / self.image.width, image.height / self.image.height
            if min(reduction_x * shrink_x, reduction_y * shrink_y) >= OVERSAMPLING:  # levels are whole pixels
                return image, (left * shrink_x, top * shrink_y, right * shrink_x, bottom * shrink_y)
            level -= 1
        return self.image, (left, top, right, bottom)

    def _level(self, level: int) -> Image.Image:
        """Level 0 resized by LEVEL_STEP^-level (made from level 0, once)."""
        if level not in self._levels:
            factor = LEVEL_STEP**-level
            size = (max(1, round(self.image.width * factor)), max(1, round(self.image.height * factor)))
            self._levels[level] = self.image.resize(size, Image.Resampling.BICUBIC)
        return self._levels[level]
