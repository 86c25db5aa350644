"""The generated segmentation set ``"embedded-shapes"``: discs, squares and triangles composited onto crops of the
embedded photos, with exact label maps. Needs no download; the offline default of `equirecon finetune segmentation`.
"""

from __future__ import annotations

import functools
import io

import cv2
import datasets
import numpy as np
from PIL import Image, ImageDraw

from ..imaging.decoding import to_rgb_uint8
from ..imaging.sources import embedded_photos

__all__ = ["SHAPE_CLASSES", "shapes_dataset"]

#: Classes of ``"embedded-shapes"``, index = label value.
SHAPE_CLASSES: tuple[str, ...] = ("background", "disc", "square", "triangle")


def _shape_polygon(kind: int, centre: np.ndarray, radius: float, angle: float) -> list[tuple[float, float]] | None:
    if kind == 1:  # disc: drawn as an ellipse by the caller
        return None
    corners = 4 if kind == 2 else 3
    angles = angle + np.arange(corners) * (2 * np.pi / corners)
    return [(float(centre[0] + radius * np.cos(a)), float(centre[1] + radius * np.sin(a))) for a in angles]


def _draw_shapes_example(background: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Composite 1-3 random shapes onto ``background`` (H, W, 3). The image and the mask are painted from the same
    binary (non-antialiased) shape masks, in the same order, so every label pixel is exact, occlusions included."""
    height, width = background.shape[:2]
    image = background.copy()
    label = np.zeros((height, width), dtype=np.uint8)
    for _ in range(int(rng.integers(1, 4))):
        kind = int(rng.integers(1, len(SHAPE_CLASSES)))
        radius = float(rng.uniform(0.1, 0.25) * min(height, width))
        centre = rng.uniform([radius, radius], [width - radius, height - radius])
        canvas = Image.new("1", (width, height), 0)
        draw = ImageDraw.Draw(canvas)
        polygon = _shape_polygon(kind, centre, radius, float(rng.uniform(0, 2 * np.pi)))
        if polygon is None:
            box = (centre[0] - radius, centre[1] - radius, centre[0] + radius, centre[1] + radius)
            draw.ellipse([float(v) for v in box], fill=1)
        else:
            draw.polygon(polygon, fill=1)
        inside = np.asarray(canvas, dtype=bool)
        colour = rng.uniform(0, 255, size=3)
        noise = rng.normal(0.0, 12.0, size=(int(inside.sum()), 3))
        image[inside] = np.clip(colour + noise, 0, 255).astype(np.uint8)
        label[inside] = kind
    return image, label


def _png(image: Image.Image) -> dict[str, bytes | None]:
    """Uncompressed PNG: lossless and fast to write (compression would dominate the generation time)."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=0)
    return {"bytes": buffer.getvalue(), "path": None}


@functools.cache
def _shapes(split: str, num_images: int, image_size: int, seed: int) -> datasets.Dataset:
    photos = [to_rgb_uint8(example["image"]) for example in embedded_photos(split)]
    rng = np.random.default_rng([seed, 0 if split == "train" else 1])
    images, labels = [], []
    for _ in range(num_images):
        photo = photos[int(rng.integers(len(photos)))]
        height, width = photo.shape[:2]
        side = int(rng.uniform(0.3, 1.0) * min(height, width))
        top, left = int(rng.integers(0, height - side + 1)), int(rng.integers(0, width - side + 1))
        crop = cv2.resize(photo[top : top + side, left : left + side], (image_size, image_size), cv2.INTER_AREA)
        image, label = _draw_shapes_example(crop, rng)
        images.append(_png(Image.fromarray(image)))
        labels.append(_png(Image.fromarray(label, mode="L")))
    features = datasets.Features({"image": datasets.Image(), "label": datasets.Image()})
    return datasets.Dataset.from_dict({"image": images, "label": labels}, features=features, split=split)


def shapes_dataset(
    num_train: int = 512, num_validation: int = 128, image_size: int = 128, seed: int = 0
) -> datasets.DatasetDict:
    """The generated segmentation set: shapes on crops of the embedded photos, with exact label maps.

    Backgrounds of ``validation`` come from the held-out embedded photos
    (:data:`~equirecon.training.data.EMBEDDED_VALIDATION_PHOTOS`), so no background is shared between splits.
    Columns ``image`` (RGB) and ``label`` (mode ``L``, values in ``range(len(SHAPE_CLASSES))``). Deterministic in
    ``seed``; built in about a second and cached per process.
    """
    return datasets.DatasetDict(
        {
            "train": _shapes("train", num_train, image_size, seed),
            "validation": _shapes("validation", num_validation, image_size, seed),
        }
    )
