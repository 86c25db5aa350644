"""Labelled data for fine-tuning: where the train and evaluation examples come from, checked before training.

Sources (:func:`load_downstream_dataset`):

* built-in sets that need no network, for tests and the command's default:

  ============================  ==============  =====================================================================
  name                          task            what it is
  ============================  ==============  =====================================================================
  ``"digits"``                  classification  scikit-learn's 1,797 8×8 handwritten digits, 10 classes (default)
  ``"lfw_subset"``              classification  scikit-image's 200 25×25 crops, ``face`` / ``non-face``
  ``"embedded-shapes"``         segmentation    discs, squares and triangles composited onto the embedded photos,
                                                with exact masks (default; generated, deterministic)
  ============================  ==============  =====================================================================

  Classification data, built-in or not, comes from :func:`equirecon.evaluation.labelled.load_labelled_splits`,
  the loader the probes use, split by its rule.

* a dataset saved with ``save_to_disk``, an image folder (classification labels from the sub-folder names), a
  folder with ``images/`` and ``annotations/`` trees (segmentation; ADE20K's ``ADEChallengeData2016`` layout), or a
  Hub dataset name.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import datasets
import numpy as np

from ..evaluation.labelled import (
    BUILTIN_LABELLED_SETS,
    EVAL_SPLIT_NAMES,
    is_saved_dataset,
    load_labelled_splits,
    split_labelled,
)
from ..imaging.sources import IMAGE_EXTENSIONS, find_image_column
from .shapes import SHAPE_CLASSES, shapes_dataset
from .transforms import DEFAULT_CROP_SCALE, TASKS

__all__ = [
    "BUILTIN_DATASETS",
    "DEFAULT_DATASETS",
    "DownstreamData",
    "Task",
    "load_downstream_dataset",
    "read_id2label",
]

logger = logging.getLogger(__name__)

Task = Literal["classification", "segmentation"]

#: Built-in datasets: name → (task, one-line description shown to the user and written in the model card).
BUILTIN_DATASETS: dict[str, tuple[str, str]] = {
    **{
        name: ("classification", f"{description}; fixed stratified 80/20 split")
        for name, description in BUILTIN_LABELLED_SETS.items()
    },
    "embedded-shapes": (
        "segmentation",
        "EquiRecon's generated shapes (discs, squares and triangles composited onto the photos that ship with "
        "scikit-image and scikit-learn, exact masks, 4 classes incl. background; 512 train / 128 validation images "
        "on disjoint photos)",
    ),
}
#: What `equirecon finetune` uses when no ``--dataset`` is given.
DEFAULT_DATASETS: dict[str, str] = {"classification": "digits", "segmentation": "embedded-shapes"}
# Digits change class under a mirror image (a flipped 2 is not a 2), so their default training has no flips; and an
# 8×8 glyph cropped to 8% of its area (DINOv2's natural-image crop) is no longer a digit.
_NOT_FLIP_INVARIANT = frozenset({"digits"})
_CROP_SCALES = {"digits": (0.5, 1.0), "lfw_subset": (0.5, 1.0)}
# A frozen encoder cannot learn to see past a crop, so a probe's head (`--freeze_backbone`) trains on whole images.
_PROBE_CROP_SCALES = {"digits": (1.0, 1.0)}

# Column names tried, in order, when no label column is named.
_CLASSIFICATION_LABEL_COLUMNS = ("label", "labels", "fine_label", "class", "target")
_SEGMENTATION_LABEL_COLUMNS = ("label", "annotation", "mask", "semantic_segmentation", "segmentation", "seg_map")
# ADE20K's ADEChallengeData2016 split folder names, and the usual ones.
_FOLDER_SPLITS = {"train": ("training", "train"), "validation": ("validation", "val", "valid"), "test": ("test",)}


@dataclass
class DownstreamData:
    """A labelled train/eval pair ready for the transforms, and what the model card needs to know about it."""

    task: str
    train: datasets.Dataset
    eval: datasets.Dataset | None
    image_column: str
    label_column: str
    id2label: dict[int, str]
    #: Short identifier for the model card's ``datasets`` field (the Hub name, folder name or built-in name).
    name: str
    #: One line for the user and the model card: which data, which splits.
    description: str
    #: Where the evaluation examples come from: a split name, or "15% of train" when held out here.
    eval_split: str = "validation"
    #: Whether a horizontal flip keeps the label (False for digits).
    flip_invariant: bool = True
    #: Classification training crops: the RandomResizedCrop area range that suits these images.
    crop_scale: tuple[float, float] = DEFAULT_CROP_SCALE
    #: The crops of a frozen encoder's head (linear probe), where they differ from `crop_scale`.
    probe_crop_scale: tuple[float, float] | None = None
    #: ADE20K convention applied by the transforms: label 0 ("other") → ignore, k → k - 1.
    reduce_labels: bool = False
    builtin: bool = False

    @property
    def num_labels(self) -> int:
        return len(self.id2label)


# ---------------------------------------------------------------------------------------------------- loading


def read_id2label(path: str | os.PathLike) -> dict[int, str]:
    """A local ``id2label.json`` (``{"0": "wall", "1": "building", ...}``, the Hub's ``label-files`` format) or a
    JSON list of names. Ids must be 0..N-1."""
    file = Path(path)
    if not file.is_file():
        raise ValueError(f"--id2label {path}: no such file")
    try:
        raw = json.loads(file.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"--id2label {path}: not valid JSON ({error.msg} at line {error.lineno})") from error
    if isinstance(raw, list):
        raw = dict(enumerate(raw))
    if not isinstance(raw, dict) or not raw:
        raise ValueError(f"--id2label {path}: expected a non-empty JSON object {{id: name}} or a list of names")
    try:
        id2label = {int(key): str(value) for key, value in raw.items()}
    except ValueError as error:
        raise ValueError(f"--id2label {path}: ids must be integers, got {sorted(raw)[:3]}...") from error
    if sorted(id2label) != list(range(len(id2label))):
        raise ValueError(f"--id2label {path}: ids must be 0..{len(id2label) - 1} without gaps")
    return id2label


def _paired_folder_splits(root: Path) -> dict[str, Path] | None:
    """``root/images/<split>`` paired with ``root/annotations/<split>`` (ADEChallengeData2016), or None."""
    images, annotations = root / "images", root / "annotations"
    if not (images.is_dir() and annotations.is_dir()):
        return None
    found = {}
    for split, names in _FOLDER_SPLITS.items():
        for name in names:
            if (images / name).is_dir() and (annotations / name).is_dir():
                found[split] = Path(name)
                break
    if not found and any(p.suffix.lower() in IMAGE_EXTENSIONS for p in images.iterdir()):
        found["train"] = Path(".")
    return found or None


def _paired_folder_dataset(root: Path, subfolder: Path) -> datasets.Dataset:
    """Images and label maps matched by file stem (``ADE_train_00000001.jpg`` ↔ ``ADE_train_00000001.png``)."""
    image_dir, annotation_dir = root / "images" / subfolder, root / "annotations" / subfolder
    annotations = {p.stem: p for p in annotation_dir.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS}
    images = sorted(p for p in image_dir.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
    pairs = [(str(p), str(annotations[p.stem])) for p in images if p.stem in annotations]
    if not pairs:
        raise ValueError(f"no image in {image_dir} has an annotation of the same name in {annotation_dir}")
    if len(pairs) < len(images):
        logger.warning(
            "%d of %d images in %s have no annotation and are left out.",
            len(images) - len(pairs),
            len(images),
            image_dir,
        )
    features = datasets.Features({"image": datasets.Image(), "label": datasets.Image()})
    return datasets.Dataset.from_dict(
        {"image": [p for p, _ in pairs], "label": [a for _, a in pairs]}, features=features
    )


def _load_source(task: str, source: str, config_name: str | None) -> tuple[datasets.DatasetDict, str, Path | None]:
    """All splits of ``source`` and a short name for it; the folder it lives in when local."""
    path = Path(source).expanduser()
    if not path.is_dir():
        return load_labelled_splits(source, config_name=config_name), source, None
    if not is_saved_dataset(path):
        paired = _paired_folder_splits(path)
        if paired is not None:
            if task != "segmentation":
                raise ValueError(
                    f"{source} has images/ and annotations/ folders (a segmentation layout) but the task is {task}"
                )
            splits = datasets.DatasetDict({s: _paired_folder_dataset(path, sub) for s, sub in paired.items()})
            return splits, path.name, path
        if task == "segmentation":
            raise ValueError(
                f"{source} is a folder without images/ and annotations/ sub-folders; segmentation needs label maps "
                "paired with images (images/<split>/*.jpg ↔ annotations/<split>/*.png) or a saved dataset"
            )
    return load_labelled_splits(path, config_name=config_name), path.name, path


def _find_label_column(dataset: datasets.Dataset, task: str, label_column: str | None, image_column: str) -> str:
    columns = list(dataset.column_names)
    if label_column is not None:
        if label_column not in columns:
            raise ValueError(f"--label_column {label_column!r} is not a column of the dataset; found {columns}")
        return label_column
    candidates = _CLASSIFICATION_LABEL_COLUMNS if task == "classification" else _SEGMENTATION_LABEL_COLUMNS
    for name in candidates:
        if name in columns and name != image_column:
            return name
    if task == "segmentation":
        images = [n for n, f in dataset.features.items() if isinstance(f, datasets.Image) and n != image_column]
        if len(images) == 1:
            return images[0]
    raise ValueError(f"no label column found among {columns} (tried {list(candidates)}); name it with --label_column")


def _classification_labels(
    splits: dict[str, datasets.Dataset], label_column: str, id2label: dict[int, str] | None
) -> tuple[dict[str, datasets.Dataset], dict[int, str]]:
    """Labels as integer class ids with names: ``ClassLabel`` names, ``--id2label``, or encoded strings."""
    feature = next(iter(splits.values())).features[label_column]
    if isinstance(feature, datasets.Value) and feature.dtype in ("string", "large_string"):
        merged = datasets.concatenate_datasets([d.select_columns([label_column]) for d in splits.values()])
        names = sorted(set(merged[label_column]))
        encoding = datasets.ClassLabel(names=names)
        splits = {k: d.cast_column(label_column, encoding) for k, d in splits.items()}
        feature = encoding
    if isinstance(feature, datasets.ClassLabel):
        names = {i: name for i, name in enumerate(feature.names)}
        if id2label is not None and len(id2label) != len(names):
            raise ValueError(f"--id2label has {len(id2label)} classes but the dataset's labels have {len(names)}")
        id2label = id2label or names
    elif isinstance(feature, datasets.Value) and feature.dtype.startswith(("int", "uint")):
        if id2label is None:
            largest = max(max(d.unique(label_column)) for d in splits.values())
            id2label = {i: str(i) for i in range(int(largest) + 1)}
    else:
        raise ValueError(
            f"label column {label_column!r} holds {feature!r}; classification needs one class per image "
            "(a ClassLabel, an integer or a string)"
        )
    for split_name, dataset in splits.items():
        values = dataset.unique(label_column)
        if any(v is None or v < 0 for v in values):
            raise ValueError(
                f"split {split_name!r} has examples without a label ({label_column!r} is -1 or missing): "
                "pick a labelled split with --train_split / --eval_split"
            )
        if max(values) >= len(id2label):
            raise ValueError(
                f"split {split_name!r} has label {max(values)} but only {len(id2label)} classes are named"
            )
    return splits, id2label


def _check_label_maps(
    dataset: datasets.Dataset,
    label_column: str,
    num_labels: int,
    reduce_labels: bool,
    ignore_index: int,
    split_name: str,
    sample: int = 4,
) -> None:
    """Decode a few label maps: single channel, values in range. Catches RGB-coded masks and label-count mistakes
    before training instead of as a device-side assert in the loss."""
    for index in range(min(sample, len(dataset))):
        label = np.asarray(dataset[index][label_column])
        if label.ndim != 2:
            raise ValueError(
                f"label maps of {label_column!r} must be single-channel class indices, got shape {label.shape} in "
                f"split {split_name!r} (colour-coded masks need converting first)"
            )
        values = np.unique(label).astype(np.int64)
        if reduce_labels:
            values = values[(values != 0) & (values != ignore_index)] - 1
        values = values[values != ignore_index]
        if values.size and (values.min() < 0 or values.max() >= num_labels):
            raise ValueError(
                f"label maps of split {split_name!r} hold class {int(values.max())} but num_labels is {num_labels}"
                f"{' after reduce_labels' if reduce_labels else ''}; check --num_labels/--id2label/--reduce_labels"
            )


def load_downstream_dataset(
    task: str,
    source: str | None = None,
    *,
    config_name: str | None = None,
    train_split: str = "train",
    eval_split: str | None = None,
    validation_fraction: float = 0.15,
    image_column: str | None = None,
    label_column: str | None = None,
    id2label: dict[int, str] | None = None,
    num_labels: int | None = None,
    reduce_labels: bool = False,
    ignore_index: int = 255,
    max_train_samples: int | None = None,
    max_eval_samples: int | None = None,
    seed: int = 42,
) -> DownstreamData:
    """Resolve ``source`` to labelled train and eval splits, checked before any training starts.

    Args:
        task: ``"classification"`` or ``"segmentation"``.
        source: a name in :data:`BUILTIN_DATASETS`, a local folder (saved dataset, image folder, or
            ``images/`` + ``annotations/``) or a Hub dataset; ``None`` is the task's :data:`DEFAULT_DATASETS`.
        eval_split: ``None`` takes the first of ``validation``/``valid``/``val``/``test`` that exists, else splits off
            ``validation_fraction`` of the training split (stratified for classification).
        id2label: class names; otherwise from the label feature (classification), a ``id2label.json`` next to a
            local dataset, the built-in set, or ``num_labels`` (names ``"0"``, ``"1"``, ...).
        reduce_labels: segmentation datasets whose 0 means "other" (ADE20K): 0 → ``ignore_index``, k → k - 1.

    Raises:
        ValueError: one line naming the problem (unknown column, unlabelled split, label out of range, ...).
    """
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    source = source or DEFAULT_DATASETS[task]
    builtin = source in BUILTIN_DATASETS
    local_dir: Path | None = None
    flip_invariant, crop_scale, probe_crop_scale = True, DEFAULT_CROP_SCALE, None
    if builtin:
        builtin_task, description = BUILTIN_DATASETS[source]
        if builtin_task != task:
            defaults = [n for n, (t, _) in BUILTIN_DATASETS.items() if t == task]
            raise ValueError(f"built-in dataset {source!r} is for {builtin_task}; for {task} use one of {defaults}")
        if reduce_labels:
            raise ValueError(
                f"--reduce_labels is for datasets whose label 0 means 'other' (ADE20K); {source!r} has a real "
                "background class 0"
            )
        splits = dict(shapes_dataset() if source == "embedded-shapes" else load_labelled_splits(source))
        name = source
        flip_invariant = source not in _NOT_FLIP_INVARIANT
        crop_scale = _CROP_SCALES.get(source, DEFAULT_CROP_SCALE)
        probe_crop_scale = _PROBE_CROP_SCALES.get(source)
        if source == "embedded-shapes" and id2label is None:
            id2label = dict(enumerate(SHAPE_CLASSES))
    else:
        loaded, name, local_dir = _load_source(task, source, config_name)
        splits = dict(loaded)
        description = f"{source}"
    if train_split not in splits:
        raise ValueError(f"--train_split {train_split!r} not found; {name} has splits {sorted(splits)}")
    if eval_split is not None and eval_split not in splits:
        raise ValueError(f"--eval_split {eval_split!r} not found; {name} has splits {sorted(splits)}")

    train = splits[train_split]
    image_column = find_image_column(train, image_column)
    label_column = _find_label_column(train, task, label_column, image_column)
    if eval_split is None:
        eval_split = next((s for s in EVAL_SPLIT_NAMES if s in splits and s != train_split), None)
    eval_dataset = splits[eval_split] if eval_split is not None else None
    for split_name, dataset in ((train_split, train), (eval_split, eval_dataset)):
        if dataset is not None:
            missing = [c for c in (image_column, label_column) if c not in dataset.column_names]
            if missing:
                raise ValueError(f"split {split_name!r} lacks column(s) {missing}; it has {dataset.column_names}")

    if id2label is None and local_dir is not None and (local_dir / "id2label.json").is_file():
        id2label = read_id2label(local_dir / "id2label.json")
        logger.info("Class names from %s.", local_dir / "id2label.json")
    if task == "classification":
        used = {train_split: train, **({eval_split: eval_dataset} if eval_dataset is not None else {})}
        used, id2label = _classification_labels(used, label_column, id2label)
        train, eval_dataset = used[train_split], used.get(eval_split) if eval_split is not None else None
    else:
        if id2label is None:
            if num_labels is None:
                raise ValueError(
                    f"{name} does not name its segmentation classes: pass --id2label FILE.json or --num_labels N"
                )
            id2label = {i: str(i) for i in range(num_labels)}
        elif num_labels is not None and num_labels != len(id2label):
            raise ValueError(f"--num_labels {num_labels} disagrees with the {len(id2label)} classes of --id2label")
    if len(id2label) < 2:
        raise ValueError(f"{task} needs at least 2 classes, got {len(id2label)}")

    if eval_dataset is None:  # the split rule of equirecon.evaluation.labelled
        parts, eval_split = split_labelled(
            {train_split: train},
            train_split=train_split,
            validation_fraction=validation_fraction,
            label_column=label_column,
            seed=seed,
        )
        train, eval_dataset = parts["train"], parts["validation"]
    if max_train_samples is not None:
        train = train.shuffle(seed=seed).select(range(min(max_train_samples, len(train))))
    if max_eval_samples is not None:
        eval_dataset = eval_dataset.select(range(min(max_eval_samples, len(eval_dataset))))
    if task == "segmentation":
        for split_name, dataset in ((train_split, train), (eval_split, eval_dataset)):
            _check_label_maps(dataset, label_column, len(id2label), reduce_labels, ignore_index, str(split_name))

    description = (
        f"{description}: {len(train)} training images ({train_split}), {len(eval_dataset)} evaluation images "
        f"({eval_split}), {len(id2label)} classes"
    )
    return DownstreamData(
        task=task,
        train=train,
        eval=eval_dataset,
        image_column=image_column,
        label_column=label_column,
        id2label=id2label,
        name=name,
        description=description,
        eval_split=str(eval_split),
        flip_invariant=flip_invariant,
        crop_scale=crop_scale,
        probe_crop_scale=probe_crop_scale,
        reduce_labels=reduce_labels,
        builtin=builtin,
    )
