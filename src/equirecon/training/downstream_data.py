"""Labelled data for fine-tuning: where the examples come from, and the albumentations transforms that feed them.

Sources (:func:`load_downstream_dataset`):

* built-in sets that need no network, for tests and the command's default:

  ============================  ==============  =====================================================================
  name                          task            what it is
  ============================  ==============  =====================================================================
  ``"sklearn-digits"``          classification  scikit-learn's 1,797 8×8 handwritten digits, 10 classes (default)
  ``"skimage-lfw-subset"``      classification  scikit-image's 200 25×25 crops, ``face`` / ``non-face``
  ``"embedded-shapes"``         segmentation    discs, squares and triangles composited onto the embedded photos,
                                                with exact masks (default; generated, deterministic)
  ============================  ==============  =====================================================================

* a dataset saved with ``save_to_disk``, an image folder (classification labels from the sub-folder names), a
  folder with ``images/`` and ``annotations/`` trees (segmentation; ADE20K's ``ADEChallengeData2016`` layout), or a
  Hub dataset name.

Transforms (:func:`build_transform`) are albumentations pipelines from an RGB uint8 image (and, for segmentation,
its label map) to a normalised tensor: DINOv2's random-resized-crop + flip for classification, mmsegmentation's ADE20K
pipeline (random rescale, pad with the ignore index, random crop, flip) for segmentation, and a plain resize to the
model's size for evaluation, the geometry of the image processor saved with the model so that pipelines see what
evaluation saw.
"""

from __future__ import annotations

import functools
import io
import json
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import albumentations as A
import cv2
import datasets
import numpy as np
import torch
from albumentations.pytorch import ToTensorV2
from PIL import Image, ImageDraw

from ..evaluation.labelled import builtin_labelled_arrays
from .data import IMAGE_EXTENSIONS, embedded_photos, find_image_column
from .views import seed_view_transform, to_rgb_uint8, worker_context

__all__ = [
    "BUILTIN_DATASETS",
    "DEFAULT_CROP_SCALE",
    "DEFAULT_DATASETS",
    "SHAPE_CLASSES",
    "DownstreamData",
    "DownstreamTransform",
    "Task",
    "build_transform",
    "collate_downstream",
    "digits_dataset",
    "lfw_subset_dataset",
    "load_downstream_dataset",
    "read_id2label",
    "shapes_dataset",
]

logger = logging.getLogger(__name__)

Task = Literal["classification", "segmentation"]
TASKS: tuple[str, ...] = ("classification", "segmentation")

#: Built-in datasets: name → (task, one-line description shown to the user and written in the model card).
BUILTIN_DATASETS: dict[str, tuple[str, str]] = {
    "sklearn-digits": (
        "classification",
        "scikit-learn's handwritten digits (1,797 8×8 greyscale images, 10 classes; fixed stratified 80/20 split)",
    ),
    "skimage-lfw-subset": (
        "classification",
        "scikit-image's lfw_subset (200 25×25 greyscale crops, face / non-face; fixed stratified 80/20 split)",
    ),
    "embedded-shapes": (
        "segmentation",
        "EquiRecon's generated shapes (discs, squares and triangles composited onto the photos that ship with "
        "scikit-image and scikit-learn, exact masks, 4 classes incl. background; 512 train / 128 validation images "
        "on disjoint photos)",
    ),
}
#: What `equirecon finetune` uses when no ``--dataset`` is given.
DEFAULT_DATASETS: dict[str, str] = {"classification": "sklearn-digits", "segmentation": "embedded-shapes"}
# Digits change class under a mirror image (a flipped 2 is not a 2), so their default training has no flips; and an
# 8×8 glyph cropped to 8% of its area (DINOv2's natural-image crop) is no longer a digit.
_NOT_FLIP_INVARIANT = frozenset({"sklearn-digits"})
_CROP_SCALES = {"sklearn-digits": (0.5, 1.0), "skimage-lfw-subset": (0.5, 1.0)}
#: RandomResizedCrop area range for natural images (DINOv2's linear evaluation and fine-tuning).
DEFAULT_CROP_SCALE: tuple[float, float] = (0.08, 1.0)

#: Classes of ``"embedded-shapes"``, index = label value.
SHAPE_CLASSES: tuple[str, ...] = ("background", "disc", "square", "triangle")

# Column names tried, in order, when no label column is named.
_CLASSIFICATION_LABEL_COLUMNS = ("label", "labels", "fine_label", "class", "target")
_SEGMENTATION_LABEL_COLUMNS = ("label", "annotation", "mask", "semantic_segmentation", "segmentation", "seg_map")
# Split names tried, in order, for evaluation when none is named.
_EVAL_SPLITS = ("validation", "valid", "val", "test")
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
    #: ADE20K convention applied by the transforms: label 0 ("other") → ignore, k → k - 1.
    reduce_labels: bool = False
    builtin: bool = False

    @property
    def num_labels(self) -> int:
        return len(self.id2label)


# ------------------------------------------------------------------------------------------------ built-in sets


def _stratified_split(dataset: datasets.Dataset, test_size: float, seed: int) -> datasets.DatasetDict:
    parts = dataset.train_test_split(test_size=test_size, seed=seed, stratify_by_column="label")
    return datasets.DatasetDict({"train": parts["train"], "validation": parts["test"]})


def _grey_images_dataset(images: np.ndarray, labels: np.ndarray, names: Sequence[str]) -> datasets.Dataset:
    """uint8 (N, H, W) arrays → a Dataset with a ``datasets.Image`` column and a ``ClassLabel`` column."""
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=list(names))})
    return datasets.Dataset.from_dict(
        {"image": [Image.fromarray(image, mode="L") for image in images], "label": labels.tolist()}, features=features
    )


@functools.cache
def _builtin_splits(name: str) -> datasets.DatasetDict:
    images, labels, names = builtin_labelled_arrays(name)
    return _stratified_split(_grey_images_dataset(images, labels, names), 0.2, 0)


def digits_dataset() -> datasets.DatasetDict:
    """scikit-learn's digits as ``train`` (1,437) and ``validation`` (360) splits, stratified, always the same."""
    return datasets.DatasetDict(dict(_builtin_splits("digits")))


def lfw_subset_dataset() -> datasets.DatasetDict:
    """scikit-image's ``lfw_subset`` as ``train`` (160) and ``validation`` (40) splits, stratified, always the same."""
    return datasets.DatasetDict(dict(_builtin_splits("lfw_subset")))


def _shape_polygon(kind: int, centre: np.ndarray, radius: float, angle: float) -> list[tuple[float, float]] | None:
    if kind == 1:  # disc: drawn as an ellipse by the caller
        return None
    corners = 4 if kind == 2 else 3
    angles = angle + np.arange(corners) * (2 * np.pi / corners)
    return [(float(centre[0] + radius * np.cos(a)), float(centre[1] + radius * np.sin(a))) for a in angles]


def _draw_shapes_example(background: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Composite 1-3 random shapes onto ``background`` (H, W, 3). The image and the mask are painted from the same
    binary (non-antialiased) shape masks, in the same order, so every label pixel is exact, occlusions included."""
    height, width = background.shape[:2]
    image = background.copy()
    label = np.zeros((height, width), dtype=np.uint8)
    for _ in range(int(rng.integers(1, 4))):
        kind = int(rng.integers(1, len(SHAPE_CLASSES)))
        radius = float(rng.uniform(0.1, 0.25) * min(height, width))
        centre = rng.uniform([radius, radius], [width - radius, height - radius])
        canvas = Image.new("1", (width, height), 0)
        draw = ImageDraw.Draw(canvas)
        polygon = _shape_polygon(kind, centre, radius, float(rng.uniform(0, 2 * np.pi)))
        if polygon is None:
            box = (centre[0] - radius, centre[1] - radius, centre[0] + radius, centre[1] + radius)
            draw.ellipse([float(v) for v in box], fill=1)
        else:
            draw.polygon(polygon, fill=1)
        inside = np.asarray(canvas, dtype=bool)
        colour = rng.uniform(0, 255, size=3)
        noise = rng.normal(0.0, 12.0, size=(int(inside.sum()), 3))
        image[inside] = np.clip(colour + noise, 0, 255).astype(np.uint8)
        label[inside] = kind
    return image, label


def _png(image: Image.Image) -> dict[str, bytes | None]:
    """Uncompressed PNG: lossless and fast to write (compressing took most of the generation time)."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=0)
    return {"bytes": buffer.getvalue(), "path": None}


@functools.cache
def _shapes(split: str, num_images: int, image_size: int, seed: int) -> datasets.Dataset:
    photos = [to_rgb_uint8(example["image"]) for example in embedded_photos(split)]
    rng = np.random.default_rng([seed, 0 if split == "train" else 1])
    images, labels = [], []
    for _ in range(num_images):
        photo = photos[int(rng.integers(len(photos)))]
        height, width = photo.shape[:2]
        side = int(rng.uniform(0.3, 1.0) * min(height, width))
        top, left = int(rng.integers(0, height - side + 1)), int(rng.integers(0, width - side + 1))
        crop = cv2.resize(photo[top : top + side, left : left + side], (image_size, image_size), cv2.INTER_AREA)
        image, label = _draw_shapes_example(crop, rng)
        images.append(_png(Image.fromarray(image)))
        labels.append(_png(Image.fromarray(label, mode="L")))
    features = datasets.Features({"image": datasets.Image(), "label": datasets.Image()})
    return datasets.Dataset.from_dict({"image": images, "label": labels}, features=features, split=split)


def shapes_dataset(
    num_train: int = 512, num_validation: int = 128, image_size: int = 128, seed: int = 0
) -> datasets.DatasetDict:
    """The generated segmentation set: shapes on crops of the embedded photos, with exact label maps.

    Backgrounds of ``validation`` come from the held-out embedded photos
    (:data:`~equirecon.training.data.EMBEDDED_VALIDATION_PHOTOS`), so no background is shared between splits.
    Columns ``image`` (RGB) and ``label`` (mode ``L``, values in ``range(len(SHAPE_CLASSES))``). Deterministic in
    ``seed``; built in about a second and cached per process.
    """
    return datasets.DatasetDict(
        {
            "train": _shapes("train", num_train, image_size, seed),
            "validation": _shapes("validation", num_validation, image_size, seed),
        }
    )


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


def _is_saved_dataset(path: Path) -> bool:
    return (path / "dataset_dict.json").is_file() or (path / "state.json").is_file()


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
    if path.is_dir():
        if _is_saved_dataset(path):
            loaded = datasets.load_from_disk(str(path))
            splits = loaded if isinstance(loaded, datasets.DatasetDict) else datasets.DatasetDict({"train": loaded})
            return splits, path.name, path
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
        return datasets.load_dataset("imagefolder", data_dir=str(path)), path.name, path
    if path.suffix and path.exists():
        raise ValueError(f"{source} is a file; give a folder, a dataset saved with save_to_disk or a Hub name")
    kwargs: dict[str, Any] = {"name": config_name} if config_name else {}
    try:
        loaded = datasets.load_dataset(source, **kwargs)
    except (OSError, datasets.exceptions.DatasetNotFoundError) as error:  # OSError: offline, no such file
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ValueError(f"cannot load {source!r} (not a local folder, and from the Hub: {first})") from error
    if not isinstance(loaded, datasets.DatasetDict):
        loaded = datasets.DatasetDict({"train": loaded})
    return loaded, source, None


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
    flip_invariant, crop_scale = True, DEFAULT_CROP_SCALE
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
        loaders: dict[str, Callable[[], datasets.DatasetDict]] = {
            "sklearn-digits": digits_dataset,
            "skimage-lfw-subset": lfw_subset_dataset,
            "embedded-shapes": shapes_dataset,
        }
        splits = dict(loaders[source]())
        name = source
        flip_invariant = source not in _NOT_FLIP_INVARIANT
        crop_scale = _CROP_SCALES.get(source, DEFAULT_CROP_SCALE)
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
        eval_split = next((s for s in _EVAL_SPLITS if s in splits and s != train_split), None)
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

    if eval_dataset is None:
        if not 0 < validation_fraction < 1:
            raise ValueError(f"{name} has no evaluation split and --validation_fraction is {validation_fraction}")
        stratify = label_column if isinstance(train.features[label_column], datasets.ClassLabel) else None
        parts = train.train_test_split(test_size=validation_fraction, seed=seed, stratify_by_column=stratify)
        train, eval_dataset = parts["train"], parts["test"]
        eval_split = f"{validation_fraction:.0%} of {train_split}"
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
        reduce_labels=reduce_labels,
        builtin=builtin,
    )


# -------------------------------------------------------------------------------------------------- transforms


# Every resize, in training and evaluation: bilinear up, area-averaging down (masks: nearest), the OpenCV filters
# closest to the saved image processor's antialiased PIL bilinear (tests/test_finetune.py measures how close). A
# different filter in training (e.g. bicubic) than in evaluation is a distribution shift the model can learn: a tiny
# ViT fully fine-tuned on 8×8 digits upsampled bicubically scored 48% on bicubically and 13% on bilinearly upsampled
# validation digits.
_RESAMPLE: dict[str, Any] = {"interpolation": cv2.INTER_LINEAR, "area_for_downscale": "image"}


def build_transform(
    task: str,
    *,
    train: bool,
    size: int | tuple[int, int],
    image_mean: Sequence[float],
    image_std: Sequence[float],
    crop_scale: tuple[float, float] = DEFAULT_CROP_SCALE,
    scale_range: tuple[float, float] = (0.5, 2.0),
    horizontal_flip: bool = True,
    ignore_index: int = 255,
) -> A.Compose:
    """The albumentations pipeline for one task and phase; output ``image`` is a normalised (3, H, W) tensor.

    * classification, train: ``RandomResizedCrop(size, scale=crop_scale)`` + flip (DINOv2's linear evaluation and
      fine-tuning augmentations, without colour jitter);
    * segmentation, train: random rescale by ``scale_range`` of the output size, pad to the size (image 0, mask
      ``ignore_index``), random crop, flip (mmsegmentation's ADE20K pipeline; padded pixels never enter the loss);
    * evaluation, both tasks: resize to ``size``, the geometry of the image processor saved with the model.

    All resizing is bilinear (area-averaging when shrinking, nearest for masks), the closest OpenCV match to the
    saved processor's PIL resampling, so training, evaluation and ``pipeline(...)`` see images filtered alike.
    """
    height, width = (size, size) if isinstance(size, int) else size
    normalise = [A.Normalize(mean=tuple(image_mean), std=tuple(image_std), max_pixel_value=255.0), ToTensorV2()]
    flip = [A.HorizontalFlip(p=0.5)] if horizontal_flip else []
    if not train:
        return A.Compose([A.Resize(height, width, **_RESAMPLE), *normalise])
    if task == "classification":
        low, high = crop_scale
        if not 0 < low <= high <= 1:
            raise ValueError(f"crop_scale must satisfy 0 < low <= high <= 1, got {crop_scale!r}")
        crop = A.RandomResizedCrop(size=(height, width), scale=(low, high), **_RESAMPLE)
        return A.Compose([crop, *flip, *normalise])
    low, high = scale_range
    if not 0 < low <= high:
        raise ValueError(f"scale_range must satisfy 0 < low <= high, got {scale_range!r}")
    return A.Compose(
        [
            # Short side to the output size, then a random factor in scale_range (mmseg: ratio_range).
            A.SmallestMaxSize(max_size=min(height, width), **_RESAMPLE),
            A.RandomScale(scale_limit=(low - 1.0, high - 1.0), p=1.0, **_RESAMPLE),
            A.PadIfNeeded(
                min_height=height, min_width=width, border_mode=cv2.BORDER_CONSTANT, fill=0, fill_mask=ignore_index
            ),
            A.RandomCrop(height=height, width=width),
            *flip,
            *normalise,
        ]
    )


class DownstreamTransform:
    """``datasets.Dataset.with_transform`` function: decode, augment and tensorise a batch of examples.

    Returns ``{"pixel_values": [(3, H, W) float tensors], "labels": [class ids | (H, W) long tensors]}``. The
    albumentations pipeline is reseeded from ``(seed, rank, DataLoader worker seed)`` the first time it runs in a
    new process or worker, so workers draw different augmentations and a run is reproducible (one
    ``Compose(seed=...)`` would give every worker the same stream).
    """

    def __init__(
        self,
        task: str,
        transform: A.Compose,
        *,
        image_column: str,
        label_column: str,
        reduce_labels: bool = False,
        ignore_index: int = 255,
        seed: int = 0,
        rank: int = 0,
    ) -> None:
        if task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {task!r}")
        self.task = task
        self.transform = transform
        self.image_column = image_column
        self.label_column = label_column
        self.reduce_labels = reduce_labels
        self.ignore_index = ignore_index
        self.seed = seed
        self.rank = rank
        self._seeded_for: tuple | None = None

    def _ensure_seeded(self) -> None:
        context = worker_context()
        if context != self._seeded_for:
            seed_view_transform(self.transform, np.random.SeedSequence([self.seed, self.rank, context[2] or 0]))
            self._seeded_for = context

    def _label_map(self, value: Any) -> np.ndarray:
        label = np.asarray(value)
        if label.ndim == 3 and label.shape[-1] == 1:
            label = label[..., 0]
        if label.ndim != 2:
            raise ValueError(f"a segmentation label map must be single-channel, got shape {label.shape}")
        label = label.astype(np.int64 if label.max(initial=0) > 255 else np.uint8)
        if self.reduce_labels:
            reduced = label.astype(np.int64) - 1
            reduced[(label == 0) | (label == self.ignore_index)] = self.ignore_index
            label = reduced.astype(np.uint8 if self.ignore_index <= 255 else np.int64)
        return label

    def __call__(self, batch: Mapping[str, list]) -> dict[str, list[torch.Tensor]]:
        self._ensure_seeded()
        pixel_values, labels = [], []
        for image, label in zip(batch[self.image_column], batch[self.label_column], strict=True):
            array = to_rgb_uint8(image, min_size=1)
            if self.task == "classification":
                pixel_values.append(self.transform(image=array)["image"])
                labels.append(torch.tensor(int(label), dtype=torch.long))
                continue
            mask = self._label_map(label)
            if mask.shape != array.shape[:2]:
                raise ValueError(f"image {array.shape[:2]} and label map {mask.shape} differ in size")
            out = self.transform(image=array, mask=mask)
            pixel_values.append(out["image"])
            labels.append(torch.as_tensor(out["mask"]).long())
        return {"pixel_values": pixel_values, "labels": labels}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(task={self.task!r}, seed={self.seed}, rank={self.rank})"


def collate_downstream(examples: Sequence[Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Stack ``pixel_values`` and ``labels`` of examples made by :class:`DownstreamTransform`."""
    if not examples:
        raise ValueError("cannot collate an empty list of examples")
    return {
        "pixel_values": torch.stack([example["pixel_values"] for example in examples]),
        "labels": torch.stack([example["labels"] for example in examples]),
    }
