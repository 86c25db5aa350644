"""The picture a pretraining run leaves (`reconstructions.png`): the decoders' answers next to the θ-free answers they
must beat, each with its error on the same target and mask."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from ..imaging.context import center_crop
from ..imaging.transformations import TransformationConfig, make_transformed_pair
from ..modeling import EquiReconForPreTraining
from ..modeling.modeling_equirecon import masked_mse
from .controls import NUM_HALVES, blend_answers, blend_inputs, copy_answers

__all__ = ["save_reconstruction_figure"]

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
    pair = make_transformed_pair(
        batch["base_pixel_values"],
        batch["transform_params"],
        transformation,
        k,
        image_mean=image_mean,
        image_std=image_std,
        output_size=size,
    )
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
