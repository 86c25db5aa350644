"""Arguments of `equirecon evaluate equivariance|knn|linear`, as dataclasses for `HfArgumentParser`: the model,
data and run arguments every task shares, then each task's own."""

from __future__ import annotations

from dataclasses import dataclass, field

from .features import FEATURE_KINDS

__all__ = [
    "DEFAULT_PRECISION",
    "DEFAULT_SEED",
    "TASK_ARGUMENTS",
    "EquivarianceArguments",
    "EvaluateDataArguments",
    "EvaluateModelArguments",
    "EvaluateRunArguments",
    "KNNArguments",
    "LinearArguments",
]

_EQUIVARIANCE_FAMILIES = ("rotation", "color", "blur", "translation", "se2")


#: `--precision`'s default, which `equirecon pretrain`'s closing benchmark uses too.
DEFAULT_PRECISION = "auto"
#: `--seed`'s default: the seed of `equirecon pretrain`'s closing benchmark, so the card and the command agree.
DEFAULT_SEED = 0


@dataclass
class EvaluateModelArguments:
    """The frozen encoder to evaluate."""

    model: str = field(metadata={"help": "Checkpoint directory or Hub repository id."})
    revision: str | None = field(default=None, metadata={"help": "Hub revision (branch, tag or commit) of --model."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow custom modelling code from the Hub."})
    image_size: int | None = field(default=None, metadata={"help": "Input resolution (default: the checkpoint's)."})
    device: str = field(default="auto", metadata={"help": "'auto' (CUDA if available), 'cpu', 'cuda:0', ..."})
    dtype: str | None = field(
        default=None, metadata={"help": "Model weights' dtype on load.", "choices": ["float32", "bfloat16", "float16"]}
    )
    batch_size: int = field(default=64, metadata={"help": "Images per forward pass."})
    precision: str = field(
        default=DEFAULT_PRECISION,
        metadata={
            "help": "Arithmetic of the forward passes (and the θ regressors' training steps): 'auto' is bfloat16 "
            "autocast where the device has bfloat16 matrix units (CUDA, CPUs with AMX), else float32.",
            "choices": ["auto", "float32", "bfloat16"],
        },
    )
    reference: str = field(
        default="random",
        metadata={
            "help": "The control scored next to --model, on the same data: 'random' (the model's architecture at "
            "random initialisation, seeded by --seed), a checkpoint (e.g. the one --model was trained from), or "
            "'none'."
        },
    )


@dataclass
class EvaluateDataArguments:
    """The images: a dataset, its splits and columns."""

    dataset: str | None = field(
        default=None,
        metadata={
            "help": "equivariance: 'embedded' (bundled photos; default), an image folder, Parquet, or a Hub dataset. "
            "knn/linear: 'digits' (default) or 'lfw_subset' (offline built-ins), an image folder with class "
            "sub-folders, a saved dataset, Parquet, or a Hub dataset."
        },
    )
    split: str = field(
        default="train", metadata={"help": "Dataset split to use (to fit the probes or the θ regressor on)."}
    )
    test_split: str | None = field(
        default=None,
        metadata={
            "help": "Held-out split. knn/linear default: the dataset's evaluation split, else part of --split. "
            "equivariance: the regressor is fitted on --split and scored on this split's images (the paper's "
            "protocol); without it, cross-validated over --split (--group_by)."
        },
    )
    image_column: str | None = field(default=None, metadata={"help": "Image column (default: found automatically)."})
    label_column: str = field(default="label", metadata={"help": "knn/linear: column with the class labels."})
    test_fraction: float = field(
        default=0.25, metadata={"help": "knn/linear: fraction held out without a held-out split."}
    )
    max_images: int | None = field(default=None, metadata={"help": "Use at most this many images per split."})


@dataclass
class EvaluateRunArguments:
    """Reproducibility and output."""

    seed: int = field(default=DEFAULT_SEED, metadata={"help": "Seed of splits, subsets and fits."})
    output: str | None = field(default=None, metadata={"help": "Write the results JSON here (else print it)."})
    no_progress: bool = field(default=False, metadata={"help": "Hide progress bars."})


@dataclass
class EquivarianceArguments:
    """R² of regressing transformation parameters from (I, g(I)) features (paper Table 1): for each family, regress
    θ from the frozen features of a crop and its transformed copy with SIE's MLP; report R² on crops the regressor
    was not fitted on: of held-out images with --test_split (the paper's protocol), else cross-validated by crop or
    by photo (--group_by)."""

    families: list[str] = field(
        default_factory=lambda: ["rotation", "color", "blur", "translation"],
        metadata={"help": "Transformation families (default: the paper's four).", "choices": _EQUIVARIANCE_FAMILIES},
    )
    feature: str = field(
        default="auto",
        metadata={
            "help": "auto (mean_patch, for every model), pooled, invariant, equivariant, cls, mean_patch "
            "or cls+mean_patch.",
            "choices": ("auto", *FEATURE_KINDS),
        },
    )
    num_crops: int = field(default=4096, metadata={"help": "Crops (each with its own θ), drawn over the photos."})
    folds: int = field(
        default=5, metadata={"help": "Cross-validation folds (with --test_split: 1/folds stops the fit)."}
    )
    group_by: str = field(
        default="auto",
        metadata={
            "help": "Folds of crops (θ read within photos the regressor has seen other crops of: not held out) or of "
            "photos (R² on photos the regressor never saw). auto: crop for a few photos, photo for fashion_mnist. "
            "Ignored with --test_split, which holds out whole images.",
            "choices": ("auto", "crop", "photo"),
        },
    )
    scored_folds: int | None = field(
        default=1,
        metadata={
            "help": "Folds fitted and scored: 1 (default) is one split, the regressor fitted on 3/5 of the crops, "
            "stopped on 1/5 and scored on 1/5; --scored_folds 5 (= --folds) scores every crop, at 5 times the cost."
        },
    )
    crop_scale: list[float] | None = field(
        default=None,
        metadata={
            "help": "Crop area range MIN MAX, as a fraction of the largest crop of the photo (default 0.25 1; 1 1, "
            "the whole image, for fashion_mnist)."
        },
    )
    border: str = field(
        default="auto",
        metadata={
            "help": "What rotation/translation bring in at the crop border: the surrounding photo (context; θ cannot "
            "be read off black corners) or black fill. auto: context, or fill for fashion_mnist, whose objects lie "
            "on black.",
            "choices": ("auto", "context", "fill"),
        },
    )
    per_output: bool = field(
        default=False, metadata={"help": "Report the mean of per-parameter R² instead of SIE's global-mean R²."}
    )
    epochs: int = field(default=100, metadata={"help": "Regressor epochs at most (early stopping decides)."})
    patience: int = field(default=10, metadata={"help": "Stop the regressor after this many epochs without gain."})
    regressor_batch_size: int = field(default=256, metadata={"help": "Regressor batch size."})
    learning_rate: float = field(default=1e-3, metadata={"help": "Regressor Adam learning rate."})
    no_standardize: bool = field(default=False, metadata={"help": "Fit on raw features and θ, exactly as SIE."})
    cache_dir: str | None = field(default=None, metadata={"help": "Cache features here across runs."})
    plot: str | None = field(default=None, metadata={"help": "Bar-chart PNG (default: next to --output)."})
    no_plot: bool = field(default=False, metadata={"help": "Do not write the PNG."})

    def __post_init__(self) -> None:
        if self.crop_scale is not None and len(self.crop_scale) != 2:
            raise ValueError(f"--crop_scale takes two numbers (MIN MAX), got {self.crop_scale}")


_PROBE_FEATURE_HELP = "cls+mean_patch (default; mean_patch for models without CLS), cls, mean_patch, pooled, invariant"


@dataclass
class KNNArguments:
    """Weighted cosine k-NN accuracy on frozen features."""

    feature: str | None = field(
        default=None, metadata={"help": f"{_PROBE_FEATURE_HELP} or equivariant.", "choices": FEATURE_KINDS}
    )
    k: list[int] = field(default_factory=lambda: [20, 200], metadata={"help": "Numbers of neighbours."})
    temperature: float = field(default=0.07, metadata={"help": "Softmax temperature of the votes."})


@dataclass
class LinearArguments:
    """Logistic-regression probe on frozen features."""

    feature: str | None = field(
        default=None, metadata={"help": f"{_PROBE_FEATURE_HELP} or equivariant.", "choices": FEATURE_KINDS}
    )
    weight_decays: list[float] | None = field(
        default=None, metadata={"help": "L2 penalties to choose from on a validation split (default: 1e-6 ... 1)."}
    )
    max_iter: int = field(default=200, metadata={"help": "L-BFGS iterations per fit."})


#: Each task's own arguments, after the model, data and run arguments every task shares.
TASK_ARGUMENTS = {"equivariance": EquivarianceArguments, "knn": KNNArguments, "linear": LinearArguments}
