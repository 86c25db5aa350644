"""Base views A1/A2, input conversion, and the per-worker / per-rank seeding of the pair maker."""

from __future__ import annotations

import io
import pickle

import albumentations as A
import numpy as np
import pytest
import torch
from _data_helpers import IMAGENET_MEAN, IMAGENET_STD, awkward_images, encode, smooth_image
from PIL import Image

from equirecon.imaging.decoding import to_rgb_uint8
from equirecon.imaging.transformations import TransformationConfig
from equirecon.imaging.workers import seed_view_transform
from equirecon.training.views import VIEW_PRESETS, TransformPairMaker, build_view_transform

PHOTO = np.random.default_rng(0).integers(0, 256, (60, 80, 3), dtype=np.uint8)


# ---------------------------------------------------------------------------------------------- base views


@pytest.mark.parametrize("preset", VIEW_PRESETS)
def test_view_output_is_a_normalised_float_chw_tensor(preset):
    transform = build_view_transform(preset, 32, seed=0)
    grey = np.full((50, 70, 3), np.round(np.asarray(IMAGENET_MEAN) * 255), np.uint8)  # the mean colour
    out = build_view_transform(preset, 32, seed=0, view=1)(image=grey)["image"]
    assert isinstance(out, torch.Tensor) and out.shape == (3, 32, 32) and out.dtype == torch.float32
    if preset != "all":  # photometric augmentations move the mean colour
        assert out.abs().max() < 0.01
    assert transform(image=PHOTO)["image"].shape == (3, 32, 32)


def test_none_preset_is_a_deterministic_short_side_resize_and_centre_crop():
    transform = build_view_transform("none", 40)
    photo = (smooth_image(120, 160, sigma=2.0) * 255).round().astype(np.uint8)
    first, second = (transform(image=photo)["image"] for _ in range(2))
    assert torch.equal(first, second)
    expected = np.asarray(Image.fromarray(photo).resize((53, 40), Image.BICUBIC), dtype=np.float64)[:, 6:46]
    unnormalised = first.permute(1, 2, 0).numpy() * np.asarray(IMAGENET_STD) + np.asarray(IMAGENET_MEAN)
    assert np.abs(unnormalised * 255 - expected).mean() < 2  # OpenCV area averaging vs PIL antialiased bicubic


def test_crop_only_preset_crops_at_random_but_changes_no_colour():
    transform = build_view_transform("crop-only", 32, seed=0)
    flat = np.full((60, 80, 3), (200, 30, 90), np.uint8)
    outs = [transform(image=flat)["image"] for _ in range(3)]
    assert all(torch.allclose(out, outs[0], atol=1e-5) for out in outs)  # no colour change on a flat image
    crops = [transform(image=PHOTO)["image"] for _ in range(3)]
    assert not torch.equal(crops[0], crops[1])


def test_all_preset_follows_dinov2_global_crops():
    names = [type(t).__name__ for t in build_view_transform("all", 32, view=2).transforms]
    assert names == [
        "RandomResizedCrop",
        "HorizontalFlip",
        "ColorJitter",
        "ToGray",
        "GaussianBlur",
        "Solarize",
        "Normalize",
        "ToTensorV2",
    ]
    first, second = build_view_transform("all", 32, view=1), build_view_transform("all", 32, view=2)
    assert first.transforms[0].scale == (0.32, 1.0) and first.transforms[4].p == 1.0 and second.transforms[4].p == 0.1
    assert "Solarize" not in [type(t).__name__ for t in first.transforms]


def test_bad_view_arguments_name_the_field():
    with pytest.raises(ValueError, match=r"preset must be one of \('all', 'crop-only', 'none'\)"):
        build_view_transform("rot")
    with pytest.raises(ValueError, match="crop_scale"):
        build_view_transform("all", crop_scale=(0.0, 1.0))


def test_seed_makes_a_view_reproducible():
    one, two, other = (build_view_transform("all", 32, seed=s) for s in (3, 3, 4))
    a, b, c = (t(image=PHOTO)["image"] for t in (one, two, other))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_seeding_does_not_correlate_the_steps():
    """albumentations 2.0.8 ``Compose(seed=...)`` gives every step the same generator: grey ⇒ flipped."""
    image = np.zeros((8, 8, 3), np.uint8)
    image[:, 4:] = 200
    image[..., 0] += 50

    def flipped_given_grey(transform: A.Compose) -> float:
        flips = []
        for _ in range(600):
            out = transform(image=image)["image"]
            if (out[..., 0] == out[..., 1]).all():
                flips.append(out[0, 0].sum() > out[0, -1].sum())
        return float(np.mean(flips))

    steps = [A.HorizontalFlip(p=0.5), A.ToGray(p=0.2)]
    assert flipped_given_grey(A.Compose(steps, seed=1)) == 1.0  # the library's own seeding
    ours = A.Compose([A.HorizontalFlip(p=0.5), A.ToGray(p=0.2)])
    seed_view_transform(ours, 1)
    assert 0.35 < flipped_given_grey(ours) < 0.65


# --------------------------------------------------------------------------------------- input conversion


@pytest.mark.parametrize("name", ["grayscale", "palette", "rgba", "cmyk", "sixteen_bit", "tiny", "one_bit"])
def test_awkward_images_become_rgb_uint8(name):
    array = to_rgb_uint8(awkward_images()[name], min_size=16)
    assert array.dtype == np.uint8 and array.ndim == 3 and array.shape[-1] == 3 and min(array.shape[:2]) >= 16


def test_conversions_keep_the_content():
    rgb = np.random.default_rng(1).integers(0, 256, (20, 24, 3), dtype=np.uint8)
    grey = to_rgb_uint8(Image.fromarray(rgb[..., 0], "L"), min_size=1)
    assert (grey == rgb[..., :1]).all()
    sixteen = to_rgb_uint8(Image.fromarray(rgb[..., 0].astype(np.uint16) * 257), min_size=1)  # 16-bit PNG range
    assert (sixteen == rgb[..., :1]).all()
    transparent = np.zeros((20, 24, 4), np.uint8)
    assert (to_rgb_uint8(Image.fromarray(transparent, "RGBA"), min_size=1) == 255).all()  # shown on white
    cmyk = Image.fromarray(rgb).convert("CMYK")
    assert (to_rgb_uint8(cmyk, min_size=1) == np.asarray(cmyk.convert("RGB"))).all()
    assert (to_rgb_uint8(rgb.astype(np.float32) / 255, min_size=1) == rgb).all()
    assert (to_rgb_uint8(torch.from_numpy(rgb).permute(2, 0, 1), min_size=1) == rgb).all()  # CHW uint8 tensor
    assert (to_rgb_uint8({"bytes": encode(Image.fromarray(rgb)), "path": "x.png"}, min_size=1) == rgb).all()


def test_tiny_images_are_upscaled_keeping_the_aspect_ratio():
    assert to_rgb_uint8(np.zeros((2, 3, 3), np.uint8), min_size=32).shape == (32, 48, 3)
    assert to_rgb_uint8(np.zeros((1, 1), np.uint8), min_size=32).shape == (32, 32, 3)


def test_exif_orientation_is_applied():
    image = Image.fromarray(np.zeros((10, 30, 3), np.uint8))
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90° to display
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", exif=exif)
    assert to_rgb_uint8(buffer.getvalue(), min_size=1).shape == (30, 10, 3)


@pytest.mark.parametrize("name", ["corrupt", "truncated"])
def test_undecodable_images_raise(name):
    with pytest.raises(OSError):
        to_rgb_uint8(awkward_images()[name])


# ---------------------------------------------------------------------------------------------- pair maker


def make_maker(**kwargs) -> TransformPairMaker:
    return TransformPairMaker(TransformationConfig(), size=32, **kwargs)


def test_context_margin_follows_the_transformation():
    assert make_maker(context=1.0).base_size == 32
    rotation = TransformPairMaker(TransformationConfig(family="rotation"), size=64)
    assert rotation.base_size == 64 + 2 * 14  # ceil(64 · (√2 − 1) / 2) = 14
    assert TransformPairMaker(TransformationConfig(family="color"), size=64).base_size == 64
    with pytest.raises(ValueError, match="context must be >= 1"):
        make_maker(context=0.5)


def test_pair_maker_output():
    maker = make_maker()
    example = maker(Image.fromarray(PHOTO))
    assert set(example) == {"pixel_values", "base_pixel_values", "transform_params"}
    assert example["pixel_values"].shape == (3, 32, 32)
    # SE(2) ±45°, ±10 px: the base view carries ceil(32 · 0.5035 / 2) = 9 pixels of context on each side.
    assert maker.base_size == 50 and example["base_pixel_values"].shape == (3, 50, 50)
    assert example["transform_params"].shape == (3,) and example["transform_params"].dtype == torch.float32
    assert abs(float(example["transform_params"][0])) <= 45.0
    assert not torch.equal(example["pixel_values"], example["base_pixel_values"])  # independent views A1, A2
    assert maker.image_mean == tuple(IMAGENET_MEAN) and maker.transformation == TransformationConfig()


def test_pair_maker_is_reproducible_and_rank_dependent():
    first = [make_maker(seed=1, rank=0)(PHOTO) for _ in range(1)]
    again = [make_maker(seed=1, rank=0)(PHOTO) for _ in range(1)]
    other_rank = [make_maker(seed=1, rank=1)(PHOTO) for _ in range(1)]
    assert torch.equal(first[0]["transform_params"], again[0]["transform_params"])
    assert torch.equal(first[0]["pixel_values"], again[0]["pixel_values"])
    assert not torch.equal(first[0]["transform_params"], other_rank[0]["transform_params"])
    assert not torch.equal(first[0]["base_pixel_values"], other_rank[0]["base_pixel_values"])


class _SameImage(torch.utils.data.Dataset):
    def __init__(self, maker: TransformPairMaker, length: int = 8) -> None:
        self.maker, self.length = maker, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return self.maker(PHOTO)


def _epoch(maker: TransformPairMaker, seed: int) -> torch.Tensor:
    torch.manual_seed(seed)
    loader = torch.utils.data.DataLoader(_SameImage(maker), batch_size=1, num_workers=2)
    return torch.cat([batch["transform_params"] for batch in loader])


def test_dataloader_workers_get_distinct_streams():
    maker = make_maker()
    maker(PHOTO)  # seeded in the main process first: the workers' copies must still reseed
    maker = pickle.loads(pickle.dumps(maker))
    theta = _epoch(maker, seed=0)  # worker 0 makes examples 0, 2, 4, 6; worker 1 makes 1, 3, 5, 7
    assert len({tuple(row.tolist()) for row in theta}) == len(theta)
    assert not torch.equal(theta[0::2], theta[1::2])
    torch.testing.assert_close(_epoch(maker, seed=0), theta)  # reproducible under torch.manual_seed
    assert not torch.equal(_epoch(maker, seed=1), theta)  # and a new stream per epoch (fresh workers)
