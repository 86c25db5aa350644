"""Fashion-MNIST (Xiao et al., 2017) as a named source, read from the IDX files a system package installs.

70,000 greyscale 28² photos of clothing (60,000 ``train``, 10,000 ``test``, 10 classes), each an upright object
centred on a black background. Its size is what the effect benchmark needs: pretraining, the θ regressor and its
scoring can each get images the others never saw (the paper's protocol), which a handful of photos cannot give.

The files are read, never downloaded: Debian's ``dataset-fashion-mnist`` package puts them in
:data:`DEFAULT_DIRECTORY` (``apt-get install dataset-fashion-mnist``); ``$EQUIRECON_FASHION_MNIST_DIR`` points
elsewhere (the four ``*-ubyte.gz`` files of the original release).

Each image is padded with 2 black pixels on every side to 32², so that models with 4- or 8-pixel patches see the
whole object; the padding is the images' own background, so it adds no edge. Images stay greyscale in the dataset
and become RGB where every image does (:func:`equirecon.imaging.decoding.to_rgb_uint8`).
"""

from __future__ import annotations

import gzip
import os
import pathlib

import datasets
import numpy as np

__all__ = [
    "CLASS_NAMES",
    "DEFAULT_DIRECTORY",
    "FASHION_MNIST",
    "check_installed",
    "fashion_mnist",
    "fashion_mnist_splits",
    "read_idx",
]

#: The name that selects this source wherever a dataset is named (``--dataset fashion_mnist``).
FASHION_MNIST = "fashion_mnist"
DEFAULT_DIRECTORY = pathlib.Path("/usr/share/datasets/fashion-mnist")
CLASS_NAMES: tuple[str, ...] = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
_PAD = 2  # 28² → 32²
# IDX type codes (http://yann.lecun.com/exdb/mnist/, "THE IDX FILE FORMAT"); Fashion-MNIST uses unsigned bytes.
_IDX_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """The array stored in an IDX file (gzip-compressed when its name ends in ``.gz``)."""
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as handle:
        data = handle.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_TYPES:
        raise ValueError(f"{path} is not an IDX file (its first bytes are {data[:4]!r})")
    ndim = data[3]
    header = 4 + 4 * ndim
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_IDX_TYPES[data[2]])
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(data) - header != expected:
        raise ValueError(
            f"{path}: the header gives shape {shape} ({expected} bytes), the file has {len(data) - header}"
        )
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)


def _directory(directory: str | os.PathLike | None) -> pathlib.Path:
    return pathlib.Path(directory or os.environ.get("EQUIRECON_FASHION_MNIST_DIR") or DEFAULT_DIRECTORY)


def _paths(split: str, directory: str | os.PathLike | None) -> tuple[pathlib.Path, pathlib.Path]:
    if split not in _FILES:
        raise ValueError(f"Fashion-MNIST has the splits {sorted(_FILES)}, not {split!r}")
    root = _directory(directory)
    paths = tuple(root / name for name in _FILES[split])
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(
            f"Fashion-MNIST is not installed: {missing[0]} does not exist. Install Debian's package "
            "(`apt-get install dataset-fashion-mnist`) or set EQUIRECON_FASHION_MNIST_DIR to a folder holding the "
            "four *-ubyte.gz files."
        )
    return paths  # type: ignore[return-value]


def check_installed(directory: str | os.PathLike | None = None) -> None:
    """Raise ``FileNotFoundError`` naming the package to install when a split's files are missing."""
    for split in _FILES:
        _paths(split, directory)


def _examples(images_path: str, labels_path: str):
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise ValueError(f"{images_path} and {labels_path} do not hold N images and N labels")
    padded = np.pad(images, ((0, 0), (_PAD, _PAD), (_PAD, _PAD)))
    for image, label in zip(padded, labels, strict=True):
        yield {"image": image, "label": int(label)}


def fashion_mnist(split: str = "train", directory: str | os.PathLike | None = None) -> datasets.Dataset:
    """One split (``"train"`` or ``"test"``) as a ``datasets.Dataset`` with ``image`` (greyscale 32², padded) and
    ``label`` (``ClassLabel``) columns. Built once and cached by ``datasets``, keyed by the files' size and time."""
    images_path, labels_path = _paths(split, directory)
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=list(CLASS_NAMES))})
    stamp = [(p.stat().st_size, p.stat().st_mtime_ns) for p in (images_path, labels_path)]
    dataset = datasets.Dataset.from_generator(
        _examples,
        features=features,
        gen_kwargs={"images_path": str(images_path), "labels_path": str(labels_path)},
        split=datasets.Split(split),
        # The cache key: the generator's code and arguments; the stamp makes new files a new dataset.
        fingerprint=datasets.fingerprint.Hasher.hash((split, str(images_path), stamp, _PAD)),
    )
    return dataset


def fashion_mnist_splits(directory: str | os.PathLike | None = None) -> datasets.DatasetDict:
    """Both splits, ``train`` and ``test``."""
    return datasets.DatasetDict({split: fashion_mnist(split, directory) for split in _FILES})


#: How the equivariance benchmark reads this data (:func:`equirecon.evaluation.equivariance.dataset_settings`):
#: each image whole (the object fills it: ``crop_scale`` 1), geometric g_θ filling black (the background every
#: object lies on, so black fill shows what the world around the object holds), folds of images (there are
#: thousands: no image is scored by a regressor that saw it), and "colour" as brightness and contrast alone
#: (saturation and hue do not change a greyscale image, so their θ could not be read from any feature).
EQUIVARIANCE_SETTINGS: dict = {
    "crop_scale": (1.0, 1.0),
    "border": "fill",
    "group_by": "photo",
    "family_ranges": {"color": {"saturation_range": (0.0, 0.0), "hue_range": (0.0, 0.0)}},
}
