"""What a run's effect figures say next to their controls, in the words and tables that the console summaries and the
model cards share: a figure is never shown without the controls its reading rests on.

- the decoders' held-out loss next to the θ-free answers (`equirecon.training.controls`) and the unpaired control;
- the equivariance R² of the trained model next to the model the run started from and the θ-shuffled chance level,
  with every figure that training lowered said in words, and the controls as model-index entries of their own.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "control_eval_results",
    "duration",
    "equivariance_table",
    "lowered_by_training",
    "pairing_control",
    "reconstruction_controls",
]

#: The decoders' controls of `EquiReconTrainer`'s evaluation, in the words of the summaries.
RECONSTRUCTION_CONTROLS = {
    "eval_copy_view2_loss": "copying view 2",
    "eval_copy_blurred_view2_loss": "copying a 5×5 box blur of view 2",
    "eval_copy_view1_loss": "copying view 1",
    "eval_copy_blend_loss": "the best blend a_k·v1 + b_k·v2",
    "eval_copy_blurred_blend_loss": "the best blend of the blurred views",
}
CHANCE_LABEL = "θ-shuffled control (chance)"


def duration(seconds: float) -> str:
    """A wall time as a reader wants it: seconds under a minute, else minutes."""
    return f"{seconds:.0f} s" if seconds < 60 else f"{seconds / 60:.1f} min"


def reconstruction_controls(metrics: dict[str, Any]) -> str | None:
    """Whether the decoders beat each θ-free answer to the targets on the held-out pairs, or None without them."""
    loss = metrics.get("eval_reconstruction_loss")
    controls = {key: metrics[key] for key in RECONSTRUCTION_CONTROLS if key in metrics}
    if loss is None or not controls:
        return None
    missed = [RECONSTRUCTION_CONTROLS[key] for key, value in controls.items() if loss >= value]
    verdict = (
        f"the decoders beat all {len(controls)} θ-free answers"
        if not missed
        else "the decoders do **not** beat "
        + (f"{', '.join(missed[:-1])} or {missed[-1]}" if len(missed) > 1 else missed[0])
        + ": they have not learnt the in-between states beyond what the two views give without θ, and the "
        "equivariance results should be read with that in mind"
    )
    answers = "; ".join(f"{RECONSTRUCTION_CONTROLS[key]} {value:.4f}" for key, value in controls.items())
    blends = (
        " (each blend's a_k, b_k fitted by least squares on one half of the pairs and scored on the other)"
        if "eval_copy_blend_loss" in controls
        else ""
    )
    return (
        f"Reconstruction control (held-out pairs, masked MSE): decoders {loss:.4f}; answering every target by "
        f"{answers}{blends}: {verdict}."
    )


def pairing_control(metrics: dict[str, Any]) -> str | None:
    """How much of the decoders' answer comes from the pair: their error when each pair's view 1 is another pair's."""
    loss, unpaired = metrics.get("eval_reconstruction_loss"), metrics.get("eval_unpaired_reconstruction_loss")
    if loss is None or unpaired is None:
        return None
    change = 100 * (unpaired - loss) / loss
    verdict = (
        f"without the true view 1 their error rises by {change:.1f} %" if change > 0 else "they do not read the pair"
    )
    return (
        f"Pairing control (held-out pairs): decoders {loss:.4f}, given another pair's view 1 {unpaired:.4f}: "
        f"{verdict}. θ links the two views of a pair, so decoders that read θ from the pair lose accuracy without "
        "their own view 1; decoders that work from view 2 alone lose nothing."
    )


def _read_outs(equivariance: dict[str, Any]) -> tuple[dict[str, Any], str, dict[str, Any]]:
    """(this model's read-outs, the reference's label, the reference's read-outs) of an equivariance results file."""
    read_outs = equivariance.get("read_outs") or {equivariance["feature"]: equivariance}
    reference = equivariance.get("reference") or {}
    if "random_init" in equivariance:  # written before the reference could be a warm start's checkpoint
        reference = {"label": "random initialisation", "read_outs": equivariance["random_init"]}
    return read_outs, reference.get("label", ""), reference.get("read_outs", {})


def _row(label: str, values: dict[str, float], families: list[str]) -> str:
    cells = [f"{values[f]:.3f}" if f in values else "–" for f in families]
    mean = sum(values[f] for f in families) / len(families) if all(f in values for f in families) else None
    return f"| {label} | " + " | ".join(cells) + (f" | {mean:.3f} |" if mean is not None else " | – |")


def equivariance_table(equivariance: dict[str, Any]) -> str:
    """R² per family and the mean: each read-out of this model, the model the run started from under it, then the
    θ-shuffled chance level of every read-out that has one."""
    families = list(equivariance["r2"])
    read_outs, reference_label, reference = _read_outs(equivariance)
    rows = ["| model, features | " + " | ".join(f"R² {f}" for f in families) + " | mean |"]
    rows.append("|---" * (len(families) + 2) + "|")
    for feature, result in read_outs.items():
        rows.append(_row(f"this model, {feature}", result.get("r2") or {}, families))
        if feature in reference:
            rows.append(_row(f"{reference_label}, {feature}", reference[feature].get("r2") or {}, families))
    for feature, result in read_outs.items():
        if result.get("shuffled_r2"):
            rows.append(_row(f"{CHANCE_LABEL}, {feature}", result["shuffled_r2"], families))
    return "\n".join(rows)


def lowered_by_training(equivariance: dict[str, Any]) -> list[str]:
    """One sentence per read-out whose R² training lowered below the model it started from, naming each figure."""
    read_outs, reference_label, reference = _read_outs(equivariance)
    sentences = []
    for feature, result in read_outs.items():
        before = (reference.get(feature) or {}).get("r2") or {}
        after = result.get("r2") or {}
        lowered = [f"R² {f} {before[f]:.3f} → {after[f]:.3f}" for f in after if f in before and after[f] < before[f]]
        if lowered:
            sentences.append(
                f"Training lowered the `{feature}` read-out below the {reference_label} on "
                f"{len(lowered)} of {len(after)} families ({'; '.join(lowered)}): there, this model keeps less of the "
                "transformation than the model it started from."
            )
    return sentences


def control_eval_results(equivariance: dict[str, Any]) -> list[dict[str, Any]]:
    """Model-index entries (`huggingface_hub.EvalResult` keyword arguments) for the controls of the headline
    read-out: the reference model's R² and the θ-shuffled chance level, each metric named as a control, next to
    the trained model's own entries (`eval_results` of the results file)."""
    entries = equivariance.get("eval_results") or []
    if not entries:
        return []
    feature = equivariance["feature"]
    read_outs, reference_label, reference = _read_outs(equivariance)
    controls = {}
    if feature in reference:
        controls[f"{reference_label}, control"] = reference[feature].get("r2") or {}
    controls["θ-shuffled chance, control"] = (read_outs.get(feature) or {}).get("shuffled_r2") or {}
    template = {key: value for key, value in entries[0].items() if key not in ("metric_name", "metric_value")}
    results = []
    for label, values in controls.items():
        if not values:
            continue
        named = [*((f"R² {name}", value) for name, value in values.items())]
        if set(values) == set(equivariance["r2"]):
            named.append(("R² mean", sum(values.values()) / len(values)))
        results += [
            {**template, "metric_name": f"{name} ({label})", "metric_value": round(float(value), 4)}
            for name, value in named
        ]
    return results
