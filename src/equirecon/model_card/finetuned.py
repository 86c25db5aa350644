"""The model card of a fine-tuned model (`…ForImageClassification`, `…ForSemanticSegmentation`), read from the record
`equirecon finetune` writes: base model, protocol, data, measured metrics, hyperparameters, training log and framework
versions. `equirecon.model_card.build_model_card` lays it out like every other card."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult
from transformers.modelcard import make_markdown_table, parse_log_history

from . import PIPELINE_TASKS, RUN_FILE, CardContent

__all__ = ["finetuned_content"]

# Metrics written to a fine-tuned model's model-index: (key without "eval_", display name).
_CARD_METRICS = {
    "classification": [("accuracy", "Accuracy"), ("mean_class_accuracy", "Mean per-class accuracy")],
    "segmentation": [
        ("mean_iou", "Mean IoU"),
        ("mean_accuracy", "Mean accuracy"),
        ("overall_accuracy", "Pixel accuracy"),
    ],
}


def finetuned_content(
    directory: Path, config: dict[str, Any], task: str, run: dict[str, Any] | None, repo_id: str
) -> CardContent:
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
    return CardContent(
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
