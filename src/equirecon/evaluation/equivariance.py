"""The synthetic equivariance benchmark of the paper (Table 1), for any frozen vision encoder.

For each transformation family g (rotation, colour, blur, translation; SE(2) or a composite on request):

1. draw θ uniformly from the family's ranges (paper Table 2) for every benchmark image I;
2. encode I and g_θ(I) with the frozen model (one pooled feature kind, see :mod:`.features`);
3. fit the SIE regressor ``[f(I); f(g_θ(I))] → θ`` on some images, early-stopped on others;
4. report R² on images the regressor was not fitted on. Three protocols, from strictest to loosest: held-out images
   (``test_images``: the regressor is fitted on one split and scored on another, the paper's protocol on ImageNet);
   folds of photos (``group_by="photo"``: no crop of a scored photo was fitted on); folds of crops
   (``group_by="crop"``, the default for a handful of photos: θ is read within photos the regressor has seen other
   crops of, so it may learn a per-photo map from feature change to θ, and R² is not a held-out figure).

A feature that keeps the transformation lets the regressor recover θ (R² → 1); an invariant feature does not
(R² ≈ 0). The benchmark images are random crops of the evaluation photos at the model's resolution (see
:mod:`.crops`); g_θ is :func:`equirecon.imaging.transformations.apply_transformation`, the very function that
makes the pretraining targets, so benchmark and training agree on every convention.

Rotations and translations of a crop bring in pixels from outside it. By default (``border="context"``) they are
real pixels: the crop is drawn, widened into the photo by the context margin (:mod:`equirecon.imaging.context`, the
geometry of the pretraining views), transformed, and its centre kept, so g_θ(I) has no black fill. With fill, θ
can be read off the shape of the black corners without looking at the image content, and the benchmark would reward
that shortcut. ``border="fill"`` transforms the crop itself and fills black, to measure that shortcut.

Cost: features of I are computed once and shared by all families; each family adds one pass over g_θ(I). All
features go through a :class:`~.cache.FeatureCache`, so sweeping the regressor, the R² convention or the feature
kind re-encodes nothing. Every random draw derives from ``seed``.
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any, Literal

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from ..imaging.context import center_crop, context_side
from ..imaging.fashion_mnist import EQUIVARIANCE_SETTINGS as FASHION_MNIST_SETTINGS
from ..imaging.fashion_mnist import FASHION_MNIST
from ..imaging.transformations import TransformationConfig, apply_transformation
from .cache import FeatureCache, cache_key, model_fingerprint
from .crops import CropSet, as_photos
from .features import FeatureExtractor, eval_mode, model_device
from .loading import InputSpec, resolve_device
from .metrics import R2Convention
from .precision import resolve_precision
from .regression import RegressorConfig
from .scores import (
    MULTIOUTPUT,
    EquivarianceResult,
    FamilyResult,
    RegressionCost,
    regression_cost,
    score_families,
    score_feature_pairs,
)

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_FAMILIES",
    "PHOTO_SETTINGS",
    "dataset_settings",
    "EquivarianceResult",
    "FamilyResult",
    "run_equivariance_benchmark",
    "score_feature_pairs",
]

#: The families of the paper's Table 1, in its column order.
DEFAULT_FAMILIES: tuple[str, ...] = ("rotation", "color", "blur", "translation")
#: How the benchmark reads a handful of natural photos: many crops of each, from a quarter of the photo to all of it,
#: with the photo around each crop as its context, in folds of crops (θ read within photos the regressor has seen
#: other crops of; folds of photos ask what transfers to unseen photos).
PHOTO_SETTINGS: dict[str, Any] = {"crop_scale": (0.25, 1.0), "border": "context", "group_by": "crop"}


def dataset_settings(dataset: Any) -> dict[str, Any]:
    """The benchmark's settings for a named dataset (``crop_scale``, ``border``, ``group_by``, and the families'
    ranges where the data needs its own): Fashion-MNIST's (:data:`equirecon.imaging.fashion_mnist.
    EQUIVARIANCE_SETTINGS`), else those for photos."""
    if isinstance(dataset, str) and dataset == FASHION_MNIST:
        return dict(FASHION_MNIST_SETTINGS)
    return dict(PHOTO_SETTINGS)


def family_configs(names: Sequence[str], dataset: Any = None) -> dict[str, TransformationConfig]:
    """``{name: TransformationConfig}`` for the families ``names``, with the ranges ``dataset`` needs."""
    ranges = dataset_settings(dataset).get("family_ranges", {})
    return {name: TransformationConfig(family=name, **ranges.get(name, {})) for name in names}


# Bump when the feature-extraction pipeline changes, so old cache entries are not reused.
_CACHE_VERSION = 4  # 3: crops cut from a downscaled copy of each photo; 4: from the smallest copy they need


def _family_configs(
    families: Sequence[str | TransformationConfig] | Mapping[str, TransformationConfig],
) -> dict[str, TransformationConfig]:
    if isinstance(families, str):
        families = [families]
    if isinstance(families, Mapping):
        configs = dict(families)
    else:
        configs = {}
        for entry in families:
            config = entry if isinstance(entry, TransformationConfig) else TransformationConfig(family=entry)
            name = config.family if config.family != "composite" else "+".join(config.components)
            if name in configs:
                raise ValueError(
                    f"family {name!r} is listed twice; pass a mapping {{name: config}} to compare ranges."
                )
            configs[name] = config
    if not configs:
        raise ValueError("no transformation family to evaluate.")
    for name, config in configs.items():
        if not isinstance(config, TransformationConfig):
            raise TypeError(f"family {name!r}: expected a TransformationConfig, got {type(config).__name__}.")
    return configs


def _context_size(configs: Mapping[str, TransformationConfig], image_size: tuple[int, int]) -> tuple[int, int]:
    """Size of the context rendered around each crop so that no geometric g_θ needs pixels from outside it
    (:attr:`TransformationConfig.context_ratio`, the same rule as the pretraining views).

    The margin always covers the paper's SE(2) ranges (and any larger range requested), so the crops, and with
    them every family's result, do not depend on which families are evaluated together.
    """
    geometric = [TransformationConfig(family="se2"), *(c for c in configs.values() if c.is_geometric)]
    ratio = max(config.context_ratio for config in geometric)
    return context_side(image_size[0], ratio), context_side(image_size[1], ratio)


def _benchmark_crops(
    images: Any,
    test_images: Any | None,
    *,
    image_column: str,
    max_images: int | None,
    num_crops: int,
    size: tuple[int, int],
    context_size: tuple[int, int],
    crop_scale: tuple[float, float],
    seed: int,
) -> tuple[CropSet, list[int] | None]:
    """``num_crops`` crops drawn uniformly over the photos of ``images``, and as many over those of ``test_images``
    if given, with the indices of the held-out photos (``test_images``'s)."""
    photos = as_photos(images, image_column=image_column, max_images=max_images)
    if not photos:
        raise ValueError("the equivariance benchmark needs at least one photo, got none.")
    generator = np.random.default_rng([seed, 2])

    def sample(photo_ids: range) -> CropSet:
        return CropSet.sample(
            tuple(photos),
            photo_ids,
            num_crops,
            size,
            scale=crop_scale,
            context_size=context_size,
            generator=generator,
        )

    if test_images is None:
        return sample(range(len(photos))), None
    held_out = as_photos(test_images, image_column=image_column, max_images=max_images)
    if not held_out:
        raise ValueError("test_images must contain at least one photo.")
    test_ids = list(range(len(photos), len(photos) + len(held_out)))
    photos += held_out
    # As many scored crops as fitted ones, however many photos each split has.
    crops = CropSet.concatenate(sample(range(test_ids[0])), sample(range(test_ids[0], len(photos))))
    return crops, test_ids


def _family_seed(seed: int, name: str) -> np.random.Generator:
    # Seeded by name, not position: adding or reordering families does not change another family's θ.
    return np.random.default_rng([seed, zlib.crc32(name.encode())])


def run_equivariance_benchmark(
    model: nn.Module,
    images: Any,
    *,
    families: Sequence[str | TransformationConfig] | Mapping[str, TransformationConfig] = DEFAULT_FAMILIES,
    feature: str = "auto",
    num_crops: int = 4096,
    folds: int = 5,
    scored_folds: int | None = None,
    group_by: Literal["photo", "crop"] = "crop",
    test_images: Any | None = None,
    input_spec: InputSpec | None = None,
    image_size: int | tuple[int, int] | None = None,
    crop_scale: tuple[float, float] = (0.25, 1.0),
    border: Literal["context", "fill"] = "context",
    regressor: RegressorConfig | None = None,
    multioutput: R2Convention = "global",
    batch_size: int = 64,
    device: torch.device | str | None = None,
    seed: int = 0,
    cache: FeatureCache | None = None,
    image_column: str = "image",
    max_images: int | None = None,
    progress: bool = True,
    shuffled_control: bool | Sequence[str] = True,
    precision: str = "auto",
) -> EquivarianceResult:
    """Per-family R² of regressing θ from the frozen features of (I, g_θ(I)).

    Args:
        model: a frozen vision encoder (``EquiReconModel``, ``ViTModel``, ``Dinov2Model``, ...). It is put in
            eval mode and, if ``device`` is given, moved there.
        images: the evaluation photos: a sequence of PIL images / arrays / tensors, or a ``datasets.Dataset``.
            At least 3 for cross-validation by photo.
        families: family names (``"rotation"``, ``"color"``, ``"blur"``, ``"translation"``, ``"se2"``), or
            ``TransformationConfig`` objects for other ranges, or a mapping ``{name: config}``.
        feature: the feature kind (:mod:`.features`); ``"auto"``: the backbone's mean patch token, for every
            model.
        num_crops: number of crops (each with its own θ), drawn uniformly over the photos; with ``test_images``,
            as many again over the held-out photos.
        folds: cross-validation (:func:`.scores.score_feature_pairs`): the crops (or photos, see ``group_by``) are
            dealt into ``folds`` folds, each fold is scored by a regressor fitted on the other folds and
            early-stopped on the next fold, and R² is computed over all scored crops.
        scored_folds: score only the first ``scored_folds`` folds (``1``: one train/validation/test split, at a
            ``folds``-th of the cost); default: every fold, every crop scored.
        group_by: what the folds are made of. ``"crop"`` (default): folds of crops. θ is drawn independently for
            every crop, so no fold can learn θ from a photo's identity, but crops of one photo sit in the training
            and the scored folds, so θ is read within photos the regressor has seen: not a held-out figure.
            ``"photo"``: no regressor sees a pixel of the photo it scores, so R² measures what transfers to new
            photos; with a handful of photos that is close to nothing for any encoder (docs/results.md). With
            thousands of images (Fashion-MNIST) use ``"photo"`` or ``test_images``.
        test_images: held-out photos for one fixed split instead of cross-validation (with ``group_by="photo"``):
            the regressor is fitted on the crops of ``images`` (early-stopped on a ``1/folds`` share of those
            photos) and scored on the crops of these.
        input_spec: resolution and normalisation; default: the model config's ``image_size`` with ImageNet
            statistics (use :func:`.loading.load_model` to get the checkpoint's own).
        image_size: overrides the resolution of ``input_spec``.
        crop_scale: range of each crop's area as a fraction of the largest crop the photo allows.
        border: what a geometric g_θ shows where it moves content in from outside the crop. ``"context"``
            (default): the surrounding photo (rendered as a margin, transformed, centre kept), so θ cannot be read
            off black corners. ``"fill"``: black (the shortcut this benchmark otherwise rules out). Non-geometric
            families always transform the crop itself (colour's contrast is relative to the crop's own mean).
        regressor: the θ regressor's hyper-parameters (default: SIE's MLP, at most 100 epochs, early-stopped).
        multioutput: ``"global"`` (SIE's convention, default) or ``"per_output"`` for the headline R².
        batch_size: images per forward pass.
        device: where to run the model and the regressor (default: the model's device).
        seed: seeds the photo split, crops, θ and the regressor.
        cache: a :class:`FeatureCache` to reuse features across calls (default: a fresh in-memory one).
        image_column: image column when ``images`` is a ``datasets.Dataset``.
        max_images: use only the first ``max_images`` photos (photos are held in memory).
        progress: show progress bars.
        shuffled_control: also score a regressor fitted on permuted θ (:func:`score_feature_pairs`), reported as
            each family's ``shuffled_r2``, for every family (``True``) or the families named; each doubles that
            family's regressor fits.
        precision: the arithmetic of the encoder's forward passes and the regressors' training steps (it replaces
            ``regressor.precision``): ``"float32"``, ``"bfloat16"`` (autocast) or ``"auto"`` (bfloat16 where the
            device has bfloat16 matrix units, :func:`.precision.resolve_precision`). The result records it.
    """
    configs = _family_configs(families)
    if group_by not in ("photo", "crop"):
        raise ValueError(f"group_by must be 'photo' or 'crop', got {group_by!r}.")
    if group_by == "crop" and test_images is not None:
        raise ValueError("test_images holds out photos: use group_by='photo' with it, or pass all photos as images.")
    if border not in ("context", "fill"):
        raise ValueError(f"border must be 'context' or 'fill', got {border!r}.")
    if multioutput not in MULTIOUTPUT:
        raise ValueError(f"multioutput must be one of {MULTIOUTPUT}, got {multioutput!r}.")
    if num_crops < 4:
        raise ValueError(f"num_crops must be at least 4, got {num_crops}.")
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}.")
    if device is not None:
        model.to(resolve_device(device))
    precision = resolve_precision(precision, model_device(model))
    regressor = replace(regressor or RegressorConfig(), precision=precision)
    with eval_mode(model):
        spec = (input_spec or InputSpec.from_model(model)).with_size(image_size)

        context_size = _context_size(configs, spec.image_size) if border == "context" else spec.image_size
        crops, test_ids = _benchmark_crops(
            images,
            test_images,
            image_column=image_column,
            max_images=max_images,
            num_crops=num_crops,
            size=spec.image_size,
            context_size=context_size,
            crop_scale=crop_scale,
            seed=seed,
        )
        params = {
            name: torch.from_numpy(config.sample(len(crops), _family_seed(seed, name)))
            for name, config in configs.items()
        }

        # A 1-image forward resolves "auto" and fails early (before any encoding) on an unavailable kind.
        checker = FeatureExtractor(model, kinds=(feature,), precision=precision)
        probed = checker.probe(spec.image_size)
        kind = checker.resolved_kind(feature)

        # A caller's cache may outlive this model, so its keys include the weights; a fresh one cannot.
        base_key = {
            "version": _CACHE_VERSION,
            "crops": crops.fingerprint(),
            "input": spec.to_dict(),
            "border": border,
            "precision": precision,
        }
        if cache is not None:
            base_key["model"] = model_fingerprint(model)
        cache = cache if cache is not None else FeatureCache()
        keys = {None: cache_key(**base_key, transformation=None)}
        for name, config in configs.items():
            keys[name] = cache_key(**base_key, transformation=config.to_dict(), params=params[name])
        extractor = FeatureExtractor(model, kinds=("all",), precision=precision)
        device_for_regressor = extractor.device if device is None else resolve_device(device)
        # A parameter held constant (saturation and hue on greyscale data) carries nothing to regress.
        varying = {
            name: [i for i, (low, high) in enumerate(config.parameter_ranges) if high > low]
            for name, config in configs.items()
        }
        cost = regression_cost(
            len(crops),
            probed[kind].shape[1],
            {name: len(indices) for name, indices in varying.items()},
            groups=crops.photo_index if group_by == "photo" else None,
            test_groups=test_ids,
            folds=folds,
            scored_folds=scored_folds,
            regressor=regressor,
            seed=seed,
            device=device_for_regressor,
            shuffled_control=shuffled_control,
        )
        _log_time_estimate(
            extractor, spec, batch_size, len(crops), sum(key not in cache for key in keys.values()), cost
        )
        _extract_missing(extractor, crops, configs, params, keys, cache, spec, batch_size, progress)
        reference = cache.get(keys[None])
        assert reference is not None and kind in reference

        # Every family's regressors (and θ-shuffled controls) of a fold are fitted as one batch.
        results = score_families(
            reference[kind],
            {name: cache.get(keys[name])[kind] for name in configs},
            {name: params[name][:, varying[name]] for name in configs},
            groups=crops.photo_index if group_by == "photo" else None,
            test_groups=test_ids,
            folds=folds,
            scored_folds=scored_folds,
            parameter_names={name: [c.parameter_names[i] for i in varying[name]] for name, c in configs.items()},
            regressor=regressor,
            multioutput=multioutput,
            seed=seed,
            device=device_for_regressor,
            progress=progress,
            shuffled_control=shuffled_control,
        )
        for name, result in results.items():
            result.transformation = configs[name].to_dict()
            logger.info("R² %s = %.4f (train %.4f)", name, result.r2, result.train_r2)

        settings = {
            "num_crops": num_crops,
            "num_images": len(crops.photos),
            "protocol": "held-out photos" if test_ids is not None else f"cross-validation by {group_by}",
            "folds": folds,
            "scored_folds": scored_folds,
            "num_test_images": len(test_ids) if test_ids is not None else None,
            "crop_scale": list(crop_scale),
            "border": border,
            "context_size": list(context_size),
            "input": spec.to_dict(),
            "regressor": regressor.to_dict(),
            "precision": precision,
            "seed": seed,
            "batch_size": batch_size,
            "shuffled_control": shuffled_control if isinstance(shuffled_control, bool) else list(shuffled_control),
        }
        return EquivarianceResult(families=results, feature=kind, multioutput=multioutput, settings=settings)


def _log_time_estimate(
    extractor: FeatureExtractor, spec: InputSpec, batch_size: int, num_crops: int, passes: int, cost: RegressionCost
) -> None:
    """Say how long the run will take, before it starts: the encoder's and the regressors' speed, measured here."""
    parts, seconds = [], cost.seconds
    if passes:
        rate = extractor.images_per_second(spec.image_size, batch_size)
        seconds += num_crops * passes / rate
        parts.append(
            f"encoding {num_crops} crops × {passes} passes at {rate:.0f} images/s: {num_crops * passes / rate:.0f} s"
        )
    parts.append(f"θ regressors: {cost.describe()}")
    threads = torch.get_num_threads()
    total = f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"
    logger.info("estimated time: ~%s on %d thread%s (%s)", total, threads, "s" * (threads > 1), "; ".join(parts))


def _extract_missing(
    extractor: FeatureExtractor,
    crops: CropSet,
    configs: Mapping[str, TransformationConfig],
    params: Mapping[str, torch.Tensor],
    keys: Mapping[str | None, str],
    cache: FeatureCache,
    spec: InputSpec,
    batch_size: int,
    progress: bool,
) -> None:
    """One pass over the crops that encodes I and g_θ(I) for every family whose features are not cached."""
    missing = [name for name, key in keys.items() if key not in cache]
    if not missing:
        return
    chunks: dict[str | None, dict[str, list[torch.Tensor]]] = {name: {} for name in missing}
    description = f"encoding {len(crops)} crops × {len(missing)} ({', '.join(n or 'identity' for n in missing)})"
    batches = tqdm(
        crops.batches(batch_size, background=extractor.device.type != "cpu"),
        total=crops.num_batches(batch_size),
        desc=description,
        unit="batch",
        disable=not progress,
    )
    for index, context in enumerate(batches):
        rows = slice(index * batch_size, index * batch_size + context.shape[0])
        context = context.to(extractor.device)
        crop = center_crop(context, spec.image_size)
        for name in missing:
            images = crop
            if name is not None:
                config = configs[name]
                theta = params[name][rows].to(context.device)
                if config.is_geometric and context.shape[-2:] != crop.shape[-2:]:
                    images, valid = apply_transformation(
                        context, theta, config, view_size=spec.image_size, crop_to_view=True
                    )
                    if bool((valid < 1).any()):  # would let θ leak through fill; the margin is computed to avoid it
                        raise RuntimeError(f"{name}: the context margin does not cover the transformation.")
                else:
                    images, _ = apply_transformation(crop, theta, config)
            for kind, values in extractor(spec.normalize(images)).items():
                chunks[name].setdefault(kind, []).append(values)
    for name in missing:
        cache.put(keys[name], {kind: torch.cat(values) for kind, values in chunks[name].items()})
