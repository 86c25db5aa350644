"""Where images come from: the embedded photos (offline default), a local image folder, Parquet shards, a Hub
dataset or a ``datasets`` object, resolved to one split (:func:`load_images`); the image column found
(:func:`find_image_column`); and a folder packed into Parquet shards for parallel streaming
(:func:`image_folder_to_parquet`).
"""

from __future__ import annotations

import functools
import glob
import importlib.resources
import os
import pathlib
from typing import Any

import datasets
import pyarrow as pa
import pyarrow.parquet as pq

from .fashion_mnist import FASHION_MNIST, fashion_mnist

__all__ = [
    "EMBEDDED_PHOTOS",
    "EMBEDDED_VALIDATION_PHOTOS",
    "IMAGE_EXTENSIONS",
    "embedded_photos",
    "find_image_column",
    "image_folder_to_parquet",
    "load_images",
    "undecoded_images",
]

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
_EMBEDDED_SPLITS = ("train", "validation", "all")


# --------------------------------------------------------------------------------------------------- sources


def embedded_photos(split: str = "train") -> datasets.Dataset:
    """The photos that ship with scikit-image and scikit-learn as a ``datasets.Dataset``; works offline.

    Columns: ``image`` (``datasets.Image``, the original RGB or grayscale file) and ``name``. ``"validation"``
    holds :data:`EMBEDDED_VALIDATION_PHOTOS`, ``"train"`` the other 14, ``"all"`` every one (the equivariance
    benchmark cross-validates over them). Random crops make each photo many
    examples; use ``repeat=None`` in :func:`build_transform_pair_dataset` for an endless stream.
    """
    if split not in _EMBEDDED_SPLITS:
        raise ValueError(f"split must be one of {_EMBEDDED_SPLITS}, got {split!r}")
    names = [
        n for n in EMBEDDED_PHOTOS if split == "all" or (n in EMBEDDED_VALIDATION_PHOTOS) == (split == "validation")
    ]
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

    ``source`` is ``"embedded"`` (:func:`embedded_photos`), ``"fashion_mnist"``
    (:func:`~equirecon.imaging.fashion_mnist.fashion_mnist`, read from a system package), a local image folder (``imagefolder``, labels dropped),
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
    elif str(source) == FASHION_MNIST:
        dataset = fashion_mnist(split)
        if streaming:
            dataset = dataset.to_iterable_dataset(num_shards=16)
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
    if not path.exists() and source.startswith(("/", "./", "../", "~")):
        raise FileNotFoundError(f"{source!r} does not exist")
    if path.exists():
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


def undecoded_images(dataset: Any, column: str) -> list[Any]:
    """The items of ``column`` as stored (bytes/path dicts for a ``datasets.Image`` column), so that a corrupt file
    is found by :func:`~equirecon.imaging.decoding.decode_images` instead of ending the read; a plain sequence as
    it is."""
    if not isinstance(dataset, datasets.Dataset):
        return list(dataset)
    feature = dataset.features.get(column)
    if isinstance(feature, datasets.Image) and feature.decode:
        dataset = dataset.cast_column(column, datasets.Image(decode=False))
    return dataset[column]


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
