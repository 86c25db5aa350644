"""The pictures a pretraining run leaves: `reconstructions.png`, the decoders' answers next to the θ-free answers they
must beat, each with its error on the same target and mask; and `loss_curves.png`, the logged losses against the step,
the held-out reconstruction loss next to the same controls."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from ..imaging.context import center_crop
from ..imaging.transformations import TransformationConfig
from ..modeling import EquiReconForPreTraining
from ..modeling.decoders import masked_mse
from .controls import NUM_HALVES, blend_answers, blend_inputs, copy_answers
from .data import batch_transformed_pair

__all__ = ["save_loss_curves", "save_reconstruction_figure"]

logger = logging.getLogger(__name__)

#: Short names of the controls in the panels' labels.
_CONTROL_LABELS = {
    "copy_view2_loss": "copy",
    "copy_blurred_view2_loss": "blurred copy",
    "copy_blend_loss": "blend",
    "copy_blurred_blend_loss": "blurred blend",
}


def save_reconstruction_figure(
    model: EquiReconForPreTraining,
    batch: dict[str, torch.Tensor],
    transformation: TransformationConfig,
    path: Path,
    num_examples: int = 4,
    image_mean: Sequence[float] = IMAGENET_DEFAULT_MEAN,
    image_std: Sequence[float] = IMAGENET_DEFAULT_STD,
    blend_coefficients: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Rows: examples. Columns: v1, u, the K targets, v2 (the copy baseline's answer for every target), v2 through
    the 5×5 box blur (the blurred copy's), the best θ-free blend a_k·v1 + b_k·v2 of each target (when
    `blend_coefficients`, the trainer's cross-fitted (2, K, 2) fits, are given), then the K reconstructions, each
    labelled with its error and the controls' on that target. The batch's first pairs must be the evaluation set's
    first (example i is in half i mod 2 of the blend fits). All images de-normalised with `image_mean` and
    `image_std`, the statistics the batch was normalised with."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    model.eval()
    device = next(model.parameters()).device
    batch = {key: value[:num_examples].to(device) for key, value in batch.items() if torch.is_tensor(value)}
    k = model.config.num_intermediates
    size = batch["pixel_values"].shape[-1]
    pair = batch_transformed_pair(batch, transformation, k, image_mean, image_std)
    with torch.no_grad():
        outputs = model(
            pixel_values=batch["pixel_values"],
            transformed_pixel_values=pair.transformed,
            return_loss=False,
            output_reconstructions=True,
        )
    rows = batch["pixel_values"].shape[0]
    copies = copy_answers(batch["pixel_values"], pair.transformed)
    # Every control's answer to every target, (B, K, C, H, W).
    answers = {name: copies[name].unsqueeze(1).expand_as(pair.targets) for name in list(_CONTROL_LABELS)[:2]}
    if blend_coefficients is not None:
        halves = torch.arange(rows, device=device) % NUM_HALVES
        for name, (first, second) in blend_inputs(batch["pixel_values"], pair.transformed).items():
            coefficients = blend_coefficients[name].to(device)[halves]
            answers[name] = blend_answers(first, second, coefficients)

    def error(prediction: torch.Tensor, row: int, target: int) -> float:
        mask = pair.target_masks[row, target][None]
        return masked_mse(prediction[row, target][None], pair.targets[row, target][None], mask).item()

    steps = [f"{i}/{k + 1}" for i in range(1, k + 1)]
    columns: list[tuple[str, list[torch.Tensor]]] = [
        ("v1", list(batch["pixel_values"])),
        ("u", [center_crop(base, size) for base in batch["base_pixel_values"]]),
        *((f"target {s}θ", list(pair.targets[:, i])) for i, s in enumerate(steps)),
        ("v2 = copy", list(pair.transformed)),
        ("blurred copy", list(copies["copy_blurred_view2_loss"])),
    ]
    if "copy_blend_loss" in answers:
        columns += [(f"blend {s}θ", list(answers["copy_blend_loss"][:, i])) for i, s in enumerate(steps)]
    labels: dict[tuple[int, int], str] = {}
    if outputs.reconstructions is not None:
        first = len(columns)
        columns += [(f"decoder {s}θ", list(outputs.reconstructions[:, i])) for i, s in enumerate(steps)]
        for row in range(rows):
            for i in range(k):
                controls = [f"{_CONTROL_LABELS[name]} {error(answer, row, i):.3f}" for name, answer in answers.items()]
                lines = [f"decoder {error(outputs.reconstructions, row, i):.3f}"]
                lines += [" · ".join(controls[j : j + 2]) for j in range(0, len(controls), 2)]
                labels[row, first + i] = "\n".join(lines)
    mean = torch.tensor(image_mean, device=device).view(3, 1, 1)
    std = torch.tensor(image_std, device=device).view(3, 1, 1)
    figure, axes = plt.subplots(
        rows, len(columns), figsize=(1.7 * len(columns), 2.3 * rows), squeeze=False, layout="constrained"
    )
    for row in range(rows):
        for column, (axis, (title, panels)) in enumerate(zip(axes[row], columns, strict=True)):
            axis.imshow((panels[row] * std + mean).clamp(0, 1).permute(1, 2, 0).float().cpu().numpy())
            axis.set_xticks([])
            axis.set_yticks([])
            if row == 0:
                axis.set_title(title, fontsize=8)
            if (row, column) in labels:
                axis.set_xlabel(labels[row, column], fontsize=6)
    parameters = ", ".join(transformation.parameter_names)
    figure.suptitle(
        f"g = {transformation.family} ({parameters}); masked MSE on each target, lower is better: the decoders "
        "have learnt something only where they beat every θ-free control",
        fontsize=8,
    )
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


#: The training losses `EquiReconTrainer` logs; held-out losses are every logged `eval_*_loss`.
_TRAINING_LOSSES = ("loss", "ssl_loss", "reconstruction_loss")


def save_loss_curves(log_history: Sequence[dict[str, Any]], path: Path) -> Path | None:
    """The losses of `Trainer.state.log_history` against the optimizer step: the total and SSL losses in one panel,
    the reconstruction loss in another next to its controls (dashed: the θ-free answers `eval_copy_*` and the pairing
    control `eval_unpaired_reconstruction_loss`), as the reconstruction picture compares them. Training losses are
    solid, held-out ones dotted; logged points are marked (about 50 a line at most), so a run that logged once still
    draws. Returns None, writing nothing, when no loss was logged."""
    series: dict[str, tuple[list[float], list[float]]] = {}
    for entry in log_history:
        for name, value in entry.items():
            is_loss = name in _TRAINING_LOSSES or (name.startswith("eval_") and name.endswith("_loss"))
            if is_loss and "step" in entry and isinstance(value, (int, float)):
                steps, values = series.setdefault(name, ([], []))
                steps.append(entry["step"])
                values.append(value)
    if not series:
        logger.warning("No loss was logged, so no %s: set --logging_steps to at most --max_steps.", path.name)
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    def is_control(name: str) -> bool:
        return name.startswith(("eval_copy_", "eval_unpaired_"))

    panels = {
        "total and SSL losses": [n for n in series if "reconstruction" not in n and not is_control(n)],
        "reconstruction loss and its controls (lower is better)": [
            n for n in series if "reconstruction" in n or is_control(n)
        ],
    }
    panels = {title: names for title, names in panels.items() if names}
    figure, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4), squeeze=False, layout="constrained")
    for axis, (title, names) in zip(axes[0], panels.items(), strict=True):
        colours: dict[str, str] = {}  # a loss and its held-out value in one colour
        for name in sorted(names, key=lambda n: (is_control(n), n.startswith("eval_"), n)):
            steps, values = series[name]
            if is_control(name):
                style, kind = {"linestyle": "--", "marker": "x"}, "control"
            elif name.startswith("eval_"):
                style, kind = {"linestyle": ":", "marker": "s"}, "held-out"
            else:
                style, kind = {"linestyle": "-", "marker": "o"}, "training"
            colour = colours.setdefault(name.removeprefix("eval_"), f"C{len(colours) % 10}")
            markevery = max(1, len(steps) // 50)  # a long run's line stays readable
            axis.plot(
                steps, values, color=colour, markersize=4, markevery=markevery, label=f"{name} ({kind})", **style
            )
        axis.set_title(title, fontsize=9)
        axis.set_xlabel("optimizer step")
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.legend(fontsize=7)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
