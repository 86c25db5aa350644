"""Model cards for what equirecon trains, built from a run directory's measured results (never typed by hand).

Sources in the directory: `config.json`, `equirecon_run.json` (written by `equirecon pretrain`), and
`equivariance_results.json` (the equivariance benchmark, written by `equirecon pretrain` or
`equirecon evaluate equivariance --output`, with its `model-index` entries under `eval_results`).
"""

from __future__ import annotations

import json
import math
import os
from importlib import resources
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

RUN_FILE = "equirecon_run.json"
EQUIVARIANCE_FILE = "equivariance_results.json"
CARD_FILE = "README.md"

_OBJECTIVE_NAMES = {"vicreg": "VICReg", "simclr": "SimCLR"}
_PARAMETER_UNITS = {
    "rotation_range": "angle {}° (counter-clockwise > 0)",
    "translation_range": "shift {} px at 224²",
    "brightness_range": "brightness offset {}",
    "contrast_range": "contrast offset {}",
    "saturation_range": "saturation offset {}",
    "hue_range": "hue offset {}",
    "blur_sigma_range": "blur σ {} px at 224²",
}
_FAMILY_RANGES = {
    "rotation": ("rotation_range",),
    "translation": ("translation_range",),
    "se2": ("rotation_range", "translation_range"),
    "color": ("brightness_range", "contrast_range", "saturation_range", "hue_range"),
    "blur": ("blur_sigma_range",),
}


def _read_json(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _transformation_ranges(transformation: dict[str, Any]) -> str:
    families = transformation.get("components") or [transformation["family"]]
    names = [name for family in families for name in _FAMILY_RANGES.get(family, ())]
    parts = []
    for name in names:
        low, high = transformation.get(name, (None, None))
        if low is not None:
            parts.append(_PARAMETER_UNITS[name].format(f"in [{low:g}, {high:g}]"))
    return "; ".join(parts) or "default ranges of the paper's Table 2"


def _training_summary(run: dict[str, Any] | None) -> str:
    if run is None:
        return "No `equirecon_run.json` in this directory: the training recipe was not recorded."
    data, training = run["data_arguments"], run["training_arguments"]
    dataset = data["dataset"]
    dataset_text = (
        "the natural photos bundled with scikit-image and scikit-learn (`equirecon` embedded dataset; validation "
        "photos held out by photo)"
        if dataset == "embedded"
        else f"`{dataset}` (split `{data['train_split']}`)"
    )
    lr = training.get("learning_rate")
    lines = [
        f"- Data: {dataset_text}.",
        f"- Base views: `{training.get('view_preset', 'all')}` augmentations; g applied on the device per batch.",
        f"- {training['max_steps']} optimizer steps, effective batch {run['effective_batch_size']} "
        f"({run['world_size']} process(es)), AdamW lr {lr:.3g}, weight decay {training.get('weight_decay')}, "
        f"{training.get('lr_scheduler_type')} schedule, seed {training.get('seed')}.",
        f"- Wall time: {run['wall_time_seconds'] / 60:.1f} min.",
    ]
    losses = run.get("final_train_losses") or {}
    if losses:
        lines.append("- Last logged training losses: " + ", ".join(f"{k} {v:.4f}" for k, v in losses.items()) + ".")
    metrics = run.get("metrics") or {}
    evaluation = {
        k: v for k, v in metrics.items() if k.startswith("eval_") and k.endswith("loss") and "copy_" not in k
    }
    if evaluation:
        lines.append("- Held-out losses: " + ", ".join(f"{k} {v:.4f}" for k, v in sorted(evaluation.items())) + ".")
    controls = _reconstruction_controls(metrics)
    if controls:
        lines.append(controls)
    return "\n".join(lines)


def _reconstruction_controls(metrics: dict[str, Any]) -> str | None:
    """Whether the decoders beat the trivial answers (each target := view 2, := view 1) on the held-out pairs."""
    loss = metrics.get("eval_reconstruction_loss")
    copies = {view: metrics.get(f"eval_copy_{view}_loss") for view in ("view2", "view1")}
    if loss is None or None in copies.values():
        return None
    beaten = [view for view, value in copies.items() if loss < value]
    verdict = (
        "the decoders beat both copy baselines"
        if len(beaten) == 2
        else "the decoders do **not** beat "
        + " or ".join(f"copying {view.replace('view', 'view ')}" for view in copies if view not in beaten)
        + ": they have not learnt the in-between states, and the equivariance results below should be read with "
        "that in mind"
    )
    return (
        f"- Reconstruction control (held-out pairs): decoders {loss:.4f}; answering every target with view 2 itself "
        f"{copies['view2']:.4f}, with view 1 {copies['view1']:.4f}: {verdict}."
    )


def _r2_row(label: str, result: dict[str, Any], families: list[str], key: str = "r2") -> str:
    values = result.get(key) or {}
    cells = [f"{values[f]:.3f}" if f in values else "–" for f in families]
    mean = sum(values[f] for f in families) / len(families) if all(f in values for f in families) else None
    return f"| {label} | " + " | ".join(cells) + (f" | {mean:.3f} |" if mean is not None else " | – |")


def _evaluation_summary(equivariance: dict[str, Any] | None) -> str:
    if equivariance is None:
        return (
            "Not evaluated yet. Run `equirecon evaluate equivariance --model DIR --output "
            f"DIR/{EQUIVARIANCE_FILE}` and `equirecon model-card DIR` to add the results."
        )
    families = list(equivariance["r2"])
    settings = equivariance.get("settings", {})
    read_outs = equivariance.get("read_outs") or {equivariance["feature"]: equivariance}
    reference = equivariance.get("random_init") or {}
    header = "| model, features | " + " | ".join(f"R² {f}" for f in families) + " | mean |"
    rows = [header, "|---" * (len(families) + 2) + "|"]
    for feature, result in read_outs.items():
        rows.append(_r2_row(f"this model, {feature}", result, families))
        if feature in reference:
            rows.append(_r2_row(f"random initialisation, {feature}", reference[feature], families))
    for feature, result in read_outs.items():
        if result.get("shuffled_r2"):
            rows.append(_r2_row(f"θ-shuffled control (chance), {feature}", result, families, key="shuffled_r2"))
    setting_text = ", ".join(f"{k}={v}" for k, v in settings.items() if not isinstance(v, (dict, list)))
    table = "\n".join(rows)
    return (
        "The paper's synthetic equivariance benchmark: g with a random θ is applied to held-out images, the frozen "
        "encoder embeds I and g_θ(I), and an MLP regresses θ from the pair; R² on held-out photos "
        f"({equivariance.get('r2_convention', 'global')} R², as SIE). Read-outs: `mean_patch` is the backbone's mean "
        "patch token, `equivariant` the mean of the head's equivariant part. The random initialisation (same config "
        "and seed, untrained) and the regressor fitted on shuffled θ are the controls: a trained row says something "
        f"only where it clears both.\n\n{table}\n\nSettings: {setting_text or 'defaults'}."
    )


def build_model_card(model_dir: str | Path, model_name: str | None = None, repo_id: str | None = None) -> ModelCard:
    """The card of a saved EquiRecon model directory."""
    directory = Path(model_dir)
    config = _read_json(directory / "config.json")
    if config is None or config.get("model_type") != "equirecon":
        raise ValueError(
            f"{directory} has no EquiRecon config.json (model_type 'equirecon'); is it a model directory?"
        )
    run = _read_json(directory / RUN_FILE)
    equivariance = _read_json(directory / EQUIVARIANCE_FILE)
    backbone = config["backbone_config"]
    transformation = config.get("transformation") or {"family": "se2"}
    objective = _OBJECTIVE_NAMES.get(config["ssl_objective"], config["ssl_objective"])
    dataset = (run or {}).get("data_arguments", {}).get("dataset", "embedded")
    name = model_name or directory.resolve().name

    card_data = ModelCardData(
        license="apache-2.0",
        library_name="transformers",
        pipeline_tag="image-feature-extraction",
        tags=[
            "vision",
            "self-supervised-learning",
            "equivariance",
            "equirecon",
            "custom_code",
            config["ssl_objective"],
        ],
        datasets=[dataset] if dataset != "embedded" else None,
        model_name=name,
        # Written next to the results by the benchmark itself (EquivarianceResult.to_eval_results).
        eval_results=[EvalResult(**entry) for entry in (equivariance or {}).get("eval_results", [])] or None,
    )
    template = resources.files("equirecon").joinpath("templates/model_card.md").read_text()
    d_patch, d_equi = config["d_patch"], config["d_equi"]
    return ModelCard.from_template(
        card_data,
        template_str=template,
        model_name=name,
        repo_id=repo_id or str(directory),
        backbone_type=backbone["model_type"],
        num_layers=backbone["num_hidden_layers"],
        hidden_size=backbone["hidden_size"],
        patch_size=backbone["patch_size"],
        image_size=backbone["image_size"],
        ssl_objective_name=objective,
        d_patch=d_patch,
        d_inv=d_patch - d_equi,
        d_equi=d_equi,
        num_intermediates=config["num_intermediates"],
        reconstruction_weight=config["reconstruction_weight"],
        transformation_family=transformation["family"],
        transformation_ranges=_transformation_ranges(transformation),
        training_summary=_training_summary(run),
        evaluation_summary=_evaluation_summary(equivariance),
        limitations=(
            "- Pretrained at small scale unless the training section says otherwise: the paper's effect sizes "
            "(ImageNet-1k, 800 epochs) are not to be expected from a CPU run; read the measured R² above.\n"
            "- Equivariance is learned only for the transformation family it was trained with, within its ranges.\n"
            "- The invariant part inherits the biases of the pretraining images."
        ),
    )


def write_model_card(model_dir: str | Path, model_name: str | None = None, repo_id: str | None = None) -> Path:
    """Write `README.md` (the Hub's model card) into `model_dir`; returns its path."""
    card = build_model_card(model_dir, model_name=model_name, repo_id=repo_id)
    path = Path(model_dir) / CARD_FILE
    card.save(path)
    return path


# ------------------------------------------------------------------------------------------- fine-tuned models

#: The pipeline task of each fine-tuning task.
PIPELINE_TASKS = {"classification": "image-classification", "segmentation": "image-segmentation"}
# Metrics written to the model card's model-index: (key without "eval_", display name).
_CARD_METRICS = {
    "classification": [("accuracy", "Accuracy"), ("mean_class_accuracy", "Mean per-class accuracy")],
    "segmentation": [
        ("mean_iou", "Mean IoU"),
        ("mean_accuracy", "Mean accuracy"),
        ("overall_accuracy", "Pixel accuracy"),
    ],
}


def write_finetuned_model_card(
    trainer: Any,
    *,
    task: str,
    base_model: str,
    linear_probe: bool,
    description: str,
    data: Any,
    metrics: dict[str, float],
) -> Path:
    """The card of a fine-tuned model: ``Trainer.create_model_card`` (hyperparameters, training log, framework
    versions, model-index), with its "More information needed" sections filled from the run: what was fine-tuned
    how (``description``), on which data (``data``: ``name``, ``description``, ``eval_split``, ``id2label``,
    ``builtin``), with which measured results (``metrics``, Trainer's ``eval_*``)."""
    local_base = os.path.isdir(base_model)
    tags = ["equirecon", "vision", PIPELINE_TASKS[task], "linear-probe" if linear_probe else "fine-tuned"]
    trainer.create_model_card(
        model_name=Path(trainer.args.output_dir).name,
        finetuned_from=None if local_base else base_model,
        tasks=PIPELINE_TASKS[task],
        dataset=data.name,
        dataset_tags=data.name,  # without a tag Trainer writes an empty model-index
        tags=tags,
    )
    path = Path(trainer.args.output_dir) / "README.md"
    card = path.read_text()
    base = f"the local checkpoint `{base_model}`" if local_base else f"`{base_model}`"
    default_note = (
        " No `--dataset` was given, so the built-in offline default was used; the figures show that the pipeline "
        "works, not what the encoder is worth on real data."
        if data.builtin
        else ""
    )
    description = f"{type(trainer.model).__name__} fine-tuned from {base}: {description}"
    uses = (
        f"```python\nimport equirecon  # or trust_remote_code=True without the package\nfrom transformers import "
        f'pipeline\n\npipe = pipeline("{PIPELINE_TASKS[task]}", model="{trainer.args.output_dir}")\n```'
    )
    data_text = f"{data.description}.{default_note}"
    results = _results_table(task, data.id2label, metrics)
    replacements = {
        "trained from scratch on": f"fine-tuned from {base} on",
        "## Model description\n\nMore information needed": f"## Model description\n\n{description}",
        "## Intended uses & limitations\n\nMore information needed": f"## Intended uses & limitations\n\n{uses}",
        "## Training and evaluation data\n\nMore information needed": (
            f"## Training and evaluation data\n\n{data_text}\n\n{results}"
        ),
    }
    for old, new in replacements.items():
        if old in card:
            card = card.replace(old, new, 1)
        elif old.startswith("##"):  # a future transformers changed its template: keep the information anyway
            card += f"\n{new}\n"
    model_card = ModelCard(card)
    # Trainer's model-index only knows a fixed list of metric names (no mean IoU): write our own results.
    model_card.data.eval_results = [
        EvalResult(
            task_type=PIPELINE_TASKS[task],
            task_name=PIPELINE_TASKS[task].replace("-", " ").capitalize(),
            dataset_type=data.name,
            dataset_name=data.name,
            dataset_split=data.eval_split,
            metric_type=metric,
            metric_name=label,
            metric_value=float(metrics[f"eval_{metric}"]),
        )
        for metric, label in _CARD_METRICS[task]
        if math.isfinite(metrics.get(f"eval_{metric}", float("nan")))
    ]
    model_card.data.model_name = Path(trainer.args.output_dir).name
    model_card.save(path)
    return path


def _results_table(task: str, id2label: dict[int, str], metrics: dict[str, float]) -> str:
    if task == "classification":
        return (
            "| metric | value |\n|---|---|\n"
            f"| accuracy | {metrics.get('eval_accuracy', float('nan')):.4f} |\n"
            f"| mean per-class accuracy | {metrics.get('eval_mean_class_accuracy', float('nan')):.4f} |"
        )
    rows = ["| class | IoU | accuracy |", "|---|---|---|"]
    for _, name in sorted(id2label.items()):
        iou, accuracy = (
            metrics.get(f"eval_iou_{name}", float("nan")),
            metrics.get(f"eval_accuracy_{name}", float("nan")),
        )
        rows.append(f"| {name} | {iou:.4f} | {accuracy:.4f} |")
    rows.append(
        f"| **mean** | **{metrics.get('eval_mean_iou', float('nan')):.4f}** | "
        f"**{metrics.get('eval_mean_accuracy', float('nan')):.4f}** |"
    )
    note = "Absent classes (NaN) are left out of the means. Pixel accuracy: "
    return "\n".join(rows) + f"\n\n{note}{metrics.get('eval_overall_accuracy', float('nan')):.4f}."
