"""Shared helpers for the data-side tests (transformations, views, data): small synthetic images and files."""

from __future__ import annotations

import io
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from scipy.ndimage import gaussian_filter  # noqa: E402

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def smooth_image(height: int = 48, width: int = 64, seed: int = 0, sigma: float = 3.0) -> np.ndarray:
    """An asymmetric, smooth RGB float32 HWC image in [0, 1] (bilinear interpolation error stays small)."""
    rng = np.random.default_rng(seed)
    noise = rng.random((height, width, 3))
    image = np.stack([gaussian_filter(noise[..., c], sigma) for c in range(3)], axis=-1)
    image = (image - image.min()) / (image.max() - image.min())
    # A ramp so that no symmetry (flip, 180° rotation) maps the image to itself.
    ramp = np.linspace(0, 0.3, width)[None, :, None] + np.linspace(0, 0.2, height)[:, None, None]
    return ((image * 0.7 + ramp) / 1.2).astype(np.float32)


def to_batch(image: np.ndarray) -> torch.Tensor:
    """HWC float → (1, C, H, W) tensor."""
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).unsqueeze(0).contiguous()


def to_hwc(batch: torch.Tensor, index: int = 0) -> np.ndarray:
    return batch[index].permute(1, 2, 0).numpy()


def normalise(x01: torch.Tensor, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> torch.Tensor:
    return (x01 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


def denormalise(x: torch.Tensor, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> torch.Tensor:
    return x * torch.tensor(std).view(1, 3, 1, 1) + torch.tensor(mean).view(1, 3, 1, 1)


def encode(image: Image.Image, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def coloured_square(index: int, size: int = 40) -> Image.Image:
    """A constant image whose red channel encodes ``index`` (recoverable after resize and normalisation)."""
    return Image.new("RGB", (size, size), (10 * index + 5, 128, 64))


def index_from_pixel_values(pixel_values: torch.Tensor, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> int:
    """Inverse of :func:`coloured_square` for a normalised (3, S, S) view of it."""
    red = float(pixel_values[0].mean()) * std[0] + mean[0]
    return round((red * 255 - 5) / 10)


def awkward_images() -> dict[str, bytes]:
    """Encoded images that real datasets contain and that must all be converted, plus two that cannot be decoded."""
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (24, 30, 3), dtype=np.uint8)
    rgba = np.concatenate([rgb, np.full((24, 30, 1), 128, np.uint8)], axis=-1)
    sixteen = (rng.integers(0, 65536, (24, 30))).astype(np.uint16)
    good = {
        "grayscale": encode(Image.fromarray(rgb[..., 0], "L")),
        "palette": encode(Image.fromarray(rgb).convert("P")),
        "rgba": encode(Image.fromarray(rgba, "RGBA")),
        "cmyk": encode(Image.fromarray(rgb).convert("CMYK"), "JPEG"),
        "sixteen_bit": encode(Image.fromarray(sixteen)),
        "tiny": encode(Image.fromarray(rgb[:2, :3])),
        "one_bit": encode(Image.fromarray(rgb[..., 0] > 128)),
    }
    png = encode(Image.fromarray(rgb))
    bad = {"corrupt": b"this is not an image at all", "truncated": png[: len(png) // 2]}
    return good | bad
