"""Load a frozen vision encoder for evaluation and describe the input it expects.

Evaluation works on any ``AutoModel`` vision checkpoint (EquiRecon, ViT, DINOv2, ...), so that baselines run
through exactly the same code as EquiRecon models. What the evaluation needs from a checkpoint is the model and an
:class:`InputSpec`: input resolution and normalisation. Both come from the checkpoint's image processor when it
has one, else from the model config's ``image_size`` and ImageNet statistics.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image
from transformers import AutoImageProcessor, AutoModel, PreTrainedModel
from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from ..imaging.decoding import to_rgb_uint8
from ..modeling.configuration_validation import as_pair

logger = logging.getLogger(__name__)

__all__ = ["InputSpec", "load_model", "resolve_device"]


def _size_from_processor_field(size: Any) -> tuple[int, int] | None:
    if size is None:
        return None
    if isinstance(size, int | Sequence) and not isinstance(size, str | dict):
        return as_pair(size)
    size = dict(size) if not isinstance(size, dict) else size
    if size.get("height") and size.get("width"):
        return int(size["height"]), int(size["width"])
    if size.get("shortest_edge"):
        return int(size["shortest_edge"]), int(size["shortest_edge"])
    return None


@dataclass(frozen=True)
class InputSpec:
    """Resolution ``(height, width)`` and per-channel normalisation of a model's input."""

    image_size: tuple[int, int]
    image_mean: tuple[float, float, float] = tuple(IMAGENET_DEFAULT_MEAN)
    image_std: tuple[float, float, float] = tuple(IMAGENET_DEFAULT_STD)

    @classmethod
    def from_model(cls, model: PreTrainedModel, image_processor: Any | None = None) -> InputSpec:
        """Read the spec from ``image_processor`` (crop size, else size, mean, std), falling back to the config."""
        size = None
        mean, std = tuple(IMAGENET_DEFAULT_MEAN), tuple(IMAGENET_DEFAULT_STD)
        if image_processor is not None:
            if getattr(image_processor, "do_center_crop", False):
                size = _size_from_processor_field(getattr(image_processor, "crop_size", None))
            size = size or _size_from_processor_field(getattr(image_processor, "size", None))
            if getattr(image_processor, "image_mean", None) is not None:
                mean = tuple(float(v) for v in image_processor.image_mean)
            if getattr(image_processor, "image_std", None) is not None:
                std = tuple(float(v) for v in image_processor.image_std)
        if size is None:
            config_size = getattr(model.config, "image_size", None)
            if config_size is None:
                raise ValueError(
                    f"{type(model).__name__} has no image processor and its config no image_size; "
                    "pass image_size explicitly."
                )
            size = as_pair(config_size)
        return cls(image_size=size, image_mean=mean, image_std=std)

    def with_size(self, image_size: int | tuple[int, int] | None) -> InputSpec:
        return self if image_size is None else InputSpec(as_pair(image_size), self.image_mean, self.image_std)

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` images in [0, 1] -> model input space."""
        mean = torch.tensor(self.image_mean, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
        std = torch.tensor(self.image_std, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
        return (images - mean) / std

    def preprocess(self, images: Sequence[Any]) -> torch.Tensor:
        """Resize (shorter side) and centre-crop images to ``image_size``; normalise. Returns ``(B, 3, H, W)``.

        The same deterministic preprocessing for every checkpoint keeps probe comparisons fair; it is the common
        evaluation transform (resize + centre crop) at the model's own resolution.
        """
        height, width = self.image_size
        arrays = []
        for image in images:
            pil = Image.fromarray(to_rgb_uint8(image, min_size=1))
            scale = max(height / pil.height, width / pil.width)
            resized = pil.resize(
                (max(width, round(pil.width * scale)), max(height, round(pil.height * scale))),
                Image.Resampling.BICUBIC,
            )
            left, top = (resized.width - width) // 2, (resized.height - height) // 2
            arrays.append(np.asarray(resized.crop((left, top, left + width, top + height))))
        batch = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float().div_(255.0)
        return self.normalize(batch)

    def to_dict(self) -> dict[str, Any]:
        return {
            "image_size": list(self.image_size),
            "image_mean": list(self.image_mean),
            "image_std": list(self.image_std),
        }


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None``/``"auto"``: CUDA if available, else CPU."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def load_model(
    model_name_or_path: str,
    *,
    trust_remote_code: bool = False,
    revision: str | None = None,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    image_size: int | tuple[int, int] | None = None,
) -> tuple[PreTrainedModel, InputSpec]:
    """Load a frozen encoder with ``AutoModel`` (in eval mode, without gradients) and its :class:`InputSpec`.

    Registering the EquiRecon classes with the Auto classes, so EquiRecon directories load without remote code;
    a pretraining checkpoint loads as its encoder (``EquiReconModel``). Other vision checkpoints load as their
    own base model. ``dtype`` (e.g. ``"bfloat16"`` on a GPU) is passed to ``from_pretrained``; features are
    returned in float32 whatever the model computes in.
    """
    from ..registration import register_auto_classes

    register_auto_classes()  # model_type "equirecon" resolves without remote code

    kwargs = {"dtype": dtype} if dtype is not None else {}
    model = AutoModel.from_pretrained(
        model_name_or_path, trust_remote_code=trust_remote_code, revision=revision, **kwargs
    )
    try:
        processor = AutoImageProcessor.from_pretrained(
            model_name_or_path, trust_remote_code=trust_remote_code, revision=revision
        )
    except (OSError, ValueError, KeyError) as error:  # no preprocessor_config.json: use config + ImageNet stats
        logger.info(
            "no image processor for %s (%s); using the config's image_size and ImageNet statistics.",
            model_name_or_path,
            type(error).__name__,
        )
        processor = None
    model.eval().requires_grad_(False).to(resolve_device(device))
    return model, InputSpec.from_model(model, processor).with_size(image_size)
