"""The model side of fine-tuning: the checkpoint with a new head, its input geometry, and the image processor
saved with it."""

from __future__ import annotations

from collections import Counter
from typing import Any

from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModelForImageClassification,
    AutoModelForSemanticSegmentation,
    PretrainedConfig,
    PreTrainedModel,
    SegformerImageProcessorPil,
    ViTImageProcessorPil,
)
from transformers.image_utils import PILImageResampling

from ..argument_checks import ArgumentError, check_model_path, parse_config_overrides
from ..evaluation.loading import InputSpec
from .arguments import FinetuneModelArguments

__all__ = [
    "describe_protocol",
    "image_processor_for",
    "input_spec",
    "load_config",
    "load_model",
    "summarise_keys",
]


def load_config(model_args: FinetuneModelArguments) -> PretrainedConfig:
    """The checkpoint's config; a missing or unreadable checkpoint is a one-line `ArgumentError`."""
    check_model_path(model_args.model)
    try:
        return AutoConfig.from_pretrained(
            model_args.model, revision=model_args.revision, trust_remote_code=model_args.trust_remote_code
        )
    except (OSError, ValueError) as error:
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ArgumentError(f"--model {model_args.model}: cannot load a config ({first})") from error


def load_model(
    model_args: FinetuneModelArguments,
    id2label: dict[int, str],
    task: str,
    config: PretrainedConfig | None = None,
) -> tuple[PreTrainedModel, list[str]]:
    """The checkpoint with a ``num_labels`` head for ``task``, and the parameter names it had to initialise."""
    hub_kwargs: dict[str, Any] = {"revision": model_args.revision, "trust_remote_code": model_args.trust_remote_code}
    config = config if config is not None else load_config(model_args)
    is_equirecon = config.model_type == "equirecon"
    overrides: dict[str, Any] = {
        "num_labels": len(id2label),
        "id2label": {int(k): v for k, v in id2label.items()},
        "label2id": {v: int(k) for k, v in id2label.items()},
    }
    if task == "classification":
        overrides["problem_type"] = "single_label_classification"
    equirecon_only = {
        "segmentation_head": model_args.segmentation_head,
        "out_indices": model_args.out_indices,
        "use_auxiliary_head": model_args.use_auxiliary_head,
    }
    given = {key: value for key, value in equirecon_only.items() if value is not None}
    if given and not is_equirecon:
        raise ArgumentError(
            f"--{next(iter(given))} applies to EquiRecon checkpoints; {model_args.model} is {config.model_type}"
        )
    overrides.update(given)
    if is_equirecon and task == "segmentation" and "segmentation_head" not in given:
        # A pretraining checkpoint's `segmentation_head` is only the config default, not a choice: start from the
        # light DINOv2 linear protocol; a segmentation checkpoint keeps the head its weights are for.
        if "EquiReconForSemanticSegmentation" not in (config.architectures or []):
            overrides["segmentation_head"] = "linear"
    extra = parse_config_overrides(model_args.config_overrides)
    unknown = sorted(key for key in extra if not hasattr(config, key))
    if unknown:
        raise ArgumentError(f"--config_overrides: {config.model_type} configs have no field(s) {unknown}")
    overrides.update(extra)
    if is_equirecon:
        overrides["freeze_backbone"] = model_args.freeze_backbone
    auto_class = AutoModelForImageClassification if task == "classification" else AutoModelForSemanticSegmentation
    try:
        model, info = auto_class.from_pretrained(
            model_args.model,
            ignore_mismatched_sizes=model_args.ignore_mismatched_sizes,
            output_loading_info=True,
            **hub_kwargs,
            **overrides,
        )
    except ValueError as error:  # unsupported architecture, bad config override
        raise ArgumentError(f"--model {model_args.model}: {str(error).splitlines()[0]}") from error
    except RuntimeError as error:  # size mismatch of an existing head
        raise ArgumentError(
            f"--model {model_args.model}: its head does not fit {len(id2label)} classes; pass "
            "--ignore_mismatched_sizes to start a new head"
        ) from error
    if model_args.freeze_backbone:
        if hasattr(model, "freeze_backbone"):
            model.freeze_backbone()
        else:  # a non-EquiRecon model: freeze its base model, train what sits on top
            model.base_model.requires_grad_(False)
    new = sorted(set(info["missing_keys"]) | {key for key, *_ in info.get("mismatched_keys", [])})
    return model, new


def summarise_keys(keys: list[str]) -> str:
    """``['classifier.bias', 'classifier.weight']`` → ``'classifier (2 tensors)'``."""
    groups = Counter(key.split(".")[0] for key in keys)
    return ", ".join(f"{name} ({count} tensor{'s' if count > 1 else ''})" for name, count in sorted(groups.items()))


def input_spec(model_args: FinetuneModelArguments, model: PreTrainedModel) -> InputSpec:
    try:
        processor = AutoImageProcessor.from_pretrained(
            model_args.model, revision=model_args.revision, trust_remote_code=model_args.trust_remote_code
        )
    except (OSError, ValueError, KeyError):  # no preprocessor_config.json: the config's size, ImageNet statistics
        processor = None
    return InputSpec.from_model(model, processor).with_size(model_args.image_size)


def image_processor_for(task: str, spec: InputSpec, reduce_labels: bool = False) -> Any:
    """The stock image processor saved with the fine-tuned model: resize to the training size, normalise.

    Classification gets a ``ViTImageProcessor``. Segmentation gets a ``SegformerImageProcessor``, the same
    resize/normalise plus the ``post_process_semantic_segmentation`` that ``pipeline("image-segmentation")`` calls
    (``ViTImageProcessor`` has none). The PIL classes are built (no torchvision needed, no fallback warning); they
    save the stock ``image_processor_type``, so ``AutoImageProcessor`` picks the torchvision backend where it exists.
    """
    height, width = spec.image_size
    common = {
        "do_resize": True,
        "size": {"height": height, "width": width},
        "resample": PILImageResampling.BILINEAR,
        "do_rescale": True,
        "do_normalize": True,
        "image_mean": list(spec.image_mean),
        "image_std": list(spec.image_std),
    }
    if task == "classification":
        return ViTImageProcessorPil(**common)
    return SegformerImageProcessorPil(**common, do_reduce_labels=reduce_labels)


def describe_protocol(model_args: FinetuneModelArguments, model: PreTrainedModel) -> str:
    probe = "linear probe (encoder frozen)" if model_args.freeze_backbone else "full fine-tuning"
    if model_args.freeze_backbone and model_args.task == "classification":
        start = "logistic regression on its frozen features" if model_args.head_init == "probe" else "random"
        probe = f"linear probe (encoder frozen, head started from {start})"
    if model_args.task == "segmentation" and getattr(model.config, "segmentation_head", None):
        head = (
            "linear head on the last layer's patch grid"
            if model.config.segmentation_head == "linear"
            else (f"UPerNet head on layers {model.config.segmentation_out_indices}")
        )
        return f"{probe}, {head}"
    return f"{probe}, linear classifier on the CLS token and the mean patch token"
