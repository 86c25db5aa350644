"""Images from anywhere → a stream of transform-pair examples, plus the collator.

Sources: the embedded photos (offline default), a Hub dataset (``streaming=True`` for ImageNet-sized data), a local
image folder, Parquet shards, or a ``datasets`` object. :func:`build_transform_pair_dataset` turns any of them into
a ``datasets.IterableDataset`` that works with ``Trainer`` (set ``max_steps``), ``DataLoader(num_workers>0)`` and
multi-node training: work is split by shards, so each shard is read by exactly one (rank, worker).

Real-world inputs are normalised by :func:`~equirecon.training.views.to_rgb_uint8` (grayscale, palette, RGBA, CMYK,
16-bit, tiny images). An image that cannot be decoded is skipped with a counted warning instead of ending the run:
images are decoded here, not by ``datasets``, so the failure happens where it can be caught.
"""

from __future__ import annotations

import copy
import functools
import glob
import importlib.resources
import logging
import os
import pathlib
from collections.abc import Sequence
from typing import Any

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from datasets.distributed import split_dataset_by_node

from .views import TransformPairMaker, to_rgb_uint8

__all__ = [
    "EMBEDDED_PHOTOS",
    "EMBEDDED_VALIDATION_PHOTOS",
    "IMAGE_EXTENSIONS",
    "TRANSFORM_PAIR_KEYS",
    "build_transform_pair_dataset",
    "collate_transform_pairs",
    "embedded_photos",
    "find_image_column",
    "image_folder_to_parquet",
    "load_images",
    "num_skipped_images",
]

logger = logging.getLogger(__name__)

#: Keys of a transform-pair example and of the collated batch.
TRANSFORM_PAIR_KEYS: tuple[str, ...] = ("pixel_values", "base_pixel_values", "transform_params")

#: File suffixes picked up by :func:`image_folder_to_parquet`.
IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")

# Column names tried, in order, when a dataset has no ``datasets.Image`` column (WebDataset-style keys included).
_IMAGE_COLUMN_NAMES: tuple[str, ...] = ("image", "img", "jpg", "jpeg", "png", "webp", "photo", "picture")

#: Natural photos bundled (no download) with scikit-image and scikit-learn: name → (package, file).
#: scikit-image's ``cat`` is ``chelsea`` and ``stereo_motorcycle`` is the left/right pair, listed once each.
EMBEDDED_PHOTOS: dict[str, tuple[str, str]] = {
    "astronaut": ("skimage.data", "astronaut.png"),
    "brick": ("skimage.data", "brick.png"),
    "camera": ("skimage.data", "camera.png"),
    "chelsea": ("skimage.data", "chelsea.png"),
    "clock": ("skimage.data", "clock_motion.png"),
    "coffee": ("skimage.data", "coffee.png"),
    "coins": ("skimage.data", "coins.png"),
    "grass": ("skimage.data", "grass.png"),
    "gravel": ("skimage.data", "gravel.png"),
    "hubble_deep_field": ("skimage.data", "hubble_deep_field.jpg"),
    "immunohistochemistry": ("skimage.data", "ihc.png"),
    "moon": ("skimage.data", "moon.png"),
    "motorcycle_left": ("skimage.data", "motorcycle_left.png"),
    "motorcycle_right": ("skimage.data", "motorcycle_right.png"),
    "retina": ("skimage.data", "retina.jpg"),
    "rocket": ("skimage.data", "rocket.jpg"),
    "china": ("sklearn.datasets", "images/china.jpg"),
    "flower": ("sklearn.datasets", "images/flower.jpg"),
}
#: Held out by photo (never by crop). The stereo pair shows one scene, so both halves stay in "train".
EMBEDDED_VALIDATION_PHOTOS: tuple[str, ...] = ("camera", "china", "coffee", "gravel")
_EMBEDDED_SPLITS = ("train", "validation")


# --------------------------------------------------------------------------------------------------- sources


def embedded_photos(split: str = "train") -> datasets.Dataset:
    """The photos that ship with scikit-image and scikit-learn as a ``datasets.Dataset``; works offline.

    Columns: ``image`` (``datasets.Image``, the original RGB or grayscale file) and ``name``. ``"validation"``
    holds :data:`EMBEDDED_VALIDATION_PHOTOS`, ``"train"`` the other 14. Random crops make each photo many
    examples; use ``repeat=None`` in :func:`build_transform_pair_dataset` for an endless stream.
    """
    if split not in _EMBEDDED_SPLITS:
        raise ValueError(f"split must be one of {_EMBEDDED_SPLITS}, got {split!r}")
    names = [n for n in EMBEDDED_PHOTOS if (n in EMBEDDED_VALIDATION_PHOTOS) == (split == "validation")]
    files = _embedded_photo_bytes()
    return datasets.Dataset.from_dict(
        {
            "image": [{"bytes": files[n], "path": EMBEDDED_PHOTOS[n][1].rsplit("/", 1)[-1]} for n in names],
            "name": names,
        },
        features=datasets.Features({"image": datasets.Image(), "name": datasets.Value("string")}),
        split=datasets.Split(split),
    )


@functools.cache
def _embedded_photo_bytes() -> dict[str, bytes]:
    """The encoded files, read once per process (a fresh Dataset is built per call: set_format mutates)."""
    out = {}
    for name, (package, relative) in EMBEDDED_PHOTOS.items():
        path = importlib.resources.files(package).joinpath(relative)
        if not path.is_file():
            raise FileNotFoundError(
                f"embedded photo {name!r} is not bundled with this install of {package.split('.')[0]} ({path}); "
                "it would need a download, which the embedded dataset never does"
            )
        out[name] = path.read_bytes()
    return out


def load_images(
    source: str | os.PathLike | datasets.Dataset | datasets.IterableDataset | datasets.DatasetDict,
    *,
    split: str = "train",
    streaming: bool = False,
    image_column: str | None = None,
    **load_dataset_kwargs: Any,
) -> datasets.Dataset | datasets.IterableDataset:
    """Resolve ``source`` to one split of images.

    ``source`` is ``"embedded"`` (:func:`embedded_photos`), a local image folder (``imagefolder``, labels dropped),
    a folder, file or glob of Parquet shards, a Hub dataset name (extra keyword arguments such as ``name`` or
    ``revision`` go to ``datasets.load_dataset``), or a ``datasets`` object (a dict is indexed by ``split``).
    ``image_column`` is checked when given. Streaming a single image folder gives one shard; convert it with
    :func:`image_folder_to_parquet` for parallel workers and nodes.
    """
    if isinstance(source, datasets.DatasetDict | datasets.IterableDatasetDict):
        if split not in source:
            raise ValueError(f"split {split!r} not found; available splits: {list(source)}")
        dataset = source[split]
    elif isinstance(source, datasets.Dataset | datasets.IterableDataset):
        dataset = source
    elif not isinstance(source, str | os.PathLike):
        raise TypeError(f"source must be a name, a path or a datasets object, got {type(source).__name__}")
    elif str(source) == "embedded":
        dataset = embedded_photos(split)
        if streaming:
            dataset = dataset.to_iterable_dataset(num_shards=len(dataset))
    else:
        dataset = _load_from_path_or_hub(str(source), split, streaming, load_dataset_kwargs)
    if image_column is not None:
        find_image_column(dataset, image_column)
    return dataset


def _load_from_path_or_hub(
    source: str, split: str, streaming: bool, kwargs: dict[str, Any]
) -> datasets.Dataset | datasets.IterableDataset:
    path = pathlib.Path(source).expanduser()
    if path.is_dir():
        shards = sorted(path.rglob("*.parquet"))
        if shards:
            return datasets.load_dataset(
                "parquet", data_files={split: [str(s) for s in shards]}, split=split, streaming=streaming, **kwargs
            )
        return datasets.load_dataset(
            "imagefolder", data_dir=str(path), split=split, streaming=streaming, drop_labels=True, **kwargs
        )
    if source.endswith(".parquet") or glob.has_magic(source):
        files = sorted(glob.glob(os.path.expanduser(source), recursive=True))
        if not files:
            raise FileNotFoundError(f"no files match {source!r}")
        return datasets.load_dataset("parquet", data_files={split: files}, split=split, streaming=streaming, **kwargs)
    if source.startswith(("/", "./", "../", "~")) or path.exists():
        raise FileNotFoundError(f"{source!r} is neither an image folder, a Parquet file nor a folder of them")
    return datasets.load_dataset(source, split=split, streaming=streaming, **kwargs)


def find_image_column(dataset: datasets.Dataset | datasets.IterableDataset, image_column: str | None = None) -> str:
    """The column holding the images: ``image_column`` if given, else the first ``datasets.Image`` column, else the
    first of the usual names (``image``, ``img``, ``jpg``, ``png``, ...). Raises ``ValueError`` naming the columns."""
    features = dataset.features
    if features is not None:
        columns = list(features)
    else:  # an IterableDataset whose schema is only known once read: look at the first example
        first = next(iter(dataset.take(1)), None)
        columns = list(first) if first is not None else []
    if image_column is not None:
        if image_column not in columns:
            raise ValueError(f"image_column={image_column!r} is not a column of this dataset; found {columns}")
        return image_column
    if features is not None:
        for name, feature in features.items():
            if isinstance(feature, datasets.Image):
                return name
    for name in _IMAGE_COLUMN_NAMES:
        if name in columns:
            return name
    raise ValueError(
        f"no image column found: the dataset has columns {columns} and none is a datasets.Image feature or one of "
        f"{list(_IMAGE_COLUMN_NAMES)}; pass image_column="
    )


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
    """
    if not (isinstance(world_size, int) and world_size >= 1):
        raise ValueError(f"world_size must be an int >= 1, got {world_size!r}")
    if not (isinstance(rank, int) and 0 <= rank < world_size):
        raise ValueError(f"rank must be an int in [0, world_size={world_size}), got {rank!r}")
    if repeat is not None and not (isinstance(repeat, int) and repeat >= 1):
        raise ValueError(f"repeat must be an int >= 1 or None (forever), got {repeat!r}")
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
    return stream.map(
        _TransformPairFunction(pair_maker, column), batched=True, batch_size=map_batch_size, remove_columns=[column]
    )


def _default_num_shards(num_examples: int, world_size: int) -> int:
    shards = min(num_examples, 64)
    if shards >= world_size:
        shards -= shards % world_size
    return max(shards, 1)


# Images skipped by this process (each DataLoader worker counts its own).
_num_skipped = 0
# Give up when this many images in a row failed before any succeeded: the source, not one file, is broken.
_MAX_FAILURES_BEFORE_FIRST_SUCCESS = 100


def num_skipped_images() -> int:
    """How many undecodable images this process has skipped (DataLoader workers count their own)."""
    return _num_skipped


class _TransformPairFunction:
    """The batched ``map`` function: decode each image (skipping bad ones) and make its transform pair."""

    def __init__(self, pair_maker: TransformPairMaker, column: str) -> None:
        self.pair_maker = pair_maker
        self.column = column
        self.num_decoded = 0
        self.num_failed = 0

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        out: dict[str, list] = {key: [] for key in TRANSFORM_PAIR_KEYS}
        for value in batch[self.column]:
            try:
                image = to_rgb_uint8(value, min_size=self.pair_maker.min_image_size)
            except Exception as error:  # noqa: BLE001 - one bad file out of millions must not end the run
                self._skip(value, error)
                continue
            self.num_decoded += 1
            example = self.pair_maker(image)
            for key in TRANSFORM_PAIR_KEYS:
                out[key].append(example[key])
        return out

    def _skip(self, value: Any, error: Exception) -> None:
        global _num_skipped
        _num_skipped += 1
        self.num_failed += 1
        where = value.get("path") if isinstance(value, dict) else None
        if _num_skipped <= 10 or _num_skipped % 1000 == 0:
            logger.warning(
                "Skipped an undecodable image%s: %s: %s (%d skipped so far in this process)",
                f" ({where})" if where else "",
                type(error).__name__,
                error,
                _num_skipped,
            )
        if self.num_decoded == 0 and self.num_failed >= _MAX_FAILURES_BEFORE_FIRST_SUCCESS:
            raise RuntimeError(
                f"the first {self.num_failed} images of column {self.column!r} all failed to decode "
                f"(last: {type(error).__name__}: {error}); is it the right column and format?"
            ) from error


def collate_transform_pairs(examples: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """Stack transform-pair examples into a batch (``pixel_values`` (B,3,S,S), ``base_pixel_values`` (B,3,S,S),
    ``transform_params`` (B,P)); other keys are stacked too when every example has them."""
    if not examples:
        raise ValueError("cannot collate an empty list of examples")
    missing = [key for key in TRANSFORM_PAIR_KEYS if key not in examples[0]]
    if missing:
        raise ValueError(f"examples lack {missing}; got keys {sorted(examples[0])}")
    keys = [key for key in examples[0] if all(key in example for example in examples)]
    return {key: torch.stack([torch.as_tensor(example[key]) for example in examples]) for key in keys}


# ------------------------------------------------------------------------------------------------ conversion


def image_folder_to_parquet(
    folder: str | os.PathLike,
    output_dir: str | os.PathLike,
    *,
    num_shards: int = 8,
    rows_per_group: int = 100,
    overwrite: bool = False,
) -> list[pathlib.Path]:
    """Pack the images under ``folder`` (recursively) into ``num_shards`` Parquet files for parallel streaming.

    Files are stored as encoded bytes (no re-encoding, nothing decoded) in an ``image`` column typed
    ``datasets.Image`` with the path relative to ``folder``; shards are assigned round-robin over the sorted
    paths, so class sub-folders spread over all shards. Returns the shard paths
    (``train-00000-of-00008.parquet``, ...), which :func:`load_images` reads back, streaming or not.
    """
    folder, output_dir = pathlib.Path(folder), pathlib.Path(output_dir)
    if not folder.is_dir():
        raise NotADirectoryError(f"folder {str(folder)!r} is not a directory")
    if not (isinstance(num_shards, int) and num_shards >= 1):
        raise ValueError(f"num_shards must be an int >= 1, got {num_shards!r}")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
    if not files:
        raise ValueError(f"no image files ({', '.join(IMAGE_EXTENSIONS)}) under {str(folder)!r}")
    output_dir.mkdir(parents=True, exist_ok=True)
    existing = sorted(output_dir.glob("*.parquet"))
    if existing and not overwrite:
        raise FileExistsError(
            f"{str(output_dir)!r} already holds Parquet files ({existing[0].name}, ...); pass overwrite=True"
        )
    for path in existing:
        path.unlink()

    num_shards = min(num_shards, len(files))
    schema = datasets.Features({"image": datasets.Image()}).arrow_schema
    shards = []
    for index in range(num_shards):
        shard = output_dir / f"train-{index:05d}-of-{num_shards:05d}.parquet"
        partial = shard.with_suffix(".parquet.partial")
        with pq.ParquetWriter(partial, schema) as writer:
            members = files[index::num_shards]
            for start in range(0, len(members), rows_per_group):
                rows = [
                    {"bytes": path.read_bytes(), "path": path.relative_to(folder).as_posix()}
                    for path in members[start : start + rows_per_group]
                ]
                writer.write_table(pa.table({"image": rows}, schema=schema))
        partial.replace(shard)
        shards.append(shard)
    return shards
