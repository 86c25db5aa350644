"""Block masks of the student's patch tokens for iBOT and DINOv2, made per example on the CPU with the views.

BEiT's block-wise masking as iBOT (`bytedance/ibot:loader.py: ImageFolderMask`) and DINOv2
(`facebookresearch/dinov2:dinov2/data/masking.py: MaskingGenerator`) use it: rectangles of at least 4 patches and
aspect ratio in [0.3, 1/0.3] are added until the target count is reached, never exceeding it. Like transformers'
masked-image-modelling examples, the mask travels with the example as `bool_masked_pos`.

Masking is decided per *pair* here: with probability `probability` both views of a pair are masked (each with its
own ratio, drawn uniformly from `ratio_range`, and its own blocks), otherwise neither. iBOT draws this for every view
independently (`--pred_ratio 0 0.3 --pred_ratio_var 0 0.2`: ratio 0 or U(0.1, 0.5) with even odds); masking the two
views together keeps the same share of masked views while leaving half of the pairs fully unmasked, and those are
the pairs the reconstruction decoders learn from (`EquiReconForPreTraining.forward`).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

__all__ = ["BlockMaskGenerator"]


class BlockMaskGenerator:
    """`(2, grid_size²)` boolean masks for the two views of a pair, patches in raster order.

    Args:
        grid_size: patches per side of a view (image size // patch size).
        ratio_range: fraction of a masked view's patches to mask, drawn uniformly.
        probability: chance that a pair is masked.
        min_num_patches: smallest block (DINOv2's 4).
        max_block_fraction: largest block as a fraction of the view (DINOv2: half).
        aspect_range: block aspect ratios (height / width), drawn log-uniformly.
    """

    def __init__(
        self,
        grid_size: int,
        ratio_range: tuple[float, float] = (0.1, 0.5),
        probability: float = 0.5,
        min_num_patches: int = 4,
        max_block_fraction: float = 0.5,
        aspect_range: tuple[float, float] = (0.3, 1 / 0.3),
    ) -> None:
        if not (isinstance(grid_size, int) and grid_size >= 1):
            raise ValueError(f"grid_size must be a positive int, got {grid_size!r}")
        low, high = ratio_range
        if not 0 < low <= high < 1:
            raise ValueError(f"ratio_range must satisfy 0 < low <= high < 1, got {ratio_range!r}")
        if not 0 <= probability <= 1:
            raise ValueError(f"probability must be in [0, 1], got {probability!r}")
        self.grid_size = grid_size
        self.num_patches = grid_size * grid_size
        self.ratio_range = (float(low), float(high))
        self.probability = float(probability)
        self.min_num_patches = min_num_patches
        self.max_num_patches = max(1, int(max_block_fraction * self.num_patches))
        self.log_aspect_range = (math.log(aspect_range[0]), math.log(aspect_range[1]))

    @classmethod
    def from_config(cls, config: Any) -> BlockMaskGenerator:
        """The generator an `EquiReconConfig` asks for (`mask_ratio_range`, `mask_probability`, its patch grid)."""
        return cls(
            config.image_size // config.patch_size,
            ratio_range=tuple(config.mask_ratio_range),
            probability=config.mask_probability,
        )

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(grid_size={self.grid_size}, ratio_range={self.ratio_range}, "
            f"probability={self.probability})"
        )

    def __call__(self, rng: np.random.Generator) -> np.ndarray:
        """Masks of one pair, shape (2, grid_size²)."""
        masks = np.zeros((2, self.num_patches), dtype=bool)
        if rng.random() < self.probability:
            for view in range(2):
                target = int(self.num_patches * rng.uniform(*self.ratio_range))
                masks[view] = self.block_mask(target, rng).reshape(-1)
        return masks

    def block_mask(self, num_masked: int, rng: np.random.Generator) -> np.ndarray:
        """A (grid_size, grid_size) mask of at most `num_masked` patches, built from rectangles."""
        mask = np.zeros((self.grid_size, self.grid_size), dtype=bool)
        count = 0
        while count < num_masked:
            added = self._add_block(mask, min(num_masked - count, self.max_num_patches), rng)
            if added == 0:
                break
            count += added
        return mask

    def _add_block(self, mask: np.ndarray, max_patches: int, rng: np.random.Generator) -> int:
        """Mask one rectangle adding between 1 and `max_patches` new patches (10 tries); the patches added."""
        for _ in range(10):
            # Python's random.uniform, which the references call, accepts max_patches < min_num_patches.
            area = rng.uniform(*sorted((self.min_num_patches, max_patches)))
            aspect = math.exp(rng.uniform(*self.log_aspect_range))
            height = int(round(math.sqrt(area * aspect)))
            width = int(round(math.sqrt(area / aspect)))
            if 0 < width < self.grid_size and 0 < height < self.grid_size:
                top = int(rng.integers(0, self.grid_size - height + 1))
                left = int(rng.integers(0, self.grid_size - width + 1))
                block = mask[top : top + height, left : left + width]
                added = height * width - int(block.sum())
                if 0 < added <= max_patches:
                    block[...] = True
                    return added
        return 0
