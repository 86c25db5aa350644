"""Images from anywhere → a stream of transform-pair examples, plus the collator.

Sources (:mod:`equirecon.imaging.sources`): the embedded photos (offline default), a Hub dataset (``streaming=True``
for ImageNet-sized data), a local image folder, Parquet shards, or a ``datasets`` object.
:func:`build_transform_pair_dataset` turns any of them into
a ``datasets.IterableDataset`` that works with ``Trainer`` (set ``max_steps``), ``DataLoader(num_workers>0)`` and
multi-node training: work is split by shards, so each shard is read by exactly one (rank, worker).

Real-world inputs are normalised by :func:`~equirecon.imaging.decoding.to_rgb_uint8` (grayscale, palette, RGBA, CMYK,
16-bit, tiny images). An image that cannot be decoded is skipped with a warning instead of ending the run, and
named in the next example (``SKIPPED_IMAGES_KEY``), so that the trainer counts every skipped image exactly, whichever
DataLoader worker read it: images are decoded here, not by ``datasets``, so the failure happens where it can be
caught.
"""

from __future__ import annotations

import copy
import hashlib
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import datasets
import torch
from datasets.distributed import split_dataset_by_node

from ..imaging.decoding import DecodeCache
from ..imaging.sources import embedded_photos, find_image_column, image_folder_to_parquet, load_images
from ..imaging.transformations import TransformationConfig, TransformedPair, make_transformed_pair
from .views import TransformPairMaker

__all__ = [
    "TRANSFORM_PAIR_KEYS",
    "batch_transformed_pair",
    "build_transform_pair_dataset",
    "collate_transform_pairs",
    "embedded_photos",
    "find_image_column",
    "image_folder_to_parquet",
    "load_images",
    "SKIPPED_IMAGES_KEY",
]

logger = logging.getLogger(__name__)

#: Keys of a transform-pair example and of the collated batch.
TRANSFORM_PAIR_KEYS: tuple[str, ...] = ("pixel_values", "base_pixel_values", "transform_params")

# ---------------------------------------------------------------------------------------------- the stream


def build_transform_pair_dataset(
    images: datasets.Dataset | datasets.IterableDataset,
    pair_maker: TransformPairMaker,
    *,
    image_column: str | None = None,
    num_shards: int | None = None,
    rank: int = 0,
    world_size: int = 1,
    shuffle_seed: int | None = 0,
    buffer_size: int = 1000,
    repeat: int | None = 1,
    map_batch_size: int = 16,
    decode_cache_bytes: int | None = None,
) -> datasets.IterableDataset:
    """A ``datasets.IterableDataset`` of transform-pair examples ``{pixel_values, base_pixel_values, transform_params}``.

    Args:
        images: a ``Dataset`` (cut into ``num_shards`` shards; default: up to 64, a multiple of ``world_size``) or an
            ``IterableDataset`` (its own shards, e.g. one per Parquet file).
        pair_maker: the per-example CPU work; when splitting here (``world_size > 1``) a copy gets ``rank`` if its
            own ``rank`` is unset, else it resolves its rank where it runs (``torch.distributed``, ``$RANK``).
        rank, world_size: this process's share. Shards are split between nodes when their number is a multiple of
            ``world_size`` (each shard read by one node); otherwise every node reads all and keeps every
            ``world_size``-th example, which is correct but slower. DataLoader workers then split a node's shards.
        shuffle_seed: shard order and a ``buffer_size`` shuffle buffer, reshuffled by ``set_epoch`` (``Trainer``
            calls it); must be the same on every rank. ``None`` keeps the order.
        repeat: passes over the images per epoch; ``None`` repeats forever (give ``Trainer`` ``max_steps``).
        map_batch_size: examples per call of the per-example function (amortises ``datasets`` overhead).
        decode_cache_bytes: decoded images each reader keeps (:class:`~equirecon.imaging.decoding.DecodeCache`)
            so that a repeated image is not decoded again; default: 256 MiB when a map-style ``Dataset`` is
            repeated (``repeat`` not 1), else none (a stream seen once would only fill memory).
    """
    if not (isinstance(world_size, int) and world_size >= 1):
        raise ValueError(f"world_size must be an int >= 1, got {world_size!r}")
    if not (isinstance(rank, int) and 0 <= rank < world_size):
        raise ValueError(f"rank must be an int in [0, world_size={world_size}), got {rank!r}")
    if repeat is not None and not (isinstance(repeat, int) and repeat >= 1):
        raise ValueError(f"repeat must be an int >= 1 or None (forever), got {repeat!r}")
    if decode_cache_bytes is not None and not (isinstance(decode_cache_bytes, int) and decode_cache_bytes >= 0):
        raise ValueError(f"decode_cache_bytes must be an int >= 0 or None, got {decode_cache_bytes!r}")
    if not isinstance(pair_maker, TransformPairMaker):
        raise TypeError(f"pair_maker must be a TransformPairMaker, got {type(pair_maker).__name__}")
    column = find_image_column(images, image_column)

    if isinstance(images, datasets.Dataset):
        if len(images) == 0:
            raise ValueError("images is empty")
        if num_shards is None:
            num_shards = _default_num_shards(len(images), world_size)
        if not (isinstance(num_shards, int) and 1 <= num_shards <= len(images)):
            raise ValueError(f"num_shards must be an int in [1, len(images)={len(images)}], got {num_shards!r}")
        stream = images.select_columns([column]).to_iterable_dataset(num_shards=num_shards)
    elif isinstance(images, datasets.IterableDataset):
        if num_shards is not None and num_shards != images.num_shards:
            raise ValueError(
                f"num_shards={num_shards} cannot re-shard an IterableDataset (it has {images.num_shards}); write "
                "Parquet shards (image_folder_to_parquet) or pass a map-style Dataset"
            )
        stream = images.select_columns([column])
    else:
        raise TypeError(f"images must be a datasets.Dataset or IterableDataset, got {type(images).__name__}")

    if shuffle_seed is not None:
        stream = stream.shuffle(seed=shuffle_seed, buffer_size=buffer_size)
    if world_size > 1:
        if stream.num_shards % world_size:
            logger.warning(
                "%d shards do not divide among %d processes: every process reads all examples and keeps 1 in %d. "
                "Use a multiple of world_size shards to read each shard once.",
                stream.num_shards,
                world_size,
                world_size,
            )
        stream = split_dataset_by_node(stream, rank=rank, world_size=world_size)
    if repeat != 1:
        stream = stream.repeat(repeat)
    feature = stream.features[column] if stream.features is not None else None
    if isinstance(feature, datasets.Image) and feature.decode:
        stream = stream.cast_column(column, datasets.Image(decode=False))  # decode ourselves, to skip bad files

    if pair_maker.rank is None and world_size > 1:
        # Split here: this process is `rank`. Otherwise (e.g. Trainer/accelerate shards the stream later) the pair
        # maker resolves its rank where it runs, so no two processes share an augmentation stream.
        pair_maker = copy.deepcopy(pair_maker)
        pair_maker.rank = rank
    if decode_cache_bytes is None:
        decode_cache_bytes = _DEFAULT_DECODE_CACHE_BYTES if isinstance(images, datasets.Dataset) and repeat != 1 else 0
    return stream.map(
        _TransformPairFunction(pair_maker, column, DecodeCache(decode_cache_bytes)),
        batched=True,
        batch_size=map_batch_size,
        remove_columns=[column],
    )


_DEFAULT_DECODE_CACHE_BYTES = 256 * 2**20


def _default_num_shards(num_examples: int, world_size: int) -> int:
    shards = min(num_examples, 64)
    if shards >= world_size:
        shards -= shards % world_size
    return max(shards, 1)


#: Key of the examples' and batches' list of the undecodable images skipped since the previous example: they travel
#: with the data from whichever DataLoader worker or process read them, so the trainer counts them exactly.
SKIPPED_IMAGES_KEY = "skipped_images"
# Give up when this many images in a row failed before any succeeded: the source, not one file, is broken.
_MAX_FAILURES_BEFORE_FIRST_SUCCESS = 100


def describe_image(value: Any) -> str:
    """A name for an image that failed to decode: its path, else a digest of its bytes."""
    if isinstance(value, dict):
        if value.get("path"):
            return str(value["path"])
        value = value.get("bytes")
    if isinstance(value, bytes | bytearray | memoryview):
        return f"<{len(value)} bytes, sha1 {hashlib.sha1(value).hexdigest()[:12]}>"
    return f"<{type(value).__name__}>"


class _TransformPairFunction:
    """The batched ``map`` function: decode each image (skipping bad ones) and make its transform pair. Every
    example carries, under `SKIPPED_IMAGES_KEY`, the images skipped since the one before it, and the last example of
    a chunk those skipped after it (a chunk of images none of which decodes hands its names to the next chunk; at
    the end of a finite stream they are only logged)."""

    def __init__(self, pair_maker: TransformPairMaker, column: str, decode: DecodeCache) -> None:
        self.pair_maker = pair_maker
        self.column = column
        self.decode = decode
        self.num_decoded = 0
        self.num_failed = 0
        self.pending: list[str] = []
        self.logged: set[str] = set()

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        out: dict[str, list] = {key: [] for key in (*TRANSFORM_PAIR_KEYS, SKIPPED_IMAGES_KEY)}
        for value in batch[self.column]:
            try:
                image = self.decode(value, min_size=self.pair_maker.min_image_size)
            except Exception as error:  # noqa: BLE001 - one bad file out of millions must not end the run
                self._skip(value, error)
                continue
            self.num_decoded += 1
            example = self.pair_maker(image)
            for key, value in example.items():  # the pair's keys, and `bool_masked_pos` when masking
                out.setdefault(key, []).append(value)
            out[SKIPPED_IMAGES_KEY].append(self.pending)
            self.pending = []
        if self.pending and out[SKIPPED_IMAGES_KEY]:  # the chunk's last example also names those skipped after it
            out[SKIPPED_IMAGES_KEY][-1] = out[SKIPPED_IMAGES_KEY][-1] + self.pending
            self.pending = []
        return out

    def _skip(self, value: Any, error: Exception) -> None:
        self.num_failed += 1
        name = describe_image(value)
        self.pending.append(name)
        if name not in self.logged:  # once per image and reader; the trainer logs the run's exact count
            self.logged.add(name)
            logger.warning("Skipping an undecodable image: %s (%s: %s).", name, type(error).__name__, error)
        if self.num_decoded == 0 and self.num_failed >= _MAX_FAILURES_BEFORE_FIRST_SUCCESS:
            raise RuntimeError(
                f"the first {self.num_failed} images of column {self.column!r} all failed to decode "
                f"(last: {type(error).__name__}: {error}); is it the right column and format?"
            ) from error


def collate_transform_pairs(examples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Stack transform-pair examples into a batch (``pixel_values`` (B,3,S,S), ``base_pixel_values`` (B,3,S,S),
    ``transform_params`` (B,P)); other keys (``bool_masked_pos`` (B,2,N)) are stacked too when every example has
    them. The undecodable images skipped before these examples, if any, come as a list of names under
    `SKIPPED_IMAGES_KEY`."""
    if not examples:
        raise ValueError("cannot collate an empty list of examples")
    missing = [key for key in TRANSFORM_PAIR_KEYS if key not in examples[0]]
    if missing:
        raise ValueError(f"examples lack {missing}; got keys {sorted(examples[0])}")
    keys = [key for key in examples[0] if key != SKIPPED_IMAGES_KEY and all(key in example for example in examples)]
    batch: dict[str, Any] = {key: torch.stack([torch.as_tensor(example[key]) for example in examples]) for key in keys}
    skipped = [name for example in examples for name in example.get(SKIPPED_IMAGES_KEY) or ()]
    if skipped:  # only batches that follow a skipped image carry the list
        batch[SKIPPED_IMAGES_KEY] = skipped
    return batch


def batch_transformed_pair(
    batch: Mapping[str, torch.Tensor],
    transformation: TransformationConfig,
    num_intermediates: int,
    image_mean: Sequence[float] | None = None,
    image_std: Sequence[float] | None = None,
) -> TransformedPair:
    """v2 and the K targets with their masks for a collated batch, made on its device from its u and θ: the
    trainer's and the reconstruction picture's. u may carry a context margin around the view, so the pair is cut to
    the size of ``pixel_values``."""
    return make_transformed_pair(
        batch["base_pixel_values"],
        batch["transform_params"],
        transformation,
        num_intermediates,
        image_mean=image_mean,
        image_std=image_std,
        output_size=batch["pixel_values"].shape[-1],
    )
