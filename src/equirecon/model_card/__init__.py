"""Model cards for what equirecon trains, built from a model directory's files (never typed by hand).

One builder, `build_model_card(DIR)` (`write_model_card` saves it as `DIR/README.md`), for every kind of directory;
the config's `architectures` tell the kind, and the kind says which files the card is read from:

- a pretrained encoder (`EquiReconForPreTraining`, `EquiReconModel`): `config.json`, `equirecon_run.json` (written by
  `equirecon pretrain`) and `equivariance_results.json` (the equivariance benchmark, written by `equirecon pretrain`
  or `equirecon evaluate equivariance --output`, with its `model-index` entries under `eval_results`); the card
  shows the run's pictures, `reconstructions.png` and `loss_curves.png`, where they are;
- a fine-tuned model (`…ForImageClassification`, `…ForSemanticSegmentation`): `config.json`, `equirecon_run.json`
  (written by `equirecon finetune`: base model, protocol, data, measured metrics, hyperparameters, training log;
  read by `equirecon.model_card.finetuned`).

Every effect figure stands next to its controls (`equirecon.reporting`), in the text and in the model-index.

Every card has the same metadata (license, library, pipeline tag of its task, tags, model-index), summary, model
description, usage snippet, the sections of its kind (training recipe and equivariance benchmark; data, results
and training procedure) and limitations, in the one template `templates/model_card.md`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from ..reporting import (
    control_eval_results,
    duration,
    equivariance_table,
    lowered_by_training,
    pairing_control,
    reconstruction_controls,
)

RUN_FILE = "equirecon_run.json"
EQUIVARIANCE_FILE = "equivariance_results.json"
CARD_FILE = "README.md"
TRAINING_LOG_FILE = "training_log.json"
#: The pictures `equirecon pretrain` draws (`equirecon.training.figures`), shown on the card by relative link.
RECONSTRUCTIONS_FILE = "reconstructions.png"
LOSS_CURVES_FILE = "loss_curves.png"

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
        f"- {_wall_time(run)}",
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
    lines += [f"- {line}" for line in (reconstruction_controls(metrics), pairing_control(metrics)) if line]
    skipped = run.get("skipped_images")
    if skipped:
        names = ", ".join(f"`{name}`" for name in skipped[:5]) + (", ..." if len(skipped) > 5 else "")
        lines.append(f"- {len(skipped)} undecodable image(s) were skipped: {names}.")
    elif "skipped_images" in run:
        lines.append("- Every image read decoded; none was skipped.")
    return "\n".join(lines)


def _pictures(directory: Path, run: dict[str, Any] | None) -> str:
    """A `### Pictures` section ending in a blank line (or nothing): the run's pictures, linked by relative path (the
    Hub shows them from the repository's files), or why a pretraining run has none."""
    parts = []
    if (directory / RECONSTRUCTIONS_FILE).is_file():
        parts.append(
            f"![Reconstructions of held-out pairs]({RECONSTRUCTIONS_FILE})\n\n`{RECONSTRUCTIONS_FILE}`: the "
            "decoders' answers on held-out pairs next to the θ-free answers they must beat, each with its masked MSE."
        )
    elif run is not None and not run.get("data_arguments", {}).get("validation_split"):
        parts.append("No reconstruction picture: it is drawn from held-out pairs, and this run had none.")
    if (directory / LOSS_CURVES_FILE).is_file():
        parts.append(
            f"![Loss curves]({LOSS_CURVES_FILE})\n\n`{LOSS_CURVES_FILE}`: the logged losses against the optimizer "
            "step; the held-out reconstruction loss next to its controls (dashed), which it must fall below."
        )
    elif run is not None:
        log = _read_json(directory / TRAINING_LOG_FILE) or []
        if any("loss" in key for entry in log for key in entry if key != "train_loss"):
            parts.append(f"No loss-curve picture in this directory; the logged losses are in `{TRAINING_LOG_FILE}`.")
        else:
            parts.append("No loss curves: the run logged no loss (it logs every `--logging_steps` steps).")
    return "".join(f"{part}\n\n" for part in ["### Pictures", *parts]) if parts else ""


def _wall_time(run: dict[str, Any]) -> str:
    """The run's wall time; for a resumed run, this session's, the time before the interruption, and their sum."""
    session = run["wall_time_seconds"]
    resumed = run.get("resumed")
    if not resumed:
        return f"Wall time: {duration(session)}."
    before = resumed.get("training_seconds_before")
    where = f"resumed from `{Path(resumed['checkpoint']).name}` at step {resumed['step']}"
    if before is None:
        return f"Wall time: {duration(session)} after the run was {where}; the time before it was not recorded."
    return (
        f"Wall time: {duration(session + before)} in total: the run was interrupted and {where}, after "
        f"{duration(before)} of training; {duration(session)} after resuming."
    )


def _checkpoint_link(start: dict[str, Any]) -> str:
    """A Hub checkpoint as a link, a local one as its path."""
    name = start["checkpoint"]
    return f"the local checkpoint `{name}`" if start["local"] else f"[`{name}`](https://huggingface.co/{name})"


_REFERENCES = {
    "random initialisation": "random initialisation: the same config and seed, untrained",
}


def _evaluation_summary(equivariance: dict[str, Any] | None, directory: str) -> str:
    if equivariance is None:
        return (
            f"Not evaluated yet. Run `equirecon evaluate equivariance --model {directory} --output "
            f"{directory}/{EQUIVARIANCE_FILE}` and `equirecon model-card {directory}` to add the results."
        )
    settings = equivariance.get("settings", {})
    reference = (equivariance.get("reference") or {}).get("label") or (
        "random initialisation" if "random_init" in equivariance else ""
    )
    setting_text = ", ".join(f"{k}={v}" for k, v in settings.items() if not isinstance(v, (dict, list)))
    controls = (
        f"The model this run started from ({_REFERENCES.get(reference, reference)}) and the regressor "
        "fitted on shuffled θ are the controls: a trained row says something only where it clears both."
        if reference
        else "The regressor fitted on shuffled θ is the control: a row says something only where it clears it."
    )
    lowered = "".join(f"\n\n{sentence}" for sentence in lowered_by_training(equivariance))
    return (
        "The paper's synthetic equivariance benchmark: g with a random θ is applied to images, the frozen encoder "
        "embeds I and g_θ(I), and an MLP regresses θ from the pair; R² on images the regressor was not fitted on "
        f"({settings.get('protocol', 'held-out photos')}; {equivariance.get('r2_convention', 'global')} R², as SIE). "
        "Read-outs: `mean_patch` is the backbone's mean patch token, `equivariant` the mean of the head's equivariant "
        f"part. {controls}\n\n{equivariance_table(equivariance)}{lowered}\n\nSettings: {setting_text or 'defaults'}."
    )


#: The pipeline task of each kind of model directory.
PIPELINE_TASKS = {
    "pretraining": "image-feature-extraction",
    "classification": "image-classification",
    "segmentation": "image-segmentation",
}
_HEAD_TASKS = {"ForImageClassification": "classification", "ForSemanticSegmentation": "segmentation"}


@dataclass
class CardContent:
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
        from .finetuned import finetuned_content  # the finetune command's record: its own module

        content = finetuned_content(directory, config, task, run, repo_id)
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
) -> CardContent:
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
    return CardContent(
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
        # Written next to the results by the benchmark itself (EquivarianceResult.to_eval_results), then the
        # controls' entries, named as such.
        eval_results=[
            EvalResult(**entry)
            for entry in [*(equivariance or {}).get("eval_results", []), *control_eval_results(equivariance or {})]
        ]
        or None,
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
            "```python\nimport torch\nfrom transformers import AutoImageProcessor, AutoModel\n"
            "from transformers.image_utils import load_image\n\n"
            'image = load_image("http://images.cocodataset.org/val2017/000000039769.jpg")\n'
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
            f"## Training data and recipe\n\n{_training_summary(run)}\n\n{_pictures(directory, run)}"
            f"## Evaluation\n\n{_evaluation_summary(equivariance, repo_id)}"
        ),
        limitations=(
            "- Pretrained at small scale unless the training section says otherwise: the paper's effect sizes "
            "(ImageNet-1k, 800 epochs) are not to be expected from a CPU run; read the measured R² above.\n"
            "- Equivariance is learned only for the transformation family it was trained with, within its ranges.\n"
            "- The invariant part inherits the biases of the pretraining images."
        ),
    )
