"""Frozen-feature extraction: one forward pass, every pooled feature an evaluation may ask for.

Feature kinds (the rows of the paper's and DINOv2's evaluation tables):

========================  =========================================================================  ===========
kind                      definition                                                                 models
========================  =========================================================================  ===========
``"cls"``                 the CLS token of ``last_hidden_state`` (after the final layer norm)        any with CLS
``"mean_patch"``          mean of the patch tokens of ``last_hidden_state`` (prefix tokens skipped)  any
``"cls+mean_patch"``      both, concatenated (DINOv2's linear-probe input)                           any with CLS
``"pooled"``              mean over patch tokens of ``[z_inv; z_equi]`` (the split head's output)    EquiRecon
``"invariant"``           mean over patch tokens of ``invariant_embeds`` (``z_inv``)                 EquiRecon
``"equivariant"``         mean over patch tokens of ``equivariant_embeds`` (``z_equi``)              EquiRecon
========================  =========================================================================  ===========

``"cls"`` reads ``last_hidden_state[:, 0]`` rather than ``pooler_output`` on purpose: ``ViTModel``'s pooler is a
``tanh(Linear)`` that self-supervised checkpoints never train, while DINOv2's and EquiRecon's pooler output *is*
the normalised CLS token. Prefix tokens (CLS, registers, DeiT's distillation token) are never averaged in.
Models with a spatial ``(B, C, H, W)`` output (CNNs) support ``"mean_patch"`` only.

``"auto"`` resolves to ``"mean_patch"`` for every model: EquiRecon and its baselines are read out the same way, from
the backbone, where the reconstruction task acts. The head's parts are asked for by name; their mean (``"pooled"``)
mixes the invariant part into the equivariant one.
"""

from __future__ import annotations

import contextlib
import inspect
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from .loading import InputSpec
from .precision import autocast, resolve_precision

__all__ = [
    "EQUIRECON_FEATURE_KINDS",
    "FEATURE_KINDS",
    "FeatureExtractor",
    "available_kinds",
    "encode_images",
    "eval_mode",
    "model_device",
    "num_prefix_tokens",
    "pool_features",
]

FEATURE_KINDS: tuple[str, ...] = ("cls", "mean_patch", "cls+mean_patch", "pooled", "invariant", "equivariant")
EQUIRECON_FEATURE_KINDS: frozenset[str] = frozenset({"pooled", "invariant", "equivariant"})


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Evaluate ``model`` in eval mode, then hand it back in the mode it came in (e.g. inside a training loop)."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def num_prefix_tokens(model: nn.Module) -> int:
    """Number of tokens before the patch tokens in ``last_hidden_state``.

    Uses the config's ``num_prefix_tokens`` when it has one (EquiRecon's single source of the count), else the
    model's own (timm-style models); otherwise counts the CLS, register and distillation tokens the model's
    embeddings define, so models without a CLS token (Swin, ...) get 0 rather than losing a patch token.
    """
    for owner in (getattr(model, "config", None), model):
        value = getattr(owner, "num_prefix_tokens", None)
        if isinstance(value, int):
            return value
    embeddings = getattr(model, "embeddings", None)
    if embeddings is None or getattr(embeddings, "cls_token", None) is None:
        return 0
    registers = getattr(model.config, "num_register_tokens", 0) or 0
    distillation = int(getattr(embeddings, "distillation_token", None) is not None)
    return 1 + int(registers) + distillation


def _has_equirecon_outputs(outputs: Any) -> bool:
    return (
        getattr(outputs, "invariant_embeds", None) is not None
        and getattr(outputs, "equivariant_embeds", None) is not None
    )


def _patch_mean(tokens: torch.Tensor, num_prefix: int, num_tokens: int, name: str) -> torch.Tensor:
    """Mean over patch tokens of per-token ``(B, N, D)`` embeddings that may or may not include prefix tokens."""
    if tokens.ndim != 3:
        raise ValueError(f"{name} should be per token (B, N, D), got shape {tuple(tokens.shape)}.")
    if tokens.shape[1] == num_tokens:
        tokens = tokens[:, num_prefix:]
    elif tokens.shape[1] != num_tokens - num_prefix:
        raise ValueError(f"{name} has {tokens.shape[1]} tokens; last_hidden_state has {num_tokens}.")
    return tokens.mean(dim=1)


def available_kinds(outputs: Any, num_prefix: int) -> tuple[str, ...]:
    """The feature kinds a model output supports, in :data:`FEATURE_KINDS` order."""
    hidden = getattr(outputs, "last_hidden_state", None)
    if hidden is None:
        return ()
    kinds = ["mean_patch"] if hidden.ndim == 4 or num_prefix == 0 else ["cls", "mean_patch", "cls+mean_patch"]
    if _has_equirecon_outputs(outputs):
        kinds += ["pooled", "invariant", "equivariant"]
    return tuple(kind for kind in FEATURE_KINDS if kind in kinds)


def pool_features(outputs: Any, kind: str, num_prefix: int) -> torch.Tensor:
    """The ``(B, D)`` feature of ``kind`` from a model output (see the module docstring for the kinds)."""
    if kind not in FEATURE_KINDS:
        raise ValueError(f"unknown feature kind {kind!r}; choose one of {', '.join(FEATURE_KINDS)} or 'auto'.")
    hidden = getattr(outputs, "last_hidden_state", None)
    if hidden is None:
        raise ValueError(f"{type(outputs).__name__} has no last_hidden_state; is this a vision encoder output?")
    if kind in EQUIRECON_FEATURE_KINDS:
        if not _has_equirecon_outputs(outputs):
            raise ValueError(
                f"feature {kind!r} needs the invariant/equivariant split of an EquiRecon model "
                f"(invariant_embeds and equivariant_embeds), which {type(outputs).__name__} does not have. "
                "Use 'cls', 'mean_patch' or 'cls+mean_patch' for other models."
            )
        num_tokens = hidden.shape[1]
        invariant = _patch_mean(outputs.invariant_embeds, num_prefix, num_tokens, "invariant_embeds")
        equivariant = _patch_mean(outputs.equivariant_embeds, num_prefix, num_tokens, "equivariant_embeds")
        return {"invariant": invariant, "equivariant": equivariant}.get(kind, torch.cat([invariant, equivariant], -1))
    if hidden.ndim == 4:  # CNN feature map (B, C, H, W)
        if kind != "mean_patch":
            raise ValueError(
                f"feature {kind!r} needs a CLS token; this model returns a feature map. Use 'mean_patch'."
            )
        return hidden.mean(dim=(2, 3))
    if kind in ("cls", "cls+mean_patch") and num_prefix == 0:
        raise ValueError(f"feature {kind!r} needs a CLS token, which this model does not have. Use 'mean_patch'.")
    if hidden.shape[1] <= num_prefix:
        raise ValueError(
            f"last_hidden_state has {hidden.shape[1]} tokens, no patch tokens after {num_prefix} prefix tokens."
        )
    cls = hidden[:, 0]
    mean_patch = hidden[:, num_prefix:].mean(dim=1)
    return {"cls": cls, "mean_patch": mean_patch}.get(kind, torch.cat([cls, mean_patch], dim=-1))


def model_device(model: nn.Module) -> torch.device:
    """Where ``model``'s weights are (the CPU for a model without parameters)."""
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


class FeatureExtractor:
    """Runs a frozen model in inference mode and returns pooled features as float32 CPU tensors.

    Several kinds come from the same forward pass, so comparing feature kinds costs no extra encoding.

    Args:
        model: any transformers vision encoder returning ``last_hidden_state`` (and, for the EquiRecon kinds,
            ``invariant_embeds``/``equivariant_embeds``). It is put in eval mode (the module-level functions
            restore the previous mode afterwards); its device and dtype are used.
        kinds: feature kinds to return; ``"auto"`` stands for the model's default kind and ``"all"`` for every
            kind the model supports (found at the first batch).
        precision: ``"float32"`` or ``"bfloat16"`` (autocast of the forward, :mod:`.precision`); resolve ``"auto"``
            with :func:`.precision.resolve_precision` first.
    """

    def __init__(self, model: nn.Module, kinds: Sequence[str] = ("auto",), precision: str = "float32") -> None:
        self.model = model.eval()
        self.num_prefix = num_prefix_tokens(model)
        parameter = next(model.parameters(), None)
        self.device = model_device(model)
        self.dtype = parameter.dtype if parameter is not None and parameter.is_floating_point() else torch.float32
        self._interpolate = "interpolate_pos_encoding" in inspect.signature(model.forward).parameters
        self.precision = precision
        autocast(self.device, precision)  # fails now on an unresolved precision, not at the first batch
        self._requested = tuple(kinds)
        self.auto_kind: str | None = None
        dynamic = "auto" in self._requested or "all" in self._requested
        self.kinds: tuple[str, ...] | None = None if dynamic else self._validate(self._requested)

    @staticmethod
    def _validate(kinds: Iterable[str]) -> tuple[str, ...]:
        kinds = tuple(dict.fromkeys(kinds))
        for kind in kinds:
            if kind not in FEATURE_KINDS:
                raise ValueError(f"unknown feature kind {kind!r}; choose from {', '.join(FEATURE_KINDS)} or 'auto'.")
        return kinds

    def resolved_kind(self, kind: str = "auto") -> str:
        """The concrete kind ``kind`` stands for with this model (runs one tiny forward if still unknown)."""
        if kind != "auto":
            return kind
        if self.auto_kind is None:
            self.probe()
        assert self.auto_kind is not None
        return self.auto_kind

    def probe(self, image_size: tuple[int, int] | None = None) -> dict[str, torch.Tensor]:
        """Resolve ``"auto"``/``"all"`` and check every requested kind with one forward of a blank image; returns
        its features (their widths).

        ``image_size`` defaults to the model config's ``image_size`` (224 if it has none).
        """
        if image_size is None:
            size = getattr(getattr(self.model, "config", None), "image_size", None) or 224
            image_size = (size, size) if isinstance(size, int) else tuple(size)
        return self(torch.zeros(1, 3, *image_size))

    def images_per_second(self, image_size: tuple[int, int], batch_size: int) -> float:
        """The bare forward's throughput on blank ``(batch_size, 3, H, W)`` batches: one forward to warm up, then the
        faster of two (a shared machine's hiccups), for a time estimate before a long extraction."""
        blank = torch.zeros(batch_size, 3, *image_size)
        self(blank)
        seconds = []
        for _ in range(2):
            start = time.perf_counter()
            self(blank)  # returns CPU tensors: an asynchronous device has finished
            seconds.append(time.perf_counter() - start)
        return batch_size / max(min(seconds), 1e-9)

    @torch.inference_mode()
    def __call__(self, pixel_values: torch.Tensor) -> dict[str, torch.Tensor]:
        """Features ``{kind: (B, D)}`` of one batch of model-input-space images ``(B, 3, H, W)``."""
        kwargs = {"interpolate_pos_encoding": True} if self._interpolate else {}
        with autocast(self.device, self.precision):
            outputs = self.model(pixel_values=pixel_values.to(self.device, self.dtype), **kwargs)
        if self.auto_kind is None:
            self.auto_kind = "mean_patch"
        if self.kinds is None:
            resolved: list[str] = []
            for kind in self._requested:
                if kind == "all":
                    resolved += available_kinds(outputs, self.num_prefix)
                else:
                    resolved.append(self.auto_kind if kind == "auto" else kind)
            self.kinds = self._validate(resolved)
        return {kind: pool_features(outputs, kind, self.num_prefix).float().cpu() for kind in self.kinds}

    def extract(
        self,
        batches: Iterable[torch.Tensor],
        *,
        total: int | None = None,
        progress: bool = False,
        description: str = "features",
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> dict[str, torch.Tensor]:
        """Concatenated features of an iterable of image batches (optionally transformed on the device first)."""
        chunks: dict[str, list[torch.Tensor]] = {}
        for batch in tqdm(batches, total=total, desc=description, unit="batch", disable=not progress, leave=False):
            batch = batch.to(self.device)
            for kind, values in self(transform(batch) if transform is not None else batch).items():
                chunks.setdefault(kind, []).append(values)
        if not chunks:
            raise ValueError("no images to extract features from.")
        return {kind: torch.cat(values) for kind, values in chunks.items()}


def encode_images(
    model: nn.Module,
    images: Sequence[Any],
    *,
    input_spec: InputSpec | None = None,
    kinds: Sequence[str] = ("auto",),
    batch_size: int = 64,
    progress: bool = False,
    description: str = "features",
    precision: str = "float32",
) -> dict[str, torch.Tensor]:
    """Features ``{kind: (N, D)}`` of a sequence of images (PIL, arrays or tensors), preprocessed by
    :meth:`InputSpec.preprocess` (resize, centre crop, normalise) batch by batch; ``precision`` as in
    :func:`.precision.resolve_precision`."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}.")
    spec = input_spec or InputSpec.from_model(model)
    with eval_mode(model):
        precision = resolve_precision(precision, model_device(model))
        extractor = FeatureExtractor(model, kinds=kinds, precision=precision)
        batches = (spec.preprocess(images[start : start + batch_size]) for start in range(0, len(images), batch_size))
        total = -(-len(images) // batch_size)
        return extractor.extract(batches, total=total, progress=progress, description=description)
