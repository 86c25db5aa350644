"""The per-example CPU half of a transform pair: base views A1/A2 with albumentations, and θ sampling.

A *transform pair* is ``{pixel_values: v1 = A1(I), base_pixel_values: u = A2(I), transform_params: θ}``. g_θ itself
is not applied here: it runs once per batch on the accelerator (:mod:`equirecon.imaging.transformations`), which
keeps the CPU workers as cheap as a plain two-view SSL pipeline.

Randomness is seeded per DataLoader worker and per rank (:mod:`equirecon.imaging.workers` says why albumentations'
own seeding is not used), so streams differ across workers, ranks and (with non-persistent workers) epochs.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, Literal

import albumentations as A
import cv2
import numpy as np
import torch
from albumentations.pytorch import ToTensorV2
from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from ..imaging.context import CONTEXT_FILLS, context_side, reflect_into_box, widen_box
from ..imaging.decoding import ImageLike, to_rgb_uint8
from ..imaging.transformations import TransformationConfig
from ..imaging.workers import seed_view_transform, worker_context
from .masking import BlockMaskGenerator

__all__ = [
    "VIEW_PRESETS",
    "ContextRandomResizedCrop",
    "TransformPairMaker",
    "build_view_transform",
    "seed_view_transform",
    "to_rgb_uint8",
    "worker_context",
]

#: "all": DINOv2 global-crop augmentations; "crop-only": random resized crop only; "none": resize + centre crop.
VIEW_PRESETS: tuple[str, ...] = ("all", "crop-only", "none")


class ContextRandomResizedCrop(A.RandomResizedCrop):
    """``RandomResizedCrop`` whose output carries a context margin: the box is drawn exactly as
    ``RandomResizedCrop`` draws it (same scale and aspect distribution, same random calls), widened about its
    centre by ``context`` (:func:`~equirecon.imaging.context.widen_box`), and resized so that the drawn box fills
    the centred ``size`` window of the ``context_side(size, context)``-pixel output. The margin is rounded to whole
    photo pixels, so the drawn box and the centre window agree to half a photo pixel."""

    class InitSchema(A.RandomResizedCrop.InitSchema):
        context: float = 1.0
        context_fill: str = "reflect"

    def __init__(
        self,
        size: tuple[int, int],
        context: float = 1.0,
        context_fill: str = "reflect",
        scale: tuple[float, float] = (0.08, 1.0),
        ratio: tuple[float, float] = (0.75, 4 / 3),
        interpolation: int = cv2.INTER_LINEAR,
        mask_interpolation: int = cv2.INTER_NEAREST,
        area_for_downscale: Literal["image", "image_mask"] | None = None,
        p: float = 1.0,
    ) -> None:
        super().__init__(
            size=size,
            scale=scale,
            ratio=ratio,
            interpolation=interpolation,
            mask_interpolation=mask_interpolation,
            area_for_downscale=area_for_downscale,
            p=p,
        )
        self.context = context
        self.context_fill = context_fill
        self.view_size = size
        self.size = (context_side(size[0], context), context_side(size[1], context))

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        coords = super().get_params_dependent_on_data(params, data)["crop_coords"]
        x_min, y_min, x_max, y_max = coords
        height, width = params["shape"][:2]
        # Margin in photo pixels that maps to the output's margin; whole pixels, so the crop needs no resampling.
        margin_x = round((x_max - x_min) * (self.size[1] - self.view_size[1]) / (2 * self.view_size[1]))
        margin_y = round((y_max - y_min) * (self.size[0] - self.view_size[0]) / (2 * self.view_size[0]))
        factor = (1 + 2 * margin_x / (x_max - x_min), 1 + 2 * margin_y / (y_max - y_min))
        left, top, right, bottom = widen_box((x_min, y_min, x_max, y_max), factor, (width, height))
        return {"crop_coords": (round(left), round(top), round(right), round(bottom))}

    def apply(self, img: np.ndarray, crop_coords: tuple[int, int, int, int], **params: Any) -> np.ndarray:
        padded, box = reflect_into_box(img, crop_coords, fill=self.context_fill)
        return super().apply(padded, tuple(int(round(v)) for v in box), **params)


def build_view_transform(
    preset: str = "all",
    size: int = 224,
    *,
    image_mean: Sequence[float] = IMAGENET_DEFAULT_MEAN,
    image_std: Sequence[float] = IMAGENET_DEFAULT_STD,
    crop_scale: tuple[float, float] = (0.32, 1.0),
    seed: int | None = None,
    view: Literal[1, 2, "local"] = 1,
    context: float = 1.0,
    context_fill: str = "reflect",
) -> A.Compose:
    """An albumentations pipeline from an RGB uint8 HWC image to a normalised float32 (3, S, S) tensor: the view
    (``size`` pixels square) inside a context margin, S = :func:`~equirecon.imaging.context.context_side` (size,
    context); S = size for the default ``context=1``.

    ``preset="all"`` follows DINOv2's global crops: RandomResizedCrop(scale=crop_scale, bicubic), horizontal flip,
    colour jitter (0.4, 0.4, 0.2, 0.1; p=0.8), grayscale (p=0.2), Gaussian blur (σ in [0.1, 2], 9 taps) and, for
    the second view, solarize. As in DINOv2, ``view=1`` always blurs and ``view=2`` blurs with p=0.1 and
    solarizes with p=0.2; ``view="local"`` is a multi-crop local crop (pass its small ``size`` and ``crop_scale``),
    blurred with p=0.5. ``"crop-only"`` keeps just the random resized crop (the paper's "rot" setting);
    ``"none"`` resizes the short side and centre-crops (deterministic, e.g. for evaluation). Shrinking uses area
    averaging, as torchvision's antialiased PIL resize does. The crop box is drawn for the view alone, so its scale
    and aspect distribution do not depend on ``context``; the margin is the photo around it
    (:mod:`equirecon.imaging.context`), reflected where it leaves the photo, or black with
    ``context_fill="black"`` (objects on black, as Fashion-MNIST). ``seed`` makes the pipeline reproducible (see
    :func:`seed_view_transform`); :class:`TransformPairMaker` reseeds it per worker anyway.
    """
    if preset not in VIEW_PRESETS:
        raise ValueError(f"preset must be one of {VIEW_PRESETS}, got {preset!r}")
    if view not in (1, 2, "local"):
        raise ValueError(f"view must be 1, 2 or 'local', got {view!r}")
    if not (isinstance(size, int) and size > 0):
        raise ValueError(f"size must be a positive int, got {size!r}")
    low, high = crop_scale
    if not 0 < low <= high <= 1:
        raise ValueError(f"crop_scale must satisfy 0 < low <= high <= 1, got {crop_scale!r}")

    if not context >= 1.0:
        raise ValueError(f"context must be >= 1 (a multiple of the view's side), got {context!r}")
    if context_fill not in CONTEXT_FILLS:
        raise ValueError(f"context_fill must be one of {CONTEXT_FILLS}, got {context_fill!r}")
    output_size = context_side(size, context)
    crop: list[A.BasicTransform]
    if preset == "none":
        crop = [
            A.SmallestMaxSize(max_size=size, interpolation=cv2.INTER_CUBIC, area_for_downscale="image"),
            A.PadIfNeeded(
                output_size,
                output_size,
                border_mode=cv2.BORDER_REFLECT_101 if context_fill == "reflect" else cv2.BORDER_CONSTANT,
                fill=0,
            ),
            A.CenterCrop(output_size, output_size),
        ]
    else:
        crop_options: dict[str, Any] = {"scale": (low, high), "interpolation": cv2.INTER_CUBIC}
        crop = [
            ContextRandomResizedCrop(
                size=(size, size),
                context=context,
                context_fill=context_fill,
                area_for_downscale="image",
                **crop_options,
            )
            if context > 1
            else A.RandomResizedCrop(size=(size, size), area_for_downscale="image", **crop_options)
        ]
    photometric: list[A.BasicTransform] = []
    if preset == "all":
        photometric = [
            A.HorizontalFlip(p=0.5),
            A.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1, p=0.8),
            A.ToGray(p=0.2),
            A.GaussianBlur(blur_limit=(9, 9), sigma_limit=(0.1, 2.0), p={1: 1.0, 2: 0.1, "local": 0.5}[view]),
        ]
        if view == 2:
            photometric.append(A.Solarize(threshold_range=(0.5, 0.5), p=0.2))
    transform = A.Compose(
        [
            *crop,
            *photometric,
            A.Normalize(mean=tuple(image_mean), std=tuple(image_std), max_pixel_value=255.0),
            ToTensorV2(),
        ]
    )
    if seed is not None:
        seed_view_transform(transform, seed)
    return transform


class TransformPairMaker:
    """Per-example CPU work: v1 = A1(I), u = A2(I), θ sampled. Seeds itself per DataLoader worker and per rank.

    Picklable; each copy reseeds itself the first time it runs in a new process or DataLoader worker, from
    ``(seed, rank, worker seed)``. The worker seed is torch's per-worker seed, which differs per worker and per
    DataLoader iterator (epoch) and is reproducible under ``torch.manual_seed`` (which ``Trainer`` sets).
    ``rank`` defaults to the ``torch.distributed`` rank, else ``$RANK``, else 0.

    The batch-level counterpart needs the same ``transformation``, ``image_mean`` and ``image_std``, which are
    kept as attributes.

    ``u`` (``base_pixel_values``) is ``base_size`` pixels square: the view plus a context margin of
    ``context`` × ``size`` (default: :attr:`TransformationConfig.context_ratio`, the least that keeps the largest θ
    inside real pixels; 1 for black fill), reflected beyond the photo's border or black (``context_fill``, see
    :func:`build_view_transform`). v1 is ``size`` pixels square.

    With a ``mask_generator`` (iBOT, DINOv2: :meth:`BlockMaskGenerator.from_config`), each example also carries
    ``bool_masked_pos`` (2, num_patches): the student's masks of v1 and v2, from a random stream of their own.
    With ``num_local_crops`` M > 0 (multi-crop, DINO family), it carries ``local_pixel_values`` (M, 3, s, s): local
    crops of the photo, ``local_size`` pixels square from ``local_crop_scale`` of its area, which only the student
    sees. g_θ stays on u (the second global view), as without them.
    """

    def __init__(
        self,
        transformation: TransformationConfig,
        *,
        view_preset: str = "all",
        size: int = 224,
        image_mean: Sequence[float] = IMAGENET_DEFAULT_MEAN,
        image_std: Sequence[float] = IMAGENET_DEFAULT_STD,
        crop_scale: tuple[float, float] = (0.32, 1.0),
        seed: int = 0,
        rank: int | None = None,
        min_image_size: int = 32,
        context: float | None = None,
        context_fill: str = "reflect",
        mask_generator: BlockMaskGenerator | None = None,
        num_local_crops: int = 0,
        local_size: int = 96,
        local_crop_scale: tuple[float, float] = (0.05, 0.32),
    ) -> None:
        if not isinstance(transformation, TransformationConfig):
            raise TypeError(f"transformation must be a TransformationConfig, got {type(transformation).__name__}")
        if not (isinstance(seed, int) and seed >= 0):
            raise ValueError(f"seed must be a non-negative int, got {seed!r}")
        if rank is not None and not (isinstance(rank, int) and rank >= 0):
            raise ValueError(f"rank must be a non-negative int or None, got {rank!r}")
        if not (isinstance(min_image_size, int) and min_image_size >= 1):
            raise ValueError(f"min_image_size must be a positive int, got {min_image_size!r}")
        self.transformation = transformation
        self.view_preset = view_preset
        self.size = size
        self.image_mean = tuple(float(m) for m in image_mean)
        self.image_std = tuple(float(s) for s in image_std)
        self.seed = seed
        self.rank = rank
        self.min_image_size = min_image_size
        self.mask_generator = mask_generator
        if not (isinstance(num_local_crops, int) and num_local_crops >= 0):
            raise ValueError(f"num_local_crops must be a non-negative int, got {num_local_crops!r}")
        self.num_local_crops = num_local_crops
        common: dict[str, Any] = {"image_mean": image_mean, "image_std": image_std, "crop_scale": crop_scale}
        ratio = transformation.context_ratio if context is None else context
        # u is A2's view box (drawn like A1's, at view size) inside a margin of the photo around it, from which g_θ
        # draws real pixels instead of black fill; the trainer crops the view from the centre after g_θ.
        # build_view_transform checks the ratio.
        self.view1 = build_view_transform(view_preset, size, view=1, **common)
        self.view2 = build_view_transform(
            view_preset, size, view=2, context=ratio, context_fill=context_fill, **common
        )
        self.base_size = context_side(size, ratio)
        self.local_view = (
            build_view_transform(
                view_preset,
                local_size,
                view="local",
                image_mean=image_mean,
                image_std=image_std,
                crop_scale=local_crop_scale,
            )
            if num_local_crops > 0
            else None
        )
        self._generator: np.random.Generator | None = None
        self._mask_generator_rng: np.random.Generator | None = None
        self._seeded_for: tuple | None = None

    def __call__(self, image: ImageLike) -> dict[str, torch.Tensor]:
        self._ensure_seeded()
        array = to_rgb_uint8(image, min_size=self.min_image_size)
        theta = self.transformation.sample(1, self._generator)[0]
        example = {
            "pixel_values": self.view1(image=array)["image"],
            "base_pixel_values": self.view2(image=array)["image"],
            "transform_params": torch.from_numpy(theta),
        }
        if self.mask_generator is not None:
            example["bool_masked_pos"] = torch.from_numpy(self.mask_generator(self._mask_generator_rng))
        if self.local_view is not None:
            crops = [self.local_view(image=array)["image"] for _ in range(self.num_local_crops)]
            example["local_pixel_values"] = torch.stack(crops)
        return example

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(family={self.transformation.family!r}, view_preset={self.view_preset!r}, "
            f"size={self.size}, seed={self.seed}, rank={self.rank})"
        )

    @property
    def resolved_rank(self) -> int:
        if self.rank is not None:
            return self.rank
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return torch.distributed.get_rank()
        return int(os.environ.get("RANK", 0))

    def _ensure_seeded(self) -> None:
        context = worker_context()
        if context == self._seeded_for:
            return
        sequence = np.random.SeedSequence([self.seed, self.resolved_rank, context[2] or 0])
        # The first three children are those of spawn(3): the masks' stream leaves the others unchanged.
        view1_seed, view2_seed, theta_seed, mask_seed, local_seed = sequence.spawn(5)
        seed_view_transform(self.view1, view1_seed)
        seed_view_transform(self.view2, view2_seed)
        if self.local_view is not None:
            seed_view_transform(self.local_view, local_seed)
        self._generator = np.random.default_rng(theta_seed)
        self._mask_generator_rng = np.random.default_rng(mask_seed)
        self._seeded_for = context
