"""Model cards for what equirecon trains, built from a model directory's files (never typed by hand).

One builder, `build_model_card(DIR)` (`write_model_card` saves it as `DIR/README.md`), for every kind of directory;
the config's `architectures` tell the kind, and the kind says which files the card is read from:

- a pretrained encoder (`EquiReconForPreTraining`, `EquiReconModel`): `config.json`, `equirecon_run.json` (written by
  `equirecon pretrain`) and `equivariance_results.json` (the equivariance benchmark, written by `equirecon pretrain`
  or `equirecon evaluate equivariance --output`, with its `model-index` entries under `eval_results`);
- a fine-tuned model (`…ForImageClassification`, `…ForSemanticSegmentation`): `config.json`, `equirecon_run.json`
  (written by `equirecon finetune`: base model, protocol, data, measured metrics, hyperparameters, training log).

Every card has the same metadata (license, library, pipeline tag of its task, tags, model-index), summary, model
description, usage snippet, the sections of its kind (training recipe and equivariance benchmark; data, results
and training procedure) and limitations, in the one template `templates/model_card.md`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData
from transformers.modelcard import make_markdown_table, parse_log_history

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


def _ssl_input(objective: str) -> str:
    """What the host objective reads: the DINO family distils the CLS token (iBOT and DINOv2 also masked patches)."""
    if objective == "dino":
        return "the CLS token (EMA-teacher distillation)"
    if objective in ("ibot", "dinov2"):
        return "the CLS and masked patch tokens (EMA-teacher distillation)"
    return "the mean of the patch tokens"


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
        "photos held out from pretraining)"
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
    start = run.get("init_from")
    if start:  # a warm start (`equirecon pretrain --init_from`)
        lines.insert(
            0,
            f"- Encoder initialised from {_checkpoint_link(start)} ({start['model_type']}); the heads and decoders "
            "started at random.",
        )
    losses = run.get("final_train_losses") or {}
    if losses:
        lines.append("- Last logged training losses: " + ", ".join(f"{k} {v:.4f}" for k, v in losses.items()) + ".")
    metrics = run.get("metrics") or {}
    evaluation = {
        k: v
        for k, v in metrics.items()
        if k.startswith("eval_") and k.endswith("loss") and "copy_" not in k and "unpaired_" not in k
    }
    if evaluation:
        lines.append("- Held-out losses: " + ", ".join(f"{k} {v:.4f}" for k, v in sorted(evaluation.items())) + ".")
    controls = [_reconstruction_controls(metrics), _pairing_control(metrics)]
    lines += [line for line in controls if line]
    return "\n".join(lines)


def _checkpoint_link(start: dict[str, Any]) -> str:
    """A Hub checkpoint as a link, a local one as its path."""
    name = start["checkpoint"]
    return f"the local checkpoint `{name}`" if start["local"] else f"[`{name}`](https://huggingface.co/{name})"


def _reconstruction_controls(metrics: dict[str, Any]) -> str | None:
    """Whether the decoders beat the trivial answers (each target := view 2, := view 2 blurred, := view 1) on the
    held-out pairs."""
    loss = metrics.get("eval_reconstruction_loss")
    names = {"view2": "view 2", "blurred_view2": "a 5×5 box blur of view 2", "view1": "view 1"}
    copies = {key: metrics[f"eval_copy_{key}_loss"] for key in names if f"eval_copy_{key}_loss" in metrics}
    if loss is None or not copies:
        return None
    missed = [key for key, value in copies.items() if loss >= value]
    verdict = (
        f"the decoders beat all {len(copies)} copy baselines"
        if not missed
        else "the decoders do **not** beat "
        + " or ".join(f"copying {names[key]}" for key in missed)
        + ": they have not learnt the in-between states, and the equivariance results below should be read with "
        "that in mind"
    )
    answers = "; ".join(f"with {names[key]} {value:.4f}" for key, value in copies.items())
    return (
        f"- Reconstruction control (held-out pairs): decoders {loss:.4f}; answering every target {answers}: {verdict}."
    )


def _pairing_control(metrics: dict[str, Any]) -> str | None:
    """How much of the decoders' answer comes from the pair: their error when each pair's view 1 is another pair's."""
    loss, unpaired = metrics.get("eval_reconstruction_loss"), metrics.get("eval_unpaired_reconstruction_loss")
    if loss is None or unpaired is None:
        return None
    change = 100 * (unpaired - loss) / loss
    verdict = (
        f"without the true view 1 their error rises by {change:.1f} %" if change > 0 else "they do not read the pair"
    )
    return (
        f"- Pairing control (held-out pairs): decoders {loss:.4f}, given another pair's view 1 {unpaired:.4f}: "
        f"{verdict}. θ links the two views of a pair, so decoders that read θ from the pair lose accuracy without "
        "their own view 1; decoders that work from view 2 alone lose nothing."
    )


def _r2_row(label: str, result: dict[str, Any], families: list[str], key: str = "r2") -> str:
    values = result.get(key) or {}
    cells = [f"{values[f]:.3f}" if f in values else "–" for f in families]
    mean = sum(values[f] for f in families) / len(families) if all(f in values for f in families) else None
    return f"| {label} | " + " | ".join(cells) + (f" | {mean:.3f} |" if mean is not None else " | – |")


_REFERENCES = {
    "random initialisation": "random initialisation: the same config and seed, untrained",
}


def _evaluation_summary(equivariance: dict[str, Any] | None) -> str:
    if equivariance is None:
        return (
            "Not evaluated yet. Run `equirecon evaluate equivariance --model DIR --output "
            f"DIR/{EQUIVARIANCE_FILE}` and `equirecon model-card DIR` to add the results."
        )
    families = list(equivariance["r2"])
    settings = equivariance.get("settings", {})
    read_outs = equivariance.get("read_outs") or {equivariance["feature"]: equivariance}
    reference = equivariance.get("reference") or {}
    if "random_init" in equivariance:  # written before the reference could be a warm start's checkpoint
        reference = {"label": "random initialisation", "read_outs": equivariance["random_init"]}
    reference_label, reference = reference.get("label", ""), reference.get("read_outs", {})
    header = "| model, features | " + " | ".join(f"R² {f}" for f in families) + " | mean |"
    rows = [header, "|---" * (len(families) + 2) + "|"]
    for feature, result in read_outs.items():
        rows.append(_r2_row(f"this model, {feature}", result, families))
        if feature in reference:
            rows.append(_r2_row(f"{reference_label}, {feature}", reference[feature], families))
    for feature, result in read_outs.items():
        if result.get("shuffled_r2"):
            rows.append(_r2_row(f"θ-shuffled control (chance), {feature}", result, families, key="shuffled_r2"))
    setting_text = ", ".join(f"{k}={v}" for k, v in settings.items() if not isinstance(v, (dict, list)))
    table = "\n".join(rows)
    controls = (
        f"The model this run started from ({_REFERENCES.get(reference_label, reference_label)}) and the regressor "
        "fitted on shuffled θ are the controls: a trained row says something only where it clears both."
        if reference
        else "The regressor fitted on shuffled θ is the control: a row says something only where it clears it."
    )
    return (
        "The paper's synthetic equivariance benchmark: g with a random θ is applied to images, the frozen encoder "
        "embeds I and g_θ(I), and an MLP regresses θ from the pair; R² on images the regressor was not fitted on "
        f"({settings.get('protocol', 'held-out photos')}; {equivariance.get('r2_convention', 'global')} R², as SIE). Read-outs: `mean_patch` is the backbone's mean "
        f"patch token, `equivariant` the mean of the head's equivariant part. {controls}"
        f"\n\n{table}\n\nSettings: {setting_text or 'defaults'}."
    )


#: The pipeline task of each kind of model directory.
PIPELINE_TASKS = {
    "pretraining": "image-feature-extraction",
    "classification": "image-classification",
    "segmentation": "image-segmentation",
}
_HEAD_TASKS = {"ForImageClassification": "classification", "ForSemanticSegmentation": "segmentation"}
# Metrics written to a fine-tuned model's model-index: (key without "eval_", display name).
_CARD_METRICS = {
    "classification": [("accuracy", "Accuracy"), ("mean_class_accuracy", "Mean per-class accuracy")],
    "segmentation": [
        ("mean_iou", "Mean IoU"),
        ("mean_accuracy", "Mean accuracy"),
        ("overall_accuracy", "Pixel accuracy"),
    ],
}


@dataclass
class _CardContent:
    """What every card says, whatever the kind of model; the template lays it out."""

    tags: list[str]
    summary: str
    description: str
    usage: str
    sections: str
    limitations: str
    eval_results: list[EvalResult] | None
    datasets: list[str] | None = None
    metrics: list[str] | None = None
    base_model: str | None = None
    license: str | None = "apache-2.0"


def _model_task(config: dict[str, Any]) -> str:
    """`pretraining`, `classification` or `segmentation`: what the saved architecture was trained for."""
    architecture = (config.get("architectures") or [""])[0]
    return next((task for suffix, task in _HEAD_TASKS.items() if architecture.endswith(suffix)), "pretraining")


def build_model_card(model_dir: str | Path, model_name: str | None = None, repo_id: str | None = None) -> ModelCard:
    """The card of a model directory written by `equirecon pretrain`, `equirecon finetune` or save_pretrained."""
    directory = Path(model_dir)
    config = _read_json(directory / "config.json")
    if config is None:
        raise ValueError(f"{directory} has no EquiRecon config.json; is it a model directory?")
    task = _model_task(config)
    run = _read_json(directory / RUN_FILE)
    repo_id = repo_id or str(directory)
    if task == "pretraining":
        content = _pretrained_content(directory, config, run, repo_id)
    else:
        content = _finetuned_content(directory, config, task, run, repo_id)
    name = model_name or directory.resolve().name
    card_data = ModelCardData(
        license=content.license,
        library_name="transformers",
        pipeline_tag=PIPELINE_TASKS[task],
        tags=content.tags,
        datasets=content.datasets,
        metrics=content.metrics,
        base_model=content.base_model,
        model_name=name,
        eval_results=content.eval_results,
    )
    template = resources.files("equirecon").joinpath("templates/model_card.md").read_text()
    return ModelCard.from_template(
        card_data,
        template_str=template,
        model_name=name,
        summary=content.summary,
        description=content.description,
        usage=content.usage,
        sections=content.sections,
        limitations=content.limitations,
    )


def write_model_card(model_dir: str | Path, model_name: str | None = None, repo_id: str | None = None) -> Path:
    """Write `README.md` (the Hub's model card) into `model_dir`; returns its path."""
    card = build_model_card(model_dir, model_name=model_name, repo_id=repo_id)
    path = Path(model_dir) / CARD_FILE
    card.save(path)
    return path


# ----------------------------------------------------------------------------------------------- pretrained encoders


def _pretrained_content(
    directory: Path, config: dict[str, Any], run: dict[str, Any] | None, repo_id: str
) -> _CardContent:
    if config.get("model_type") != "equirecon":
        raise ValueError(
            f"{directory} has no EquiRecon config.json (model_type 'equirecon'); is it a model directory?"
        )
    equivariance = _read_json(directory / EQUIVARIANCE_FILE)
    backbone = config["backbone_config"]
    transformation = config.get("transformation") or {"family": "se2"}
    objective = _OBJECTIVE_NAMES.get(config["ssl_objective"], config["ssl_objective"])
    dataset = (run or {}).get("data_arguments", {}).get("dataset", "embedded")
    d_patch, d_equi = config["d_patch"], config["d_equi"]
    hidden_size, k = backbone["hidden_size"], config["num_intermediates"]
    start = (run or {}).get("init_from")
    return _CardContent(
        tags=[
            "vision",
            "self-supervised-learning",
            "equivariance",
            "equirecon",
            "custom_code",
            config["ssl_objective"],
        ],
        datasets=[dataset] if dataset != "embedded" else None,
        base_model=start["checkpoint"] if start and not start["local"] else None,
        # Written next to the results by the benchmark itself (EquivarianceResult.to_eval_results).
        eval_results=[EvalResult(**entry) for entry in (equivariance or {}).get("eval_results", [])] or None,
        summary=(
            f"An EquiRecon encoder: a {backbone['model_type']} Vision Transformer ({backbone['num_hidden_layers']} "
            f"layers, hidden size {hidden_size},\npatch {backbone['patch_size']}, {backbone['image_size']}×"
            f"{backbone['image_size']} inputs) pretrained with {objective} plus the\ntransformed-image reconstruction "
            "task of *Self-Supervised Learning Based on Transformed Image Reconstruction for\nEquivariance-Coherent "
            "Feature Representation* (Wang et al., AAAI 2026)."
        ),
        description=(
            f"A per-token linear head maps the encoder's tokens to {d_patch} channels, split in two:\n\n"
            "| part | channels | trained by | in the outputs |\n|---|---|---|---|\n"
            f"| invariant | {d_patch - d_equi} (first) | {objective} on {_ssl_input(objective)} | "
            "`invariant_embeds` |\n"
            f"| equivariant | {d_equi} (last) | {k} decoders reconstructing the images at θ·k/{k + 1}, k = 1..{k} | "
            "`equivariant_embeds` |\n\n"
            f"The invariant part is meant to ignore the transformation g = **{transformation['family']}**\n"
            f"({_transformation_ranges(transformation)}); the equivariant part to keep it, coherently with how the "
            f"image changes.\nReconstruction weight λ = {config['reconstruction_weight']}."
        ),
        usage=(
            "```python\nimport torch\nfrom transformers import AutoImageProcessor, AutoModel\n\n"
            f'processor = AutoImageProcessor.from_pretrained("{repo_id}")\n'
            f'model = AutoModel.from_pretrained("{repo_id}", trust_remote_code=True)  # or `pip install equirecon` '
            "and `import equirecon`\n"
            'inputs = processor(images=image, return_tensors="pt")\nwith torch.no_grad():\n'
            f"    outputs = model(**inputs)\ncls = outputs.pooler_output                 # (1, {hidden_size})\n"
            f"invariant = outputs.invariant_embeds        # (1, tokens, {d_patch - d_equi})\n"
            f"equivariant = outputs.equivariant_embeds    # (1, tokens, {d_equi})\n```\n\n"
            "`AutoModelForImageClassification` and `AutoModelForSemanticSegmentation` load the same weights with a "
            f"new head\n(`equirecon finetune classification|segmentation --model {repo_id}`)."
        ),
        sections=(
            f"## Training data and recipe\n\n{_training_summary(run)}\n\n"
            f"## Evaluation\n\n{_evaluation_summary(equivariance)}"
        ),
        limitations=(
            "- Pretrained at small scale unless the training section says otherwise: the paper's effect sizes "
            "(ImageNet-1k, 800 epochs) are not to be expected from a CPU run; read the measured R² above.\n"
            "- Equivariance is learned only for the transformation family it was trained with, within its ranges.\n"
            "- The invariant part inherits the biases of the pretraining images."
        ),
    )


# ------------------------------------------------------------------------------------------------ fine-tuned models


def _finetuned_content(
    directory: Path, config: dict[str, Any], task: str, run: dict[str, Any] | None, repo_id: str
) -> _CardContent:
    """From the record of `equirecon finetune`: which model was fine-tuned from which base how (``description``),
    on which data (``data``: ``name``, ``description``, ``eval_split``, ``builtin``), with which measured results
    (``metrics``, Trainer's ``eval_*``), hyperparameters, Trainer's log and framework versions."""
    if run is None or run.get("command") != "finetune":
        raise ValueError(
            f"{directory} holds a {task} model but no {RUN_FILE} written by `equirecon finetune`; the card of a "
            "fine-tuned model is written by the run that trained it."
        )
    base_model, data, metrics = run["base_model"], run["data"], run["metrics"]
    base = (
        f"the local checkpoint `{base_model}`"
        if run["local_base"]
        else f"[`{base_model}`](https://huggingface.co/{base_model})"
    )
    _, lines, final = parse_log_history(run["log_history"])
    results = "".join(f"\n- {name}: {_round(value)}" for name, value in (final or {}).items())
    default_note = (
        " No `--dataset` was given, so the built-in offline default was used; the figures show that the pipeline "
        "works, not what the encoder is worth on real data."
        if data["builtin"]
        else ""
    )
    id2label = {int(k): v for k, v in config.get("id2label", {}).items()}
    procedure = (
        "### Training hyperparameters\n\nThe following hyperparameters were used during training:\n"
        + "\n".join(f"- {name}: {value}" for name, value in run["hyperparameters"].items())
    )
    if lines:
        procedure += f"\n\n### Training results\n\n{make_markdown_table(lines)}"
    procedure += "\n\n### Framework versions\n\n" + "\n".join(
        f"- {name} {version}" for name, version in run["framework_versions"].items()
    )
    is_equirecon = config.get("model_type") == "equirecon"
    return _CardContent(
        license="apache-2.0" if is_equirecon else None,  # another architecture keeps its own licence
        tags=[
            *("equirecon", "vision", PIPELINE_TASKS[task]),
            *("linear-probe" if run["linear_probe"] else "fine-tuned", "generated_from_trainer"),
        ],
        datasets=[data["name"]],
        metrics=[_CARD_METRICS[task][0][0]],
        base_model=None if run["local_base"] else base_model,
        # Trainer's model-index only knows a fixed list of metric names (no mean IoU): ours lists the task's own.
        eval_results=[
            EvalResult(
                task_type=PIPELINE_TASKS[task],
                task_name=PIPELINE_TASKS[task].replace("-", " ").capitalize(),
                dataset_type=data["name"],
                dataset_name=data["name"],
                dataset_split=data["eval_split"],
                metric_type=metric,
                metric_name=label,
                metric_value=float(metrics[f"eval_{metric}"]),
            )
            for metric, label in _CARD_METRICS[task]
            if math.isfinite(metrics.get(f"eval_{metric}", float("nan")))
        ]
        or None,
        summary=f"This model was fine-tuned from {base} on the {data['name']} dataset."
        + (f"\nIt achieves the following results on the evaluation set:{results}" if results else ""),
        description=f"{(config.get('architectures') or ['A model'])[0]} fine-tuned from {base}: {run['description']}",
        usage=(
            "```python\nimport equirecon  # or trust_remote_code=True without the package\nfrom transformers import "
            f'pipeline\n\npipe = pipeline("{PIPELINE_TASKS[task]}", model="{repo_id}")\n```'
        ),
        sections=(
            f"## Training and evaluation data\n\n{data['description']}.{default_note}\n\n"
            f"{_results_table(task, id2label, metrics)}\n\n## Training procedure\n\n{procedure}"
        ),
        limitations=(
            f"- Measured on the `{data['eval_split']}` split of {data['name']} only; other data will score "
            "differently.\n"
            f"- The encoder carries what {base} learnt, biases included"
            + (" (a linear probe leaves it unchanged)." if run["linear_probe"] else ".")
        ),
    )


def _round(value: Any) -> str:
    """As Trainer's card: floats with more than 4 decimals to 4."""
    decimals = str(value).split(".")
    return f"{value:.4f}" if isinstance(value, float) and len(decimals) > 1 and len(decimals[1]) > 4 else str(value)


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
