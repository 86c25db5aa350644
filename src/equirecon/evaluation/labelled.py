"""Labelled images, for the probes and for fine-tuning alike: offline built-ins or any user dataset.

:func:`load_labelled_dataset` is the one loader; it returns a ``datasets.DatasetDict`` with a ``train`` and a
``validation`` split. Two labelled sets ship with the project's dependencies and need no download:

* ``"digits"``: scikit-learn's handwritten digits, 1797 greyscale 8×8 images, 10 classes;
* ``"lfw_subset"``: scikit-image's 200 greyscale 25×25 crops, faces vs non-faces (2 classes).

They are tiny and easy, so they check that a pipeline works and rank features coarsely; they are no substitute
for ImageNet-scale probes. ``"fashion_mnist"`` (70,000 labelled 28² photos, ``train`` and ``test``) is read from a
system package (:mod:`equirecon.imaging.fashion_mnist`). Any other source works with a label column: a dataset
saved with ``save_to_disk``, an image folder with one sub-folder per class, Parquet, a Hub name, or a ``datasets``
object.

The split rule, the same everywhere: a built-in set has a fixed stratified 80/20 train/validation split (seed 0), so
every probe and fine-tuning run sees the same held-out images. Another source uses the evaluation split named, else
the first of ``validation``/``valid``/``val``/``test`` it has, else holds out ``validation_fraction`` of the
training split (stratified by the label when it is a ``ClassLabel``, seeded).
"""

from __future__ import annotations

import functools
import logging
import os
import pathlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import datasets
import numpy as np
from PIL import Image

from ..imaging.decoding import decode_images
from ..imaging.fashion_mnist import FASHION_MNIST, fashion_mnist_splits
from ..imaging.sources import find_image_column, load_images, undecoded_images

logger = logging.getLogger(__name__)

__all__ = [
    "BUILTIN_LABELLED_SETS",
    "EVAL_SPLIT_NAMES",
    "LabelledImages",
    "builtin_labelled_arrays",
    "is_saved_dataset",
    "load_labelled_splits",
    "load_labelled_dataset",
    "load_labelled_images",
    "split_labelled",
]

BUILTIN_LABELLED_SETS: dict[str, str] = {
    "digits": "scikit-learn's bundled handwritten digits (1797 greyscale 8×8 images, 10 classes)",
    "lfw_subset": "scikit-image's bundled LFW subset (200 greyscale 25×25 crops, face / non-face)",
}
#: The built-in sets' held-out share (stratified, seed 0).
BUILTIN_VALIDATION_FRACTION = 0.2
#: Split names tried, in order, for evaluation when none is named.
EVAL_SPLIT_NAMES: tuple[str, ...] = ("validation", "valid", "val", "test")


@dataclass
class LabelledImages:
    """Train and test images (PIL images or uint8 arrays) with integer labels, and where they came from."""

    train_images: Sequence[Any]
    train_labels: np.ndarray
    test_images: Sequence[Any]
    test_labels: np.ndarray
    class_names: list[str]
    description: str
    #: Images left out because they could not be decoded (train and test together).
    skipped: int = 0

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def _builtin_name(source: Any) -> str | None:
    """``source`` if it names a built-in set, else None (``source`` may be a path or a ``datasets`` object)."""
    return source if isinstance(source, str) and source in BUILTIN_LABELLED_SETS else None


def builtin_labelled_arrays(name: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """An offline labelled set as uint8 greyscale images (N, H, W), int64 labels and class names: ``"digits"``
    (scikit-learn, 0..16 grey levels scaled to 0..255) or ``"lfw_subset"`` (scikit-image, faces are label 1)."""
    if name not in BUILTIN_LABELLED_SETS:
        raise ValueError(f"unknown built-in labelled set {name!r}; choose one of {sorted(BUILTIN_LABELLED_SETS)}")
    if name == "digits":
        from sklearn.datasets import load_digits

        digits = load_digits()
        images = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)
        return images, digits.target.astype(np.int64), [str(i) for i in range(10)]
    from skimage.data import lfw_subset

    images = np.rint(lfw_subset() * 255.0).astype(np.uint8)
    labels = np.concatenate([np.ones(100, np.int64), np.zeros(100, np.int64)])  # first 100 are faces
    return images, labels, ["non-face", "face"]


@functools.cache
def _builtin_dataset(name: str) -> datasets.DatasetDict:
    images, labels, names = builtin_labelled_arrays(name)
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=list(names))})
    dataset = datasets.Dataset.from_dict(
        {"image": [Image.fromarray(image, mode="L") for image in images], "label": labels.tolist()}, features=features
    )
    parts = dataset.train_test_split(test_size=BUILTIN_VALIDATION_FRACTION, seed=0, stratify_by_column="label")
    return datasets.DatasetDict({"train": parts["train"], "validation": parts["test"]})


def is_saved_dataset(path: pathlib.Path) -> bool:
    return (path / "dataset_dict.json").is_file() or (path / "state.json").is_file()


def load_labelled_splits(source: Any, *, config_name: str | None = None) -> datasets.DatasetDict:
    """Every split of a labelled ``source`` (no splitting here): a built-in name, a ``datasets`` object, a folder
    saved with ``save_to_disk``, an image folder (class sub-folders become the ``label`` column), Parquet, or a Hub
    dataset. A single ``Dataset`` becomes the ``train`` split."""
    builtin = _builtin_name(source)
    if builtin is not None:
        return datasets.DatasetDict(dict(_builtin_dataset(builtin)))
    if source == FASHION_MNIST:
        return fashion_mnist_splits()
    if isinstance(source, datasets.DatasetDict):
        return source
    if isinstance(source, datasets.Dataset):
        return datasets.DatasetDict({"train": source})
    if not isinstance(source, str | os.PathLike):
        raise TypeError(f"source must be a name, a path or a datasets object, got {type(source).__name__}")
    path = pathlib.Path(os.path.expanduser(str(source)))
    kwargs: dict[str, Any] = {"name": config_name} if config_name else {}
    if path.is_dir() and is_saved_dataset(path):
        loaded = datasets.load_from_disk(str(path))
    elif path.is_dir() and not any(path.rglob("*.parquet")):
        # An image folder: keep the class sub-folders as labels (load_images drops them, as pretraining needs).
        loaded = datasets.load_dataset("imagefolder", data_dir=str(path))
    elif path.is_dir() or str(source).endswith(".parquet"):
        loaded = datasets.DatasetDict({"train": load_images(source, split="train")})
    else:
        if path.suffix and path.exists():
            raise ValueError(f"{source} is a file; give a folder, a dataset saved with save_to_disk or a Hub name")
        try:
            loaded = datasets.load_dataset(str(source), **kwargs)
        except (OSError, datasets.exceptions.DatasetNotFoundError) as error:  # OSError: offline, no such file
            first = str(error).splitlines()[0] if str(error) else type(error).__name__
            raise ValueError(f"cannot load {source!r} (not a local folder, and from the Hub: {first})") from error
    if not isinstance(loaded, datasets.DatasetDict):
        loaded = datasets.DatasetDict({"train": loaded})
    return loaded


def split_labelled(
    splits: datasets.DatasetDict | dict[str, datasets.Dataset],
    *,
    train_split: str = "train",
    eval_split: str | None = None,
    validation_fraction: float = 0.2,
    label_column: str | None = "label",
    seed: int = 0,
) -> tuple[datasets.DatasetDict, str]:
    """The split rule (module docstring): ``train`` and ``validation`` from ``splits``, and where the validation
    examples come from (a split name, or e.g. ``"20% of train"``)."""
    if train_split not in splits:
        raise ValueError(f"--train_split {train_split!r} not found; the dataset has splits {sorted(splits)}")
    if eval_split is not None and eval_split not in splits:
        raise ValueError(f"--eval_split {eval_split!r} not found; the dataset has splits {sorted(splits)}")
    if eval_split is None:
        eval_split = next((s for s in EVAL_SPLIT_NAMES if s in splits and s != train_split), None)
    train = splits[train_split]
    if eval_split is not None:
        return datasets.DatasetDict({"train": train, "validation": splits[eval_split]}), eval_split
    if not 0 < validation_fraction < 1:
        raise ValueError(f"the dataset has no evaluation split and the held-out fraction is {validation_fraction}")
    feature = train.features.get(label_column) if label_column is not None else None
    stratify = label_column if isinstance(feature, datasets.ClassLabel) else None
    parts = train.train_test_split(test_size=validation_fraction, seed=seed, stratify_by_column=stratify)
    held_out = f"{validation_fraction:.0%} of {train_split}"
    return datasets.DatasetDict({"train": parts["train"], "validation": parts["test"]}), held_out


def load_labelled_dataset(
    source: Any = "digits",
    *,
    train_split: str = "train",
    eval_split: str | None = None,
    validation_fraction: float = 0.2,
    label_column: str | None = "label",
    config_name: str | None = None,
    seed: int = 0,
) -> datasets.DatasetDict:
    """Labelled ``train`` and ``validation`` splits of ``source`` by the split rule of this module."""
    dataset, _, _ = _load_and_split(
        source, train_split, eval_split, validation_fraction, label_column, config_name, seed
    )
    return dataset


def _load_and_split(
    source: Any,
    train_split: str,
    eval_split: str | None,
    validation_fraction: float,
    label_column: str | None,
    config_name: str | None,
    seed: int,
) -> tuple[datasets.DatasetDict, str, bool]:
    """:func:`load_labelled_splits` then :func:`split_labelled`: ``train`` and ``validation``, where the validation
    examples come from, and whether that is a split of ``source`` (rather than held out of the training split)."""
    splits = load_labelled_splits(source, config_name=config_name)
    dataset, where = split_labelled(
        splits,
        train_split=train_split,
        eval_split=eval_split,
        validation_fraction=validation_fraction,
        label_column=label_column,
        seed=seed,
    )
    return dataset, where, where in splits


def _subsample(indices: np.ndarray, max_images: int | None, seed: int) -> np.ndarray:
    if max_images is None or len(indices) <= max_images:
        return indices
    return np.sort(np.random.default_rng([seed, 4]).choice(indices, size=max_images, replace=False))


def _labels_of(dataset: datasets.Dataset, label_column: str, names: list[str] | None) -> tuple[np.ndarray, list[str]]:
    if label_column not in dataset.column_names:
        raise ValueError(
            f"no label column {label_column!r} in the dataset (columns: {dataset.column_names}); pass --label_column."
        )
    feature = dataset.features[label_column]
    values = dataset[label_column]
    if isinstance(feature, datasets.ClassLabel):
        return np.asarray(values, dtype=np.int64), list(feature.names)
    if names is None:  # plain values (ints or strings): classes in sorted order
        distinct = set(values)
        numeric = all(isinstance(v, int | np.integer) for v in distinct)
        names = [str(v) for v in sorted(distinct, key=int if numeric else str)]
    index = {name: i for i, name in enumerate(names)}
    unknown = sorted({str(v) for v in values} - set(index))
    if unknown:
        raise ValueError(f"labels {unknown[:5]} of the test split do not occur in the training split.")
    return np.asarray([index[str(v)] for v in values], dtype=np.int64), names


def load_labelled_images(
    source: Any = "digits",
    *,
    split: str = "train",
    test_split: str | None = None,
    image_column: str | None = None,
    label_column: str = "label",
    test_fraction: float = 0.2,
    max_images: int | None = None,
    seed: int = 0,
) -> LabelledImages:
    """Train/test images and labels for the probes, from :func:`load_labelled_dataset`.

    Args:
        source: ``"digits"`` or ``"lfw_subset"`` (offline built-ins), or any labelled source (module docstring).
        split, test_split: the splits to train and test on; without ``test_split`` the split rule picks one or
            holds out ``test_fraction`` of ``split``.
        image_column, label_column: the columns holding images and labels (image column found automatically).
        max_images: cap on the train and on the test images (seeded random subset), to bound encoding time.
        seed: seeds the held-out split of a source without one, and the subsets.
    """
    builtin = _builtin_name(source)
    dataset, held_out, named = _load_and_split(source, split, test_split, test_fraction, label_column, None, seed)
    train_set, test_set = dataset["train"], dataset["validation"]
    for name, part in (("train", train_set), ("test", test_set)):
        if not isinstance(part, datasets.Dataset):
            raise ValueError(f"the probes need a map-style {name} split; load it without streaming.")
    column = find_image_column(train_set, image_column)
    train_labels, names = _labels_of(train_set, label_column, None)
    test_labels, _ = _labels_of(test_set, label_column, names)
    train_idx = _subsample(np.arange(len(train_set)), max_images, seed)
    test_idx = _subsample(np.arange(len(test_set)), max_images, seed + 1)
    if builtin is not None:
        description = BUILTIN_LABELLED_SETS[builtin]
    else:
        description = f"{source} (split {split!r}, " + (
            f"test split {held_out!r})" if named else f"{held_out} held out)"
        )
    train = decode_images(undecoded_images(train_set.select(train_idx), column))
    test = decode_images(undecoded_images(test_set.select(test_idx), column))
    return LabelledImages(
        train_images=train.images,
        train_labels=train_labels[train_idx][train.indices],
        test_images=test.images,
        test_labels=test_labels[test_idx][test.indices],
        class_names=names,
        description=description,
        skipped=train.skipped + test.skipped,
    )
