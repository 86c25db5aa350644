"""g_θ: conventions checked against reference implementations (PIL, OpenCV, SciPy, scikit-image)."""

from __future__ import annotations

import json
import math

import cv2
import numpy as np
import pytest
import torch
from _data_helpers import IMAGENET_MEAN, IMAGENET_STD, denormalise, normalise, smooth_image, to_batch, to_hwc
from PIL import Image, ImageEnhance
from scipy.ndimage import gaussian_filter
from skimage.color import hsv2rgb, rgb2hsv

from equirecon.imaging import kernels
from equirecon.imaging.transformations import (
    BLUR_IDENTITY_SIGMA,
    FAMILIES,
    TransformationConfig,
    apply_transformation,
    center_crop,
    make_transformed_pair,
)

ALL_COMPONENTS = ("se2", "color", "blur")
CONFIGS = {family: TransformationConfig(family=family) for family in FAMILIES if family != "composite"}
CONFIGS["composite"] = TransformationConfig(family="composite", components=ALL_COMPONENTS)


def rotate(image: np.ndarray, angle: float, **kwargs) -> tuple[np.ndarray, np.ndarray]:
    out, mask = apply_transformation(to_batch(image), torch.tensor([[angle]]), CONFIGS["rotation"], **kwargs)
    return to_hwc(out), mask[0, 0].numpy().astype(bool)


def random_params(config: TransformationConfig, num: int, seed: int = 0) -> torch.Tensor:
    return torch.from_numpy(config.sample(num, np.random.default_rng(seed)))


# ------------------------------------------------------------------------------------------------- config


def test_defaults_are_the_papers_table_2():
    config = TransformationConfig()
    assert config.family == "se2" and config.parameter_names == ("angle", "tx", "ty")
    assert config.rotation_range == (-45.0, 45.0) and config.translation_range == (-10.0, 10.0)
    assert config.brightness_range == config.contrast_range == config.saturation_range == (-0.4, 0.4)
    assert config.hue_range == (-0.1, 0.1) and config.blur_sigma_range == (0.1, 2.0)
    assert config.reference_size == 224


@pytest.mark.parametrize(
    ("family", "names"),
    [
        ("rotation", ("angle",)),
        ("translation", ("tx", "ty")),
        ("se2", ("angle", "tx", "ty")),
        ("color", ("brightness", "contrast", "saturation", "hue")),
        ("blur", ("sigma",)),
    ],
)
def test_parameter_names(family, names):
    config = TransformationConfig(family=family)
    assert config.parameter_names == names and config.num_parameters == len(names)


def test_composite_concatenates_parameters_in_component_order():
    config = TransformationConfig(family="composite", components=["blur", "rotation"])
    assert config.components == ("blur", "rotation")
    assert config.parameter_names == ("sigma", "angle")
    assert config.parameter_ranges == ((0.1, 2.0), (-45.0, 45.0))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"family": "shear"}, "family must be one of"),
        ({"family": "composite"}, "needs components"),
        ({"family": "composite", "components": ("rotation", "zoom")}, "unknown"),
        ({"family": "composite", "components": ("rotation", "se2")}, "repeat a parameter"),
        ({"family": "composite", "components": "rotation"}, "got the string"),
        ({"family": "rotation", "components": ("blur",)}, "only used with family='composite'"),
        ({"rotation_range": (10.0, -10.0)}, "rotation_range"),
        ({"hue_range": (0.1,)}, "hue_range"),
        ({"brightness_range": (-1.5, 0.4)}, "brightness_range"),
        ({"blur_sigma_range": (-0.1, 1.0)}, "blur_sigma_range"),
        ({"reference_size": 0}, "reference_size"),
    ],
)
def test_invalid_configs_name_the_field(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TransformationConfig(**kwargs)


def test_to_dict_round_trips_through_json():
    config = TransformationConfig(family="composite", components=("rotation", "color"), hue_range=(-0.05, 0.05))
    assert TransformationConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    with pytest.raises(ValueError, match="unknown TransformationConfig keys"):
        TransformationConfig.from_dict({"family": "se2", "angle_range": [0, 1]})


def test_sample_is_uniform_within_the_ranges_and_reproducible():
    config = CONFIGS["composite"]
    theta = config.sample(4000, np.random.default_rng(0))
    assert theta.shape == (4000, config.num_parameters) and theta.dtype == np.float32
    low, high = np.asarray(config.parameter_ranges).T
    assert (theta >= low).all() and (theta <= high).all()
    # Uniform: mean at the centre, standard deviation (high − low)/√12.
    assert (np.abs(theta.mean(0) - (low + high) / 2) < 0.03 * (high - low)).all()
    assert (np.abs(theta.std(0) / ((high - low) / np.sqrt(12)) - 1) < 0.05).all()
    np.testing.assert_array_equal(theta, config.sample(4000, np.random.default_rng(0)))


# ----------------------------------------------------------------------------------------------- geometry


def test_positive_angle_is_counter_clockwise():
    image = np.zeros((33, 33, 3), np.float32)
    image[16, 28] = 1.0  # a dot right of the centre
    out, _ = rotate(image, 90.0)
    row, col = np.unravel_index(out[..., 0].argmax(), out.shape[:2])
    assert (row, col) == (4, 16)  # now above the centre: counter-clockwise on screen


@pytest.mark.parametrize("angle", [30.0, -17.5, 90.0])
def test_rotation_matches_pil_and_opencv(angle):
    image = smooth_image(48, 64)
    out, valid = rotate(image, angle)
    pil = np.stack(
        [np.asarray(Image.fromarray(image[..., c], "F").rotate(angle, resample=Image.BILINEAR)) for c in range(3)], -1
    )
    matrix = cv2.getRotationMatrix2D(((64 - 1) / 2, (48 - 1) / 2), angle, 1.0)
    opencv = cv2.warpAffine(image, matrix, (64, 48), flags=cv2.INTER_LINEAR, borderValue=0)
    assert 0.5 < valid.mean() < 1.0
    np.testing.assert_allclose(out[valid], pil[valid], atol=1e-5)
    np.testing.assert_allclose(out[valid], opencv[valid], atol=1e-5)
    assert np.abs(out[~valid]).max() < np.abs(image).max()  # the corners are (partly) black fill


def test_translation_is_in_pixels_at_reference_size():
    image = smooth_image(40, 64)
    # 14 px at 224 is 4 px at 64 wide; -7 px at 224 is -2.5 px at 80 high... here 40 high: -1.25 px.
    config = TransformationConfig(family="translation")
    out, mask = apply_transformation(to_batch(image), torch.tensor([[14.0, -7.0]]), config)
    shift = np.float32([[1, 0, 14 * 64 / 224], [0, 1, -7 * 40 / 224]])
    reference = cv2.warpAffine(image, shift, (64, 40), flags=cv2.INTER_LINEAR, borderValue=0)
    np.testing.assert_allclose(to_hwc(out), reference, atol=1e-5)
    # Content moved right by 4 px: the 4 left columns came from outside, and so did the bottom 2 rows.
    mask = mask[0, 0].numpy()
    assert (mask[:, :4] == 0).all() and (mask[-2:] == 0).all() and (mask[:-2, 4:] == 1).all()


def test_se2_is_rotation_about_the_centre_then_translation():
    image = smooth_image(48, 64)
    config = TransformationConfig(family="se2", reference_size=64)
    out, mask = apply_transformation(to_batch(image), torch.tensor([[25.0, 5.0, -3.0]]), config)
    matrix = cv2.getRotationMatrix2D(((64 - 1) / 2, (48 - 1) / 2), 25.0, 1.0)
    matrix[:, 2] += (5.0, -3.0 * 48 / 64)
    reference = cv2.warpAffine(image, matrix, (64, 48), flags=cv2.INTER_LINEAR, borderValue=0)
    valid = mask[0, 0].numpy().astype(bool)
    np.testing.assert_allclose(to_hwc(out)[valid], reference[valid], atol=1e-5)


def test_rotation_by_a_then_b_equals_rotation_by_a_plus_b():
    image = smooth_image(64, 64, sigma=4.0)
    once, valid_once = rotate(image, 20.0)
    twice, valid_twice = rotate(once, 15.0)
    direct, valid = rotate(image, 35.0)
    # Second rotation's mask knows nothing of the first one's fill: warp the first mask along.
    carried, _ = rotate(np.repeat(valid_once[..., None].astype(np.float32), 3, -1), 15.0)
    both = valid & valid_twice & (carried[..., 0] > 0.999)
    assert both.mean() > 0.5
    np.testing.assert_allclose(twice[both], direct[both], atol=5e-3)  # bilinear resampled twice vs once
    assert np.abs(twice[both] - rotate(image, 30.0)[0][both]).max() > 0.02  # and it is not a lenient check


def test_consecutive_geometric_steps_are_one_exact_warp():
    image = to_batch(smooth_image())
    composite = TransformationConfig(family="composite", components=("rotation", "translation"))
    se2 = TransformationConfig(family="se2")
    params = torch.tensor([[30.0, 8.0, -5.0], [-12.0, 0.0, 9.0]])
    out, mask = apply_transformation(image.expand(2, -1, -1, -1), params, composite)
    expected, expected_mask = apply_transformation(image.expand(2, -1, -1, -1), params, se2)
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(mask, expected_mask)


def test_rotation_mask_marks_the_corners_invalid():
    _, valid = rotate(np.ones((64, 64, 3), np.float32), 45.0)
    assert not valid[0, 0] and not valid[-1, -1] and not valid[0, -1] and not valid[-1, 0]
    assert valid[32, 32] and valid[32, 0] and valid[0, 32]  # edge midpoints stay inside the rotated square
    assert valid.dtype == bool


# -------------------------------------------------------------------------------------------------- colour


def _pil_and_ours(offsets: list[float], seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    image = np.random.default_rng(seed).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    pil = Image.fromarray(image)
    for enhance, offset in zip(
        (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color), offsets, strict=True
    ):
        pil = enhance(pil).enhance(1.0 + offset)
    params = torch.tensor([[*offsets, 0.0]])
    out, mask = apply_transformation(to_batch(image / np.float32(255)), params, CONFIGS["color"])
    assert (mask == 1).all()
    return to_hwc(out) * 255, np.asarray(pil, dtype=np.float32)


@pytest.mark.parametrize("which", [0, 1, 2], ids=["brightness", "contrast", "saturation"])
@pytest.mark.parametrize("offset", [-0.4, 0.3, 0.9])
def test_colour_steps_match_pil_image_enhance(which, offset):
    offsets = [0.0, 0.0, 0.0]
    offsets[which] = offset
    ours, pil = _pil_and_ours(offsets)
    assert np.abs(ours - pil).max() <= 1.5  # PIL rounds to uint8 (and its contrast mean to an int)


def test_colour_order_is_brightness_contrast_saturation():
    ours, pil = _pil_and_ours([0.3, -0.2, 0.35])
    # PIL truncates to uint8 after each step (up to ~1 level lower per step), we do not.
    assert np.abs(ours - pil).max() <= 3.5 and np.abs(ours - pil).mean() < 1.5
    reversed_order = Image.fromarray(np.random.default_rng(1).integers(0, 256, (20, 30, 3), dtype=np.uint8))
    for enhance, factor in ((ImageEnhance.Color, 1.35), (ImageEnhance.Contrast, 0.8), (ImageEnhance.Brightness, 1.3)):
        reversed_order = enhance(reversed_order).enhance(factor)
    assert np.abs(ours - np.asarray(reversed_order, dtype=np.float32)).max() > 5.0


@pytest.mark.parametrize("shift", [0.1, -0.07, 0.5])
def test_hue_shift_matches_an_hsv_round_trip(shift):
    image = np.random.default_rng(2).random((20, 30, 3))
    image[0, :5] = 0.5  # grey pixels have no hue
    hsv = rgb2hsv(image)
    hsv[..., 0] = (hsv[..., 0] + shift) % 1.0
    params = torch.tensor([[0.0, 0.0, 0.0, shift]], dtype=torch.float64)
    out, _ = apply_transformation(to_batch(image), params, CONFIGS["color"])
    np.testing.assert_allclose(to_hwc(out), hsv2rgb(hsv), atol=1e-6)


# ---------------------------------------------------------------------------------------------------- blur


def test_blur_matches_a_reference_gaussian_per_example():
    image = smooth_image(40, 56, sigma=0.5)
    sigmas = [0.6, 2.0, 1.3, BLUR_IDENTITY_SIGMA]
    config = TransformationConfig(family="blur", reference_size=56)  # σ in pixels of this image's width
    batch = to_batch(image).expand(len(sigmas), -1, -1, -1)
    out, mask = apply_transformation(batch, torch.tensor(sigmas)[:, None], config)
    assert (mask == 1).all()
    for index, sigma in enumerate(sigmas[:-1]):
        sigma_yx = (sigma * 40 / 56, sigma)  # scaled with the image: anisotropic for a non-square image
        reference = np.stack(
            [gaussian_filter(image[..., c], sigma_yx, mode="mirror", truncate=4.0) for c in range(3)], -1
        )
        np.testing.assert_allclose(to_hwc(out, index), reference, atol=1e-5)
    assert torch.equal(out[-1], batch[-1])  # σ ≤ ε is exactly the identity


def test_blur_of_an_example_does_not_depend_on_its_batch():
    image = to_batch(smooth_image(sigma=0.5))
    config = CONFIGS["blur"]
    alone, _ = apply_transformation(image, torch.tensor([[0.8]]), config)
    with_wide_neighbour, _ = apply_transformation(image.expand(2, -1, -1, -1), torch.tensor([[0.8], [2.0]]), config)
    torch.testing.assert_close(with_wide_neighbour[:1], alone, atol=1e-6, rtol=0)


# ----------------------------------------------------------------------------------------- all families


@pytest.mark.parametrize("family", list(CONFIGS))
def test_zero_parameters_are_the_identity(family):
    config = CONFIGS[family]
    images = torch.stack([to_batch(smooth_image(seed=s))[0] for s in range(2)])
    out, mask = apply_transformation(images, torch.zeros(2, config.num_parameters), config)
    torch.testing.assert_close(out, images, atol=2e-6, rtol=0)
    assert (mask == 1).all()
    normalised = normalise(images)
    out, _ = apply_transformation(
        normalised, torch.zeros(2, config.num_parameters), config, image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD
    )
    torch.testing.assert_close(out, normalised, atol=1e-5, rtol=0)


@pytest.mark.parametrize("family", list(CONFIGS))
def test_normalised_input_gives_the_same_result_as_unit_range_input(family):
    config = CONFIGS[family]
    images = torch.stack([to_batch(smooth_image(seed=s))[0] for s in range(3)])
    params = random_params(config, 3)
    out01, mask01 = apply_transformation(images, params, config)
    out, mask = apply_transformation(
        normalise(images), params, config, image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD
    )
    torch.testing.assert_close(denormalise(out), out01, atol=1e-5, rtol=0)
    torch.testing.assert_close(mask, mask01)
    if config.is_geometric:
        assert (mask == 0).any()
        # Black fill: 0 in [0, 1] space, (0 - mean) / std in normalised space.
        fill = normalise(torch.zeros(1, 3, 1, 1)).expand_as(out)
        invalid = (mask01 == 0).expand_as(out01)
        corner = out01[invalid].abs() < 1e-6  # pixels entirely outside (not the partly-filled band)
        torch.testing.assert_close(out[invalid][corner], fill[invalid][corner], atol=1e-5, rtol=0)


def test_composite_applies_components_in_order():
    images = torch.stack([to_batch(smooth_image(seed=s))[0] for s in range(2)])
    config = TransformationConfig(family="composite", components=("rotation", "color", "blur"))
    params = random_params(config, 2)
    before = images.clone()
    out, mask = apply_transformation(images, params, config)
    assert torch.equal(images, before)  # the input is never modified in place
    step = images
    for family, columns in (("rotation", slice(0, 1)), ("color", slice(1, 5)), ("blur", slice(5, 6))):
        step, _ = apply_transformation(step, params[:, columns], CONFIGS[family])
    torch.testing.assert_close(out, step, atol=1e-5, rtol=0)
    # Blur after the warp spreads the black fill: the mask is eroded, never grown.
    _, rotation_mask = apply_transformation(images, params[:, :1], CONFIGS["rotation"])
    assert (mask <= rotation_mask).all() and mask.sum() < rotation_mask.sum()


def test_an_enclosing_autocast_does_not_lower_the_precision():
    images = torch.stack([to_batch(smooth_image(seed=s))[0] for s in range(2)])
    config = CONFIGS["composite"]
    params = random_params(config, 2)
    expected, _ = apply_transformation(images, params, config)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, _ = apply_transformation(images, params, config)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=0)


def test_half_precision_input_keeps_its_dtype():
    images = to_batch(smooth_image()).to(torch.bfloat16)
    out, mask = apply_transformation(images, torch.tensor([[10.0, 2.0, 3.0]]), CONFIGS["se2"])
    assert out.dtype == mask.dtype == torch.bfloat16


@pytest.mark.parametrize(
    ("images", "params", "kwargs", "message"),
    [
        (torch.zeros(2, 3, 8, 8), torch.zeros(2, 2), {}, r"\(B, P\) = \(2, 3\) with columns \('angle', 'tx', 'ty'\)"),
        (torch.zeros(3, 8, 8), torch.zeros(3, 3), {}, "must be a"),
        (torch.zeros(1, 3, 8, 8, dtype=torch.uint8), torch.zeros(1, 3), {}, "floating point"),
        (torch.zeros(1, 3, 8, 8), torch.zeros(1, 3), {"image_mean": IMAGENET_MEAN}, "given together"),
    ],
)
def test_bad_inputs_raise(images, params, kwargs, message):
    with pytest.raises(ValueError, match=message):
        apply_transformation(images, params, CONFIGS["se2"], **kwargs)


def test_colour_needs_rgb():
    with pytest.raises(ValueError, match="3-channel"):
        apply_transformation(torch.zeros(1, 1, 8, 8), torch.zeros(1, 4), CONFIGS["color"])


# ---------------------------------------------------------------------------------------- transformed pair


@pytest.mark.parametrize("family", ["se2", "composite"])
def test_transformed_pair_is_interpolated_in_parameter_space(family):
    config = CONFIGS[family]
    base = normalise(torch.stack([to_batch(smooth_image(seed=s))[0] for s in range(3)]))
    params = random_params(config, 3, seed=5)
    kwargs = {"image_mean": IMAGENET_MEAN, "image_std": IMAGENET_STD}
    pair = make_transformed_pair(base, params, config, num_intermediates=2, **kwargs)
    assert pair.transformed.shape == base.shape and pair.transformed_mask.shape == (3, 1, 48, 64)
    assert pair.targets.shape == (3, 2, 3, 48, 64) and pair.target_masks.shape == (3, 2, 1, 48, 64)
    v2, v2_mask = apply_transformation(base, params, config, **kwargs)
    torch.testing.assert_close(pair.transformed, v2, atol=1e-5, rtol=0)
    torch.testing.assert_close(pair.transformed_mask, v2_mask)
    for k in (1, 2):  # u_k = g_{kθ/3}(u), computed directly from u
        target, target_mask = apply_transformation(base, params * k / 3, config, **kwargs)
        torch.testing.assert_close(pair.targets[:, k - 1], target, atol=1e-5, rtol=0)
        torch.testing.assert_close(pair.target_masks[:, k - 1], target_mask)
    assert (pair.targets[:, 0] - pair.targets[:, 1]).abs().mean() > 1e-2


def test_transformed_pair_is_one_batched_warp(monkeypatch):
    calls = []
    grid_sample = kernels.F.grid_sample  # the warp lives in kernels.py since the split

    def counting_grid_sample(x, *args, **kwargs):
        calls.append(x.shape[0])
        return grid_sample(x, *args, **kwargs)

    monkeypatch.setattr(kernels.F, "grid_sample", counting_grid_sample)
    base = torch.rand(4, 3, 16, 16)
    make_transformed_pair(base, random_params(CONFIGS["se2"], 4), CONFIGS["se2"], num_intermediates=2)
    assert calls == [4 * 3]  # v2 and both targets of every example in one call


def test_transformed_pair_of_zero_parameters_is_the_base_image():
    base = torch.rand(2, 3, 16, 16)
    pair = make_transformed_pair(base, torch.zeros(2, 3), CONFIGS["se2"], num_intermediates=3)
    torch.testing.assert_close(pair.targets, base[:, None].expand(-1, 3, -1, -1, -1), atol=2e-6, rtol=0)
    torch.testing.assert_close(pair.transformed, base, atol=2e-6, rtol=0)
    assert (pair.target_masks == 1).all() and (pair.transformed_mask == 1).all()


def test_empty_batch():
    out, mask = apply_transformation(torch.zeros(0, 3, 8, 8), torch.zeros(0, 3), CONFIGS["se2"])
    assert out.shape == (0, 3, 8, 8) and mask.shape == (0, 1, 8, 8)


def test_transformed_pair_rejects_negative_k():
    with pytest.raises(ValueError, match="num_intermediates"):
        make_transformed_pair(torch.rand(1, 3, 8, 8), torch.zeros(1, 3), CONFIGS["se2"], num_intermediates=-1)


def test_context_margin_replaces_fill_and_keeps_pixel_parameters_at_view_scale():
    """With a margin of context_ratio around the view, the largest θ draws only real pixels, and the result equals
    the same transformation of the whole image cropped to the view (translation in view pixels)."""
    config = TransformationConfig(family="se2")
    view = 32
    base_size = view + 2 * math.ceil(view * (config.context_ratio - 1) / 2)
    torch.manual_seed(0)
    base = torch.rand(3, 3, base_size, base_size)
    params = torch.tensor([[45.0, 10.0, -10.0], [-45.0, -10.0, 10.0], [12.0, 3.0, 0.0]])
    pair = make_transformed_pair(base, params, config, 2, output_size=view)
    assert pair.transformed.shape == (3, 3, view, view) and pair.targets.shape == (3, 2, 3, view, view)
    assert bool((pair.target_masks == 1).all()) and bool((pair.transformed_mask == 1).all())
    # Same warp of the full image: identical in the view, translation measured in view pixels (x view/224).
    full, _ = apply_transformation(base, params, config, view_size=view)
    assert torch.equal(pair.transformed, center_crop(full, view))
    without_context = make_transformed_pair(center_crop(base, view), params, config, 2)
    assert bool((without_context.transformed_mask == 0).any())  # black corners that context avoids
    assert config.context_ratio == pytest.approx(math.sqrt(2) + 20 / 224)


def test_range_fields_are_the_ranges_of_the_parameters():
    """`RANGE_FIELDS`, the one list of the ranges (the training flags are made from it), is exactly the ranges the
    parameters are drawn from, each with its help."""
    from equirecon.imaging.transformations import _PARAMETER_RANGE_FIELDS, RANGE_FIELDS

    assert set(RANGE_FIELDS) == set(_PARAMETER_RANGE_FIELDS.values())
    assert all(f.metadata["help"] for f in TransformationConfig.range_fields())
    with pytest.raises(ValueError, match="blur_sigma_range must be a pair"):
        TransformationConfig(blur_sigma_range=(1.0,))
