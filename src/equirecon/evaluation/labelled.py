"""Labelled image sets for the classification probes: offline built-ins or any user dataset.

The k-NN and linear probes need class labels, which the embedded photos do not have. Two labelled sets ship with
the project's dependencies and need no download:

* ``"digits"``: scikit-learn's handwritten digits, 1797 greyscale 8×8 images, 10 classes;
* ``"lfw_subset"``: scikit-image's 200 greyscale 25×25 crops, faces vs non-faces (2 classes).

They are tiny and easy, so they check that a pipeline works and rank features coarsely; they are no substitute
for ImageNet-scale probes. Anything else ``equirecon.training.data.load_images`` accepts (an image folder with one
sub-folder per class, Parquet, a Hub name, a ``datasets`` object) can be used with a label column.
"""

from __future__ import annotations

import logging
import os
import pathlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import datasets
import numpy as np

from ..training.data import find_image_column, load_images

logger = logging.getLogger(__name__)

__all__ = ["BUILTIN_LABELLED_SETS", "LabelledImages", "builtin_labelled_arrays", "load_labelled_images"]

BUILTIN_LABELLED_SETS: dict[str, str] = {
    "digits": "scikit-learn's bundled handwritten digits (1797 greyscale 8×8 images, 10 classes)",
    "lfw_subset": "scikit-image's bundled LFW subset (200 greyscale 25×25 crops, face / non-face)",
}


@dataclass
class LabelledImages:
    """Train and test images (PIL images or uint8 arrays) with integer labels, and where they came from."""

    train_images: Sequence[Any]
    train_labels: np.ndarray
    test_images: Sequence[Any]
    test_labels: np.ndarray
    class_names: list[str]
    description: str

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def _stratified_split(labels: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded split that keeps every class's proportion (each class with >= 2 samples appears on both sides)."""
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}.")
    rng = np.random.default_rng([seed, 3])
    train, test = [], []
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        num_test = int(round(test_fraction * len(members)))
        num_test = min(max(num_test, 1 if len(members) > 1 else 0), len(members) - 1)
        test.append(members[:num_test])
        train.append(members[num_test:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


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


def _subsample(indices: np.ndarray, max_images: int | None, seed: int) -> np.ndarray:
    if max_images is None or len(indices) <= max_images:
        return indices
    return np.sort(np.random.default_rng([seed, 4]).choice(indices, size=max_images, replace=False))


def _load_split(source: Any, split: str, image_column: str | None) -> datasets.Dataset:
    path = pathlib.Path(os.path.expanduser(str(source))) if isinstance(source, str | os.PathLike) else None
    if path is not None and path.is_dir() and not any(path.rglob("*.parquet")):
        # An image folder: keep the class sub-folders as labels (load_images drops them, as pretraining needs).
        dataset = datasets.load_dataset("imagefolder", data_dir=str(path), split=split)
    else:
        dataset = load_images(source, split=split, image_column=image_column)
    if not isinstance(dataset, datasets.Dataset):
        raise ValueError("the probes need a map-style dataset; load it without streaming.")
    return dataset


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
    test_fraction: float = 0.25,
    max_images: int | None = None,
    seed: int = 0,
) -> LabelledImages:
    """Train/test images and labels for the probes.

    Args:
        source: ``"digits"`` or ``"lfw_subset"`` (offline built-ins), or anything ``load_images`` accepts. An
            image folder keeps its class sub-folders as the ``label`` column.
        split, test_split: the splits to train and test on. Without ``test_split``, ``split`` is divided
            (stratified, seeded) with ``test_fraction`` held out.
        image_column, label_column: the columns holding images and labels (image column found automatically).
        max_images: cap on the train and on the test images (seeded random subset), to bound encoding time.
        seed: seeds the split and the subsets.
    """
    if isinstance(source, str) and source in BUILTIN_LABELLED_SETS:
        if test_split is not None:
            raise ValueError(f"the built-in set {source!r} has a single split; use test_fraction instead.")
        images, labels, names = builtin_labelled_arrays(source)
        train_idx, test_idx = _stratified_split(labels, test_fraction, seed)
        train_idx, test_idx = _subsample(train_idx, max_images, seed), _subsample(test_idx, max_images, seed + 1)
        return LabelledImages(
            train_images=list(images[train_idx]),
            train_labels=labels[train_idx],
            test_images=list(images[test_idx]),
            test_labels=labels[test_idx],
            class_names=names,
            description=BUILTIN_LABELLED_SETS[source],
        )

    train_set = _load_split(source, split, image_column)
    column = find_image_column(train_set, image_column)
    train_labels, names = _labels_of(train_set, label_column, None)
    if test_split is not None:
        test_set = _load_split(source, test_split, image_column)
        test_labels, _ = _labels_of(test_set, label_column, names)
        train_idx, test_idx = np.arange(len(train_set)), np.arange(len(test_set))
    else:
        test_set, test_labels = train_set, train_labels
        train_idx, test_idx = _stratified_split(train_labels, test_fraction, seed)
    train_idx, test_idx = _subsample(train_idx, max_images, seed), _subsample(test_idx, max_images, seed + 1)
    description = f"{source} (split {split!r}" + (
        f", test split {test_split!r})" if test_split else f", {test_fraction:.0%} held out)"
    )
    return LabelledImages(
        train_images=train_set.select(train_idx)[column],
        train_labels=train_labels[train_idx],
        test_images=test_set.select(test_idx)[column],
        test_labels=test_labels[test_idx],
        class_names=names,
        description=description,
    )
