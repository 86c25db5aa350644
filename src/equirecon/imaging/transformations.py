"""The parameterised transformations g_θ, applied in one batched pure-torch call on the batch's device.

The method reconstructs the intermediate states u_k = g_{kθ/(K+1)}(u) of the transformation that links the
pre-image u of view 2 to view 2 itself, v2 = g_θ(u). Everything here is written so that those images are exact
and mutually consistent:

* θ is interpolated in *parameter space* (angle, translation, colour offsets, σ are scaled), never by averaging
  matrices or images, and every target is computed directly from u.
* v2 and the K targets come out of one call of the same function (:func:`make_transformed_pair` stacks the
  scales along the batch), so they cannot drift apart.
* θ = 0 is the identity for every family (to float precision; exactly for blur).

Conventions (each is unit-tested against a reference implementation):

* Geometry uses image coordinates (x to the right, y down) about the image centre ((W-1)/2, (H-1)/2), like
  OpenCV, PIL and albumentations. A positive angle rotates the content **counter-clockwise** as displayed;
  a positive ``tx`` moves it right and a positive ``ty`` moves it down. Rotation and translation are one
  warp, ``x ↦ R(ϕ)(x − c) + c + t``, sampled bilinearly with ``align_corners=False``; pixels that come from
  outside the image are filled black and marked invalid in the returned mask.
* Pixel-valued parameters (translation, blur σ) are given at ``reference_size`` (224, the paper's resolution)
  and scaled to the size of the view, so a configuration means the same thing at any resolution.
* Context instead of fill: an image may carry a margin around the view (``view_size`` smaller than the image;
  :attr:`TransformationConfig.context_ratio` says how much is needed). The transformation then takes real pixels
  from the margin where it would otherwise fill black, and :func:`make_transformed_pair` crops the view from the
  centre. Black corners would tell the encoder θ for free, and the benchmark's images have none.
* Colour follows torchvision/PIL ``ImageEnhance`` in the fixed order brightness → contrast → saturation → hue,
  on [0, 1] with clamping after each step; parameters are offsets, factor = 1 + offset; hue is a shift in turns.
* Blur is a Gaussian with per-example σ, truncated at 4σ (SciPy's default), separable, mirror-padded (SciPy's
  ``mode="mirror"``); σ ≤ :data:`BLUR_IDENTITY_SIGMA` returns the input unchanged.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence
from dataclasses import Field, asdict, dataclass, field, fields
from typing import Any

import numpy as np
import torch

from .context import center_crop
from .kernels import BLUR_IDENTITY_SIGMA, BLUR_TRUNCATE, adjust_color, blur, warp

__all__ = [
    "BLUR_IDENTITY_SIGMA",
    "FAMILIES",
    "RANGE_FIELDS",
    "TransformationConfig",
    "TransformedPair",
    "apply_transformation",
    "make_transformed_pair",
]

FAMILIES: tuple[str, ...] = ("rotation", "translation", "se2", "color", "blur", "composite")
_BASE_FAMILIES: tuple[str, ...] = FAMILIES[:-1]
_GEOMETRIC_FAMILIES = frozenset({"rotation", "translation", "se2"})
_PARAMETER_NAMES: dict[str, tuple[str, ...]] = {
    "rotation": ("angle",),
    "translation": ("tx", "ty"),
    "se2": ("angle", "tx", "ty"),
    "color": ("brightness", "contrast", "saturation", "hue"),
    "blur": ("sigma",),
}
_PARAMETER_RANGE_FIELDS: dict[str, str] = {
    "angle": "rotation_range",
    "tx": "translation_range",
    "ty": "translation_range",
    "brightness": "brightness_range",
    "contrast": "contrast_range",
    "saturation": "saturation_range",
    "hue": "hue_range",
    "sigma": "blur_sigma_range",
}


def _range(default: tuple[float, float], description: str) -> Any:
    """A range field of `TransformationConfig`, marked as one and described (`RANGE_FIELDS`)."""
    return field(default=default, metadata={"range": True, "help": description})


@dataclass(frozen=True)
class TransformationConfig:
    """Which g_θ to apply and the ranges θ is sampled from (defaults: paper Table 2).

    Angles are in degrees (positive = counter-clockwise). Translations and blur σ are in pixels at
    ``reference_size`` and are scaled with the image. Colour parameters are offsets: factor = 1 + offset for
    brightness, contrast and saturation; the hue offset is a shift in turns (0.1 = 36°).
    """

    family: str = "se2"
    components: tuple[str, ...] = ()
    # The ranges θ is drawn from (`RANGE_FIELDS`); each field's help describes it wherever it is set.
    rotation_range: tuple[float, float] = _range((-45.0, 45.0), "Angle range in degrees (ccw > 0).")
    translation_range: tuple[float, float] = _range((-10.0, 10.0), "Shift range in pixels at 224².")
    brightness_range: tuple[float, float] = _range((-0.4, 0.4), "Brightness offset range.")
    contrast_range: tuple[float, float] = _range((-0.4, 0.4), "Contrast offset range.")
    saturation_range: tuple[float, float] = _range((-0.4, 0.4), "Saturation offset range.")
    hue_range: tuple[float, float] = _range((-0.1, 0.1), "Hue offset range (turns).")
    blur_sigma_range: tuple[float, float] = _range((0.1, 2.0), "Gaussian blur σ range (pixels at 224²).")
    reference_size: int = 224

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ValueError(f"family must be one of {FAMILIES}, got {self.family!r}")
        if isinstance(self.components, str):
            raise ValueError(f"components must be a sequence of family names, got the string {self.components!r}")
        components = tuple(self.components)
        object.__setattr__(self, "components", components)
        if self.family == "composite":
            if not components:
                raise ValueError(f"family='composite' needs components, a non-empty subset of {_BASE_FAMILIES}")
            unknown = [c for c in components if c not in _BASE_FAMILIES]
            if unknown:
                raise ValueError(f"components must be taken from {_BASE_FAMILIES}, got unknown {unknown}")
            names = [name for c in components for name in _PARAMETER_NAMES[c]]
            if len(set(names)) != len(names):
                raise ValueError(
                    f"components {components} repeat a parameter ({names}); use 'se2' rather than "
                    "'rotation' + 'se2', and list each family once"
                )
        elif components:
            raise ValueError(f"components is only used with family='composite', got family={self.family!r}")

        for field_name in RANGE_FIELDS:
            value = getattr(self, field_name)
            try:
                low, high = (float(v) for v in value)
            except (TypeError, ValueError):
                raise ValueError(f"{field_name} must be a pair (low, high) of numbers, got {value!r}") from None
            if not (math.isfinite(low) and math.isfinite(high)) or low > high:
                raise ValueError(f"{field_name} must be finite with low <= high, got {value!r}")
            object.__setattr__(self, field_name, (low, high))
        for name in ("brightness_range", "contrast_range", "saturation_range"):
            if getattr(self, name)[0] < -1.0:
                raise ValueError(
                    f"{name} is an offset (factor = 1 + offset) and must be >= -1, got {getattr(self, name)}"
                )
        if self.blur_sigma_range[0] < 0:
            raise ValueError(f"blur_sigma_range must be >= 0, got {self.blur_sigma_range}")
        if not (isinstance(self.reference_size, int) and self.reference_size > 0):
            raise ValueError(f"reference_size must be a positive int, got {self.reference_size!r}")

    @classmethod
    def range_fields(cls) -> tuple[Field, ...]:
        """The fields θ's ranges are set with, with their help (`metadata["help"]`), in declaration order."""
        return tuple(f for f in fields(cls) if f.metadata.get("range"))

    @property
    def steps(self) -> tuple[str, ...]:
        """The base families applied, in order: ``(family,)``, or ``components`` for a composite."""
        return self.components if self.family == "composite" else (self.family,)

    @property
    def parameter_names(self) -> tuple[str, ...]:
        """Names of the columns of θ, e.g. ``("angle", "tx", "ty")`` for SE(2)."""
        return tuple(name for step in self.steps for name in _PARAMETER_NAMES[step])

    @property
    def num_parameters(self) -> int:
        return len(self.parameter_names)

    @property
    def parameter_ranges(self) -> tuple[tuple[float, float], ...]:
        """(low, high) per column of θ, in the order of :attr:`parameter_names`."""
        return tuple(getattr(self, _PARAMETER_RANGE_FIELDS[name]) for name in self.parameter_names)

    @property
    def is_geometric(self) -> bool:
        """True when some step moves pixels (then the validity masks can be partly zero)."""
        return any(step in _GEOMETRIC_FAMILIES for step in self.steps)

    @property
    def context_ratio(self) -> float:
        """Side of the image needed around a view, as a multiple of the view's side, for the largest θ to draw
        only real pixels: |cos ϕ| + |sin ϕ| for rotation, twice the largest shift, twice the blur kernel's radius."""
        ratio = 1.0
        if "rotation" in self.steps or "se2" in self.steps:
            angles = np.deg2rad(np.linspace(*self.rotation_range, num=1801))
            ratio = float(np.max(np.abs(np.cos(angles)) + np.abs(np.sin(angles))))
        if "translation" in self.steps or "se2" in self.steps:
            ratio += 2 * max(abs(v) for v in self.translation_range) / self.reference_size
        if "blur" in self.steps:
            ratio += 2 * BLUR_TRUNCATE * max(abs(v) for v in self.blur_sigma_range) / self.reference_size
        return ratio

    def sample(self, num: int, generator: np.random.Generator) -> np.ndarray:
        """Draw ``num`` parameter vectors uniformly from the ranges: a float32 array of shape (num, P)."""
        low, high = np.asarray(self.parameter_ranges, dtype=np.float64).T
        return generator.uniform(low, high, size=(num, self.num_parameters)).astype(np.float32)

    def to_dict(self) -> dict:
        """A JSON-serialisable dict (tuples become lists); inverse of :meth:`from_dict`."""
        return {key: list(value) if isinstance(value, tuple) else value for key, value in asdict(self).items()}

    @classmethod
    def from_dict(cls, config_dict: dict) -> TransformationConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(config_dict) - known)
        if unknown:
            raise ValueError(f"unknown TransformationConfig keys {unknown}; allowed: {sorted(known)}")
        kwargs = {key: tuple(value) if isinstance(value, list) else value for key, value in config_dict.items()}
        return cls(**kwargs)


#: Names of the range fields of `TransformationConfig`: the one list of them.
RANGE_FIELDS: tuple[str, ...] = tuple(f.name for f in TransformationConfig.range_fields())


@dataclass
class TransformedPair:
    """Output of :func:`make_transformed_pair`, in the same pixel space as the input base images."""

    transformed: torch.Tensor  # v2 = g_θ(u), (B, C, H, W)
    targets: torch.Tensor  # u_k = g_{kθ/(K+1)}(u), (B, K, C, H, W)
    target_masks: torch.Tensor  # (B, K, 1, H, W), 1 = valid pixel
    transformed_mask: torch.Tensor  # (B, 1, H, W)


def make_transformed_pair(
    base: torch.Tensor,
    params: torch.Tensor,
    config: TransformationConfig,
    num_intermediates: int,
    *,
    image_mean: Sequence[float] | None = None,
    image_std: Sequence[float] | None = None,
    output_size: int | None = None,
) -> TransformedPair:
    """v2 = g_θ(u) and the K intermediate targets g_{kθ/(K+1)}(u), all from one batched call.

    The scales (1/(K+1), ..., K/(K+1), 1) multiply θ and are stacked along the batch, so the (B·(K+1))
    images go through :func:`apply_transformation` together: v2 and the targets share every code path.

    ``output_size``: when ``base`` carries a context margin around the view (square, larger than
    ``output_size``), the view's centred ``output_size``² crop is returned, so geometric transformations draw real
    pixels from the margin instead of filling black.
    """
    if not isinstance(num_intermediates, int) or num_intermediates < 0:
        raise ValueError(f"num_intermediates must be an int >= 0, got {num_intermediates!r}")
    _check_inputs(base, params, config)
    batch, channels, height, width = base.shape
    if output_size is not None and not (isinstance(output_size, int) and 0 < output_size <= min(height, width)):
        raise ValueError(
            f"output_size must be an int in [1, {min(height, width)}] (the base size), got {output_size!r}"
        )
    steps = num_intermediates + 1
    params = params.to(device=base.device, dtype=_compute_dtype(base.dtype))
    scales = torch.arange(1, steps + 1, device=base.device, dtype=params.dtype) / steps
    all_params = (params[:, None, :] * scales[None, :, None]).reshape(batch * steps, -1)
    all_images = base.unsqueeze(1).expand(batch, steps, channels, height, width).reshape(-1, channels, height, width)
    out, mask = apply_transformation(
        all_images,
        all_params,
        config,
        image_mean=image_mean,
        image_std=image_std,
        view_size=output_size,
        crop_to_view=output_size is not None,
    )
    if output_size is not None:
        height = width = output_size
    out = out.view(batch, steps, channels, height, width)
    mask = mask.view(batch, steps, 1, height, width)
    return TransformedPair(
        transformed=out[:, -1].contiguous(),
        targets=out[:, :-1].contiguous(),
        target_masks=mask[:, :-1].contiguous(),
        transformed_mask=mask[:, -1].contiguous(),
    )


def apply_transformation(
    images: torch.Tensor,
    params: torch.Tensor,
    config: TransformationConfig,
    *,
    image_mean: Sequence[float] | None = None,
    image_std: Sequence[float] | None = None,
    view_size: int | tuple[int, int] | None = None,
    crop_to_view: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply g_θ with one parameter vector per example.

    Args:
        images: (B, C, H, W) floating point, in the model's input space: normalised as ``(x - mean) / std``
            when ``image_mean``/``image_std`` are given (the image processor's values), else in [0, 1].
            Colour needs C = 3; the geometric families and blur take any C.
        params: (B, P) with the columns of ``config.parameter_names``; moved to the images' device.
        config: the family and its conventions.
        view_size: side (or (height, width)) of the centred view that pixel-valued parameters refer to, when the
            images carry a context margin around it (default: the image size).
        crop_to_view: return only the centred ``view_size`` window (the margin is read, not returned). Equal to
            transforming the whole image and cropping it with :func:`~.context.center_crop`, and cheaper: a final
            warp samples the view's pixels only.

    Returns:
        ``(transformed, valid_mask)``: the images in the same space and dtype as the input, and a
        (B, 1, H, W) mask of 0/1 values in that dtype, 1 where the pixel is valid (0 where it came from outside
        the image). Black fill means 0 in [0, 1] space, i.e. ``-mean/std`` when normalised.
    """
    _check_inputs(images, params, config)
    if "color" in config.steps and images.shape[1] != 3:
        raise ValueError(f"colour transformations need 3-channel RGB images, got {images.shape[1]} channels")
    view = tuple(images.shape[-2:]) if view_size is None else _pair(view_size)
    if crop_to_view and (view[0] > images.shape[-2] or view[1] > images.shape[-1]):
        raise ValueError(f"crop_to_view: the view {view} must fit in the images {tuple(images.shape[-2:])}")
    if images.shape[0] == 0:
        empty = images.new_ones(0, 1, *images.shape[2:])
        return (center_crop(images, view), center_crop(empty, view)) if crop_to_view else (images.clone(), empty)
    with _autocast_disabled(images.device):  # sub-pixel warps and blur weights need full precision
        out, mask = _apply(images, params, config, image_mean, image_std, view, crop_to_view)
    return out, mask


def _apply(
    images: torch.Tensor,
    params: torch.Tensor,
    config: TransformationConfig,
    image_mean: Sequence[float] | None,
    image_std: Sequence[float] | None,
    view: tuple[int, int],
    crop_to_view: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    compute_dtype = _compute_dtype(images.dtype)
    x = images.to(compute_dtype)
    params = params.to(device=images.device, dtype=compute_dtype)
    mean, std = _normalisation(image_mean, image_std, x)
    if mean is not None:
        x = x * std + mean

    view_height, view_width = view
    scale = (view_width / config.reference_size, view_height / config.reference_size)  # pixels per reference pixel
    mask: torch.Tensor | None = None  # None = every pixel valid
    offset = 0
    pending_geometric: list[tuple[str, torch.Tensor]] = []
    for step in config.steps:
        step_params = params[:, offset : offset + len(_PARAMETER_NAMES[step])]
        offset += len(_PARAMETER_NAMES[step])
        if step in _GEOMETRIC_FAMILIES:
            # Consecutive geometric steps become one warp: one interpolation, exact composition.
            pending_geometric.append((step, step_params))
            continue
        if pending_geometric:
            x, mask = warp(x, mask, pending_geometric, scale)
            pending_geometric = []
        if step == "color":
            x = adjust_color(x, step_params)
        else:  # blur
            x, mask = blur(x, mask, step_params[:, 0], scale)
    if pending_geometric:  # the last step: with crop_to_view, only the view's pixels are sampled
        x, mask = warp(x, mask, pending_geometric, scale, window=view if crop_to_view else None)
    elif crop_to_view:
        x, mask = center_crop(x, view), None if mask is None else center_crop(mask, view)

    if mean is not None:
        x = (x - mean) / std
    if mask is None:
        mask = x.new_ones(x.shape[0], 1, *x.shape[2:])
    return x.to(images.dtype), mask.to(images.dtype)


# --------------------------------------------------------------------------------------------------- checks


def _check_inputs(images: torch.Tensor, params: torch.Tensor, config: TransformationConfig) -> None:
    if not isinstance(config, TransformationConfig):
        raise TypeError(f"config must be a TransformationConfig, got {type(config).__name__}")
    if not isinstance(images, torch.Tensor) or images.ndim != 4:
        raise ValueError(f"images must be a (B, C, H, W) tensor, got {getattr(images, 'shape', type(images))}")
    if not images.is_floating_point():
        raise ValueError(f"images must be floating point (normalised or in [0, 1]), got dtype {images.dtype}")
    expected = (images.shape[0], config.num_parameters)
    if not isinstance(params, torch.Tensor) or tuple(params.shape) != expected:
        raise ValueError(
            f"params must have shape (B, P) = {expected} with columns {config.parameter_names}, "
            f"got {tuple(getattr(params, 'shape', ()))}"
        )


def _autocast_disabled(device: torch.device) -> contextlib.AbstractContextManager:
    """Turn off an enclosing autocast (e.g. Trainer with bf16) that would run blur and grids in half precision."""
    if torch.is_autocast_enabled(device.type):
        return torch.autocast(device_type=device.type, enabled=False)
    return contextlib.nullcontext()


def _pair(size: int | Sequence[int]) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 at least: half-precision grids are too coarse for sub-pixel warps."""
    return dtype if dtype in (torch.float32, torch.float64) else torch.float32


def _normalisation(
    image_mean: Sequence[float] | None, image_std: Sequence[float] | None, like: torch.Tensor
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    if image_mean is None and image_std is None:
        return None, None
    if image_mean is None or image_std is None:
        raise ValueError("image_mean and image_std must be given together (normalised input) or both omitted ([0, 1])")
    channels = like.shape[1]
    mean = torch.as_tensor(image_mean, dtype=like.dtype, device=like.device).flatten()
    std = torch.as_tensor(image_std, dtype=like.dtype, device=like.device).flatten()
    if mean.numel() not in (1, channels) or std.numel() not in (1, channels):
        raise ValueError(f"image_mean/image_std need 1 or {channels} values, got {mean.numel()} and {std.numel()}")
    if bool((std == 0).any()):
        raise ValueError(f"image_std must be non-zero, got {image_std}")
    return mean.view(1, -1, 1, 1), std.view(1, -1, 1, 1)
