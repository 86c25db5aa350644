"""The view and its context margin: view 2 is drawn like view 1 and widened without rescaling, in the pretraining
views and in the equivariance benchmark's crops alike."""

from __future__ import annotations

import albumentations as A
import numpy as np
import pytest
import torch
from PIL import Image

from equirecon.evaluation.crops import CropSet
from equirecon.imaging.context import center_crop, context_side, reflect_into_box, widen_box
from equirecon.imaging.transformations import FAMILIES, TransformationConfig, apply_transformation
from equirecon.training.views import ContextRandomResizedCrop, TransformPairMaker

SIZE = 32


def _coordinate_photo(height: int = 256, width: int = 256) -> np.ndarray:
    """R = x, G = y: every pixel names where it came from."""
    ys, xs = np.mgrid[0:height, 0:width]
    return np.stack([xs, ys, np.zeros_like(xs)], axis=-1).astype(np.uint8)


def _covered_area(view: torch.Tensor) -> float:
    """Photo pixels covered by a view of the coordinate photo (no normalisation: mean 0, std 1)."""
    pixels = view * 255
    return float((pixels[0].max() - pixels[0].min() + 1) * (pixels[1].max() - pixels[1].min() + 1))


# ------------------------------------------------------------------------------------------- imaging.context


def test_context_side_adds_the_same_whole_margin_on_each_side():
    assert context_side(32, 1.0) == 32
    assert context_side(32, np.sqrt(2)) == 46  # 32·0.414/2 = 6.6 → 7 a side
    assert context_side(224, 1.5) == 336
    with pytest.raises(ValueError, match="context ratio must be >= 1"):
        context_side(32, 0.9)


def test_widen_box_keeps_the_centre_and_shifts_inward_only_when_the_photo_has_room():
    assert widen_box((40, 40, 60, 60), 2.0, (100, 100)) == (30, 30, 70, 70)
    # Near the border: shifted inward, the drawn box moves with it and keeps its size.
    assert widen_box((0, 10, 20, 30), 2.0, (100, 100)) == (0, 0, 40, 40)
    # Wider than the photo: stays centred on the box (reflection supplies the rest).
    assert widen_box((0, 0, 80, 80), 1.5, (100, 100)) == (-20, -20, 100, 100)
    assert widen_box((10, 10, 20, 30), (2.0, 1.0), (100, 100)) == (5, 10, 25, 30)


def test_reflect_into_box_mirrors_the_photo_at_its_border():
    photo = np.arange(20).reshape(5, 4, 1)
    padded, box = reflect_into_box(photo, (-2, -1, 6, 5))
    assert box == (0, 0, 8, 6)
    assert np.array_equal(padded[..., 0], np.pad(photo[..., 0], ((1, 0), (2, 2)), mode="reflect"))
    unchanged, same_box = reflect_into_box(photo, (0, 0, 4, 5))
    assert unchanged is photo and same_box == (0, 0, 4, 5)
    # A box over twice the photo's size needs several reflections.
    padded, box = reflect_into_box(photo, (-10, -10, 14, 15))
    assert padded.shape[:2] == (25, 24) and box == (0, 0, 24, 25)


def test_center_crop_takes_the_centred_window():
    images = torch.arange(36.0).view(1, 6, 6)
    assert torch.equal(center_crop(images, 2), images[:, 2:4, 2:4])
    assert center_crop(images, (2, 4)).shape == (1, 2, 4)


# --------------------------------------------------------------------------------------------- the views


@pytest.mark.parametrize("family", [f for f in FAMILIES if f != "composite"])
def test_view2_covers_the_same_photo_area_as_view1(family):
    """The quantiles of the photo area behind v1 and behind v2's centre (before g_θ) agree within 5 %."""
    maker = TransformPairMaker(
        TransformationConfig(family=family),
        view_preset="crop-only",
        size=SIZE,
        image_mean=(0, 0, 0),
        image_std=(1, 1, 1),
        seed=1,
    )
    photo = _coordinate_photo()
    areas_1, areas_2 = [], []
    for _ in range(1500):
        example = maker(photo)
        areas_1.append(_covered_area(example["pixel_values"]))
        areas_2.append(_covered_area(center_crop(example["base_pixel_values"], SIZE)))
    quantiles = np.linspace(0.1, 0.9, 9)
    ratios = np.quantile(areas_2, quantiles) / np.quantile(areas_1, quantiles)
    assert np.all(np.abs(ratios - 1) < 0.05), ratios
    assert maker.base_size == context_side(SIZE, maker.transformation.context_ratio)


def test_the_centre_of_the_context_view_is_the_drawn_box():
    photo = _coordinate_photo(180, 256)  # coordinates fit in uint8
    crop = ContextRandomResizedCrop(size=(SIZE, SIZE), context=1.5, scale=(0.3, 1.0), interpolation=1)
    for seed in range(20):
        crop.set_random_seed(seed)
        (x_min, y_min, x_max, y_max) = A.RandomResizedCrop.get_params_dependent_on_data(
            crop, {"shape": photo.shape}, {}
        )["crop_coords"]
        crop.set_random_seed(seed)
        out = crop(image=photo)["image"]
        assert out.shape == (context_side(SIZE, 1.5), context_side(SIZE, 1.5), 3)
        centre = center_crop(torch.from_numpy(out).permute(2, 0, 1).float(), SIZE)
        # The drawn box fills the centre window, to a pixel of the photo (bilinear resampling at its edges).
        width_px, height_px = (x_max - x_min) / SIZE, (y_max - y_min) / SIZE
        if x_min >= (x_max - x_min) * 0.25 and x_max <= photo.shape[1] - (x_max - x_min) * 0.25:  # not shifted
            assert abs(centre[0].min() - x_min) <= 1 + width_px and abs(centre[0].max() - (x_max - 1)) <= 1 + width_px
        if y_min >= (y_max - y_min) * 0.25 and y_max <= photo.shape[0] - (y_max - y_min) * 0.25:
            assert (
                abs(centre[1].min() - y_min) <= 1 + height_px and abs(centre[1].max() - (y_max - 1)) <= 1 + height_px
            )
        extent_x, extent_y = centre[0].max() - centre[0].min() + 1, centre[1].max() - centre[1].min() + 1
        assert (
            abs(extent_x - (x_max - x_min)) <= 2 + 2 * width_px
            and abs(extent_y - (y_max - y_min)) <= 2 + 2 * height_px
        )


def test_a_context_wider_than_the_photo_is_reflected_not_filled():
    photo = np.full((40, 40, 3), 200, np.uint8)
    crop = ContextRandomResizedCrop(size=(SIZE, SIZE), context=2.0, scale=(1.0, 1.0), ratio=(1.0, 1.0))
    out = crop(image=photo)["image"]
    assert out.shape == (64, 64, 3) and out.min() == 200


# ----------------------------------------------------------------------------------- the benchmark's crops


def test_benchmark_context_crops_centre_on_the_drawn_crop():
    rng = np.random.default_rng(0)
    photo = Image.fromarray(
        np.asarray(Image.fromarray(rng.integers(0, 256, (24, 36, 3), dtype=np.uint8)).resize((360, 240)))
    )
    plain = CropSet.sample([photo], [0], 40, (SIZE, SIZE), scale=(0.2, 1.0), generator=np.random.default_rng(5))
    context = CropSet.sample(
        [photo], [0], 40, (SIZE, SIZE), scale=(0.2, 1.0), context_size=(48, 48), generator=np.random.default_rng(5)
    )
    assert context.image_size == (48, 48)
    inner = (plain.boxes[:, 2] - plain.boxes[:, 0], plain.boxes[:, 3] - plain.boxes[:, 1])
    outer = (context.boxes[:, 2] - context.boxes[:, 0], context.boxes[:, 3] - context.boxes[:, 1])
    np.testing.assert_allclose(outer[0], inner[0] * 1.5)  # widened, never rescaled
    np.testing.assert_allclose(outer[1], inner[1] * 1.5)
    centred = np.flatnonzero(
        np.all(
            np.isclose(context.boxes[:, :2] + context.boxes[:, 2:], plain.boxes[:, :2] + plain.boxes[:, 2:]), axis=1
        )
    )
    assert 5 < len(centred) < 40  # some crops near the border were shifted inward, with their drawn box
    direct, with_margin = plain.render(centred), center_crop(context.render(centred), SIZE)
    # The same photo region at the same scale: equal up to resampling at the window's edge.
    assert (direct - with_margin)[..., 2:-2, 2:-2].abs().mean() < 0.02


# ---------------------------------------------------------------------------------- g_θ of the view alone


@pytest.mark.parametrize(
    "steps",
    [("rotation",), ("translation",), ("se2",), ("color",), ("blur",), ("rotation", "blur"), ("blur", "se2")],
)
def test_crop_to_view_is_the_view_of_the_whole_transformation(steps):
    """Transforming only the view (a final warp samples the view's pixels alone) gives exactly the centre of the
    whole transformed context, image and mask, including black fill where a range outgrows the margin."""
    ranges = {"rotation_range": (-90.0, 90.0), "translation_range": (-60.0, 60.0)}  # beyond the margin
    config = (
        TransformationConfig(family=steps[0], **ranges)
        if len(steps) == 1
        else TransformationConfig(family="composite", components=steps, **ranges)
    )
    torch.manual_seed(0)
    context = torch.rand(5, 3, 36, 38)  # odd margins, not square
    params = torch.from_numpy(config.sample(5, np.random.default_rng(0)))
    view = (30, 33)
    whole, whole_mask = apply_transformation(context, params, config, view_size=view)
    cropped, cropped_mask = apply_transformation(context, params, config, view_size=view, crop_to_view=True)
    assert cropped.shape == (5, 3, *view) and cropped_mask.shape == (5, 1, *view)
    assert torch.equal(cropped, center_crop(whole, view))
    assert torch.equal(cropped_mask, center_crop(whole_mask, view))
    if config.is_geometric and len(steps) == 1:
        assert bool((cropped_mask == 0).any())  # the ranges outgrow the margin: fill in the view, and marked


def test_crop_to_view_needs_a_view_inside_the_images():
    config = TransformationConfig(family="rotation")
    with pytest.raises(ValueError, match=r"view \(40, 40\) must fit in the images \(32, 32\)"):
        apply_transformation(torch.rand(1, 3, 32, 32), torch.zeros(1, 1), config, view_size=40, crop_to_view=True)
    out, mask = apply_transformation(
        torch.rand(0, 3, 32, 32), torch.zeros(0, 1), config, view_size=20, crop_to_view=True
    )
    assert out.shape == (0, 3, 20, 20) and mask.shape == (0, 1, 20, 20)
