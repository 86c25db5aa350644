"""The albumentations transforms that feed fine-tuning: from an RGB uint8 image (and, for segmentation, its label
map) to a normalised tensor. DINOv2's random-resized-crop + flip for classification, mmsegmentation's ADE20K
pipeline (random rescale, pad with the ignore index, random crop, flip) for segmentation, and a plain resize to the
model's size for evaluation, the geometry of the image processor saved with the model so that pipelines see what
evaluation saw.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import albumentations as A
import cv2
import numpy as np
import torch
from albumentations.pytorch import ToTensorV2

from ..imaging.decoding import to_rgb_uint8
from ..imaging.workers import seed_view_transform, worker_context

__all__ = ["DEFAULT_CROP_SCALE", "TASKS", "DownstreamTransform", "build_transform", "collate_downstream"]

TASKS: tuple[str, ...] = ("classification", "segmentation")
#: RandomResizedCrop area range for natural images (DINOv2's linear evaluation and fine-tuning).
DEFAULT_CROP_SCALE: tuple[float, float] = (0.08, 1.0)

# Every resize, in training and evaluation: bilinear up, area-averaging down (masks: nearest), the OpenCV filters
# closest to the saved image processor's antialiased PIL bilinear (tests/test_finetune.py measures how close). A
# different filter in training (e.g. bicubic) than in evaluation is a distribution shift the model can learn: a model
# fine-tuned on tiny images upsampled one way scores far lower on images upsampled the other way.
_RESAMPLE: dict[str, Any] = {"interpolation": cv2.INTER_LINEAR, "area_for_downscale": "image"}


def build_transform(
    task: str,
    *,
    train: bool,
    size: int | tuple[int, int],
    image_mean: Sequence[float],
    image_std: Sequence[float],
    crop_scale: tuple[float, float] = DEFAULT_CROP_SCALE,
    scale_range: tuple[float, float] = (0.5, 2.0),
    horizontal_flip: bool = True,
    ignore_index: int = 255,
) -> A.Compose:
    """The albumentations pipeline for one task and phase; output ``image`` is a normalised (3, H, W) tensor.

    * classification, train: ``RandomResizedCrop(size, scale=crop_scale)`` + flip (DINOv2's linear evaluation and
      fine-tuning augmentations, without colour jitter);
    * segmentation, train: random rescale by ``scale_range`` of the output size, pad to the size (image 0, mask
      ``ignore_index``), random crop, flip (mmsegmentation's ADE20K pipeline; padded pixels never enter the loss);
    * evaluation, both tasks: resize to ``size``, the geometry of the image processor saved with the model.

    All resizing is bilinear (area-averaging when shrinking, nearest for masks), the closest OpenCV match to the
    saved processor's PIL resampling, so training, evaluation and ``pipeline(...)`` see images filtered alike.
    """
    height, width = (size, size) if isinstance(size, int) else size
    normalise = [A.Normalize(mean=tuple(image_mean), std=tuple(image_std), max_pixel_value=255.0), ToTensorV2()]
    flip = [A.HorizontalFlip(p=0.5)] if horizontal_flip else []
    if not train:
        return A.Compose([A.Resize(height, width, **_RESAMPLE), *normalise])
    if task == "classification":
        low, high = crop_scale
        if not 0 < low <= high <= 1:
            raise ValueError(f"crop_scale must satisfy 0 < low <= high <= 1, got {crop_scale!r}")
        crop = A.RandomResizedCrop(size=(height, width), scale=(low, high), **_RESAMPLE)
        return A.Compose([crop, *flip, *normalise])
    low, high = scale_range
    if not 0 < low <= high:
        raise ValueError(f"scale_range must satisfy 0 < low <= high, got {scale_range!r}")
    return A.Compose(
        [
            # Short side to the output size, then a random factor in scale_range (mmseg: ratio_range).
            A.SmallestMaxSize(max_size=min(height, width), **_RESAMPLE),
            A.RandomScale(scale_limit=(low - 1.0, high - 1.0), p=1.0, **_RESAMPLE),
            A.PadIfNeeded(
                min_height=height, min_width=width, border_mode=cv2.BORDER_CONSTANT, fill=0, fill_mask=ignore_index
            ),
            A.RandomCrop(height=height, width=width),
            *flip,
            *normalise,
        ]
    )


@dataclass
class DownstreamTransform:
    """``datasets.Dataset.with_transform`` function: decode, augment and tensorise a batch of examples.

    Returns ``{"pixel_values": [(3, H, W) float tensors], "labels": [class ids | (H, W) long tensors]}``. The
    albumentations pipeline is reseeded from ``(seed, rank, DataLoader worker seed)`` the first time it runs in a
    new process or worker, so workers draw different augmentations and a run is reproducible (one
    ``Compose(seed=...)`` would give every worker the same stream).
    """

    task: str
    transform: A.Compose = field(repr=False)
    image_column: str
    label_column: str
    reduce_labels: bool = False
    ignore_index: int = 255
    seed: int = 0
    rank: int = 0
    _seeded_for: tuple | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {self.task!r}")

    def _ensure_seeded(self) -> None:
        context = worker_context()
        if context != self._seeded_for:
            seed_view_transform(self.transform, np.random.SeedSequence([self.seed, self.rank, context[2] or 0]))
            self._seeded_for = context

    def _label_map(self, value: Any) -> np.ndarray:
        label = np.asarray(value)
        if label.ndim == 3 and label.shape[-1] == 1:
            label = label[..., 0]
        if label.ndim != 2:
            raise ValueError(f"a segmentation label map must be single-channel, got shape {label.shape}")
        label = label.astype(np.int64 if label.max(initial=0) > 255 else np.uint8)
        if self.reduce_labels:
            reduced = label.astype(np.int64) - 1
            reduced[(label == 0) | (label == self.ignore_index)] = self.ignore_index
            label = reduced.astype(np.uint8 if self.ignore_index <= 255 else np.int64)
        return label

    def __call__(self, batch: Mapping[str, list]) -> dict[str, list[torch.Tensor]]:
        self._ensure_seeded()
        pixel_values, labels = [], []
        for image, label in zip(batch[self.image_column], batch[self.label_column], strict=True):
            array = to_rgb_uint8(image, min_size=1)
            if self.task == "classification":
                pixel_values.append(self.transform(image=array)["image"])
                labels.append(torch.tensor(int(label), dtype=torch.long))
                continue
            mask = self._label_map(label)
            if mask.shape != array.shape[:2]:
                raise ValueError(f"image {array.shape[:2]} and label map {mask.shape} differ in size")
            out = self.transform(image=array, mask=mask)
            pixel_values.append(out["image"])
            labels.append(torch.as_tensor(out["mask"]).long())
        return {"pixel_values": pixel_values, "labels": labels}


def collate_downstream(examples: Sequence[Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Stack ``pixel_values`` and ``labels`` of examples made by :class:`DownstreamTransform`."""
    if not examples:
        raise ValueError("cannot collate an empty list of examples")
    return {
        "pixel_values": torch.stack([example["pixel_values"] for example in examples]),
        "labels": torch.stack([example["labels"] for example in examples]),
    }
