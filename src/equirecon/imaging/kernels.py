"""The pixel kernels behind g_θ: one batched warp for rotation / translation / SE(2), colour adjustment, and a
per-example Gaussian blur, in pure torch on any device. :mod:`.transformations` says which runs when and with which
parameters; the conventions are documented (and tested) there."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["BLUR_IDENTITY_SIGMA", "BLUR_TRUNCATE", "adjust_color", "blur", "warp"]

#: Blur σ (in pixels at ``reference_size``) at or below which blur is exactly the identity.
BLUR_IDENTITY_SIGMA: float = 1e-3
# Blur truncation in standard deviations (SciPy's ``gaussian_filter`` default).
BLUR_TRUNCATE = 4.0
# A warped pixel is valid when at most this fraction of its bilinear weight comes from outside the image.
_MASK_TOLERANCE = 1e-3


# ------------------------------------------------------------------------------------------------- geometry


def warp(
    x: torch.Tensor,
    mask: torch.Tensor | None,
    steps: list[tuple[str, torch.Tensor]],
    scale: tuple[float, float],
    window: tuple[int, int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One bilinear warp for a run of geometric steps, with zero (black) fill and a validity mask.

    ``window``: compute only the centred (height, width) window of the output, the view inside a context margin:
    each output pixel is sampled on its own, so the window is exactly that part of the full warp at a fraction of
    its cost. Everything is elementwise (no matmul), so TF32 matmul settings cannot perturb sub-pixel coordinates.
    """
    batch, _, height, width = x.shape
    out_height, out_width = window or (height, width)
    top, left = (height - out_height) // 2, (width - out_width) // 2  # as context.center_crop
    # Forward map in centred pixel coordinates (y down): p ↦ R(angle) p + shift, composed step after step.
    # On screen a positive angle is counter-clockwise: with y down, (1, 0) moves towards (cos, −sin).
    angle = x.new_zeros(batch)
    shift_x, shift_y = x.new_zeros(batch), x.new_zeros(batch)
    for step, p in steps:
        if step != "translation":
            step_angle = torch.deg2rad(p[:, 0])
            cos, sin = torch.cos(step_angle), torch.sin(step_angle)
            shift_x, shift_y = cos * shift_x + sin * shift_y, cos * shift_y - sin * shift_x
            angle = angle + step_angle
        if step != "rotation":
            shift_x = shift_x + p[:, -2] * scale[0]
            shift_y = shift_y + p[:, -1] * scale[1]

    # grid_sample wants, per output pixel, the source point p = R(−angle)(p' − shift) in normalised coordinates
    # n = p / (W/2, H/2), whose pixel centres are (2i + 1)/size − 1 (align_corners=False).
    cos, sin = (v.view(-1, 1, 1) for v in (torch.cos(angle), torch.sin(angle)))
    shift_x, shift_y = shift_x.view(-1, 1, 1), shift_y.view(-1, 1, 1)
    columns = torch.arange(left, left + out_width, dtype=x.dtype, device=x.device)
    rows = torch.arange(top, top + out_height, dtype=x.dtype, device=x.device)
    xs = ((columns * 2 + 1) / width - 1).view(1, 1, out_width)
    ys = ((rows * 2 + 1) / height - 1).view(1, out_height, 1)
    grid_x = cos * xs - (sin * (height / width)) * ys - (cos * shift_x - sin * shift_y) / (width / 2)
    grid_y = (sin * (width / height)) * xs + cos * ys - (sin * shift_x + cos * shift_y) / (height / 2)
    grid = torch.stack(torch.broadcast_tensors(grid_x, grid_y), dim=-1)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)

    # Valid = every bilinear tap inside the image: the source point lies within the outer pixel centres,
    # ±(1 − 1/size), give or take _MASK_TOLERANCE pixels.
    limit_x = 1.0 - (1.0 - 2.0 * _MASK_TOLERANCE) / width
    limit_y = 1.0 - (1.0 - 2.0 * _MASK_TOLERANCE) / height
    valid = ((grid_x.abs() <= limit_x) & (grid_y.abs() <= limit_y)).unsqueeze(1)
    if mask is not None:
        warped = F.grid_sample(mask, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        valid = valid & (warped >= 1.0 - _MASK_TOLERANCE)
    return out, valid.to(x.dtype)


# --------------------------------------------------------------------------------------------------- colour


def _grayscale(x: torch.Tensor) -> torch.Tensor:
    """ITU-R 601-2 luma, as PIL's ``convert("L")`` and torchvision's ``rgb_to_grayscale``: (N, 1, H, W)."""
    weights = torch.tensor([0.299, 0.587, 0.114], dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x * weights).sum(dim=-3, keepdim=True)


def adjust_color(x: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """Brightness → contrast → saturation → hue, each a blend as in PIL ``ImageEnhance``, clamped to [0, 1]."""
    brightness, contrast, saturation = (p[:, i].view(-1, 1, 1, 1) for i in range(3))
    # factor·x + (1 − factor)·reference with factor = 1 + offset; an offset of 0 gives back x exactly.
    x = (x * (1.0 + brightness)).clamp_(0.0, 1.0)  # reference: black
    mean_grey = _grayscale(x).mean(dim=(-2, -1), keepdim=True)
    x = x.mul_(1.0 + contrast).sub_(contrast * mean_grey).clamp_(0.0, 1.0)  # reference: the mean grey level
    grey = _grayscale(x)  # before the in-place update below
    x = x.mul_(1.0 + saturation).sub_(saturation * grey).clamp_(0.0, 1.0)  # reference: per-pixel grey
    return _shift_hue(x, p[:, 3])


def _shift_hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate the HSV hue by ``shift`` turns, keeping S and V (torchvision's ``adjust_hue``).

    Written without materialising S: with V = max, C = max − min, each channel is V − C·clamp(min(k, 4 − k), 0, 1)
    for k = (n + 6h) mod 6, n = 5, 3, 1 for R, G, B. Grey pixels (C = 0) come back unchanged.
    """
    if not bool((shift != 0).any()):
        return x
    r, g, b = x.unbind(dim=-3)
    value = torch.maximum(torch.maximum(r, g), b)  # elementwise: much faster than a reduction over channels
    chroma = value - torch.minimum(torch.minimum(r, g), b)
    # Hue in sixths of a turn, in [-1, 5); the mod below wraps it. Grey pixels give 0 / tiny = 0.
    hue6 = torch.where(
        value == r, g - b, torch.where(value == g, (b - r).add_(chroma, alpha=2.0), (r - g).add_(chroma, alpha=4.0))
    )
    hue6 = hue6.div_(chroma.clamp_min(torch.finfo(x.dtype).tiny)).add_(6.0 * shift.view(-1, 1, 1))
    n = torch.tensor([5.0, 3.0, 1.0], dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    k = (n + hue6.unsqueeze(1)).remainder_(6.0)
    return value.unsqueeze(1) - chroma.unsqueeze(1) * torch.minimum(k, 4.0 - k).clamp_(0.0, 1.0)


# ----------------------------------------------------------------------------------------------------- blur


def _gaussian_kernels(sigma: torch.Tensor, max_radius: int) -> torch.Tensor:
    """(N, 2·R+1) normalised Gaussians, each truncated at its own radius so results do not depend on the batch."""
    offsets = torch.arange(-max_radius, max_radius + 1, dtype=sigma.dtype, device=sigma.device)
    safe_sigma = sigma.clamp_min(BLUR_IDENTITY_SIGMA).unsqueeze(1)
    radius = torch.floor(BLUR_TRUNCATE * safe_sigma + 0.5).clamp(max=max_radius)
    kernel = torch.exp(-0.5 * (offsets / safe_sigma) ** 2) * (offsets.abs() <= radius)
    return kernel / kernel.sum(dim=1, keepdim=True)


def _separable_blur(x: torch.Tensor, kernel_x: torch.Tensor, kernel_y: torch.Tensor) -> torch.Tensor:
    """Per-example separable convolution as one grouped conv per axis, with mirror padding."""
    batch, channels, height, width = x.shape
    flat = x.reshape(1, batch * channels, height, width)
    rx, ry = kernel_x.shape[1] // 2, kernel_y.shape[1] // 2
    weight_x = kernel_x.repeat_interleave(channels, dim=0).view(batch * channels, 1, 1, -1)
    weight_y = kernel_y.repeat_interleave(channels, dim=0).view(batch * channels, 1, -1, 1)
    if rx:
        flat = F.conv2d(F.pad(flat, (rx, rx, 0, 0), mode="reflect"), weight_x, groups=batch * channels)
    if ry:
        flat = F.conv2d(F.pad(flat, (0, 0, ry, ry), mode="reflect"), weight_y, groups=batch * channels)
    return flat.view(batch, channels, height, width)


def blur(
    x: torch.Tensor, mask: torch.Tensor | None, sigma: torch.Tensor, scale: tuple[float, float]
) -> tuple[torch.Tensor, torch.Tensor | None]:
    low, high = torch.aminmax(sigma)
    low, high = (float(v) for v in torch.stack([low, high]).tolist())  # one device sync
    if low < 0:
        raise ValueError(f"blur sigma must be >= 0, got {low}")
    if high <= BLUR_IDENTITY_SIGMA:
        return x, mask
    identity = sigma <= BLUR_IDENTITY_SIGMA
    _, _, height, width = x.shape
    sigma_x, sigma_y = sigma * scale[0], sigma * scale[1]
    # One kernel size for the batch (from its largest σ); mirror padding needs radius < size.
    radius_x = min(int(BLUR_TRUNCATE * high * scale[0] + 0.5), width - 1)
    radius_y = min(int(BLUR_TRUNCATE * high * scale[1] + 0.5), height - 1)
    kernel_x, kernel_y = _gaussian_kernels(sigma_x, radius_x), _gaussian_kernels(sigma_y, radius_y)
    keep = identity.view(-1, 1, 1, 1)
    out = torch.where(keep, x, _separable_blur(x, kernel_x, kernel_y))
    if mask is not None:
        # A pixel next to fill is blurred with it: it stays valid only if (almost) none of its weight is fill.
        blurred_mask = (_separable_blur(mask, kernel_x, kernel_y) >= 1.0 - _MASK_TOLERANCE).to(mask.dtype)
        mask = torch.where(keep, mask, blurred_mask)
    return out, mask
