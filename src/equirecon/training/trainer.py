"""`EquiReconTrainer`: a `transformers.Trainer` for transform pairs whose g_θ is applied on the device, once per
batch; it optimises the model's own loss (`ssl_weight·ssl_loss + reconstruction_weight·reconstruction_loss`, both
weights from the model config, the one owner of λ and K)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from transformers import Trainer
from transformers.trainer_utils import get_last_checkpoint

from ..imaging.transformations import TransformationConfig, TransformedPair
from ..modeling.decoders import counted_target_mask
from ..modeling.pretraining_inputs import reconstructed_pairs
from ..process_group import LeaveProcessGroupAtExit
from .arguments import EquiReconTrainingArguments
from .controls import (
    BLEND_BASELINES,
    BLURRED_COPY_KERNEL,
    COPY_BASELINES,
    NUM_HALVES,
    blend_inputs,
    blend_losses,
    blend_statistics,
    box_blur,
    copy_losses,
    cross_fitted_coefficients,
)
from .data import SKIPPED_IMAGES_KEY, batch_transformed_pair
from .progress import TrainingTimeCallback
from .teacher import TeacherCallback

__all__ = [
    "BLEND_BASELINES",
    "BLURRED_COPY_KERNEL",
    "COPY_BASELINES",
    "UNPAIRED_CONTROL",
    "EquiReconTrainer",
    "NonFiniteLossError",
    "box_blur",
    "check_config_agrees",
]

LOSS_COMPONENTS = ("ssl_loss", "reconstruction_loss")
UNPAIRED_CONTROL = "unpaired_reconstruction_loss"
"""Evaluation control: the decoders' loss when each pair's first view is replaced by the next pair's in the batch.
θ links the two views of a pair, so decoders that read θ from the pair do worse unpaired; decoders that reconstruct
from view 2 alone do as well (a batch of one example has no other pair and does not count)."""


class NonFiniteLossError(RuntimeError):
    """Raised when a training loss is NaN or infinite: continuing would overwrite good weights with garbage."""


def check_config_agrees(training_args: EquiReconTrainingArguments, config: Any) -> None:
    """The model config owns λ, K and the SSL weight; training arguments that set them (`MODEL_CONFIG_FLAGS`) must
    agree with it (the `equirecon pretrain` command builds the model with them)."""
    for name, requested in training_args.model_config_overrides().items():
        if requested != getattr(config, name):
            hint = " (one decoder per intermediate target)" if name == "num_intermediates" else ""
            raise ValueError(
                f"--{name} {requested} does not match the model's {name} {getattr(config, name)}{hint}; the model "
                f"config owns it: build the model with {name}={requested}, or leave --{name} unset."
            )


class EquiReconTrainer(Trainer):
    """Trainer for `EquiReconForPreTraining` on batches of transform pairs
    `{pixel_values, base_pixel_values, transform_params}` (see `equirecon.training.data`).

    For every batch it builds v2 = g_θ(u) and the K targets g_{kθ/(K+1)}(u) with their validity masks on the
    device, calls the model, and returns the model's `loss` (weights and K from the model config; training
    arguments that disagree with the config raise a `ValueError` here, so no weight is silently ignored).
    A non-finite training loss is noted on the device (no host sync per step) and raises `NonFiniteLossError` at
    the next log or checkpoint, before a checkpoint of the broken weights is written.
    `ssl_loss` and `reconstruction_loss` are logged next to `loss` (averaged over the steps since the last log and
    over processes), and evaluation reports them as `eval_ssl_loss` and `eval_reconstruction_loss`, next to the
    controls `eval_copy_view2_loss`, `eval_copy_blurred_view2_loss` and `eval_copy_view1_loss` (`COPY_BASELINES`),
    `eval_copy_blend_loss` and `eval_copy_blurred_blend_loss` (`BLEND_BASELINES`, the best θ-free blend of the two
    views, cross-fitted over two halves of the evaluation pairs; see `equirecon.training.controls`) and
    `eval_unpaired_reconstruction_loss` (`UNPAIRED_CONTROL`).

    Args:
        transformation: g_θ. Default: the model config's `transformation`, overridden by the training arguments.
        image_mean, image_std: normalisation of the model inputs, so that photometric g_θ act on pixel values and
            the targets stay in the model's input space.
    """

    args: EquiReconTrainingArguments

    def __init__(
        self,
        *args: Any,
        transformation: TransformationConfig | None = None,
        image_mean: Sequence[float] | None = None,
        image_std: Sequence[float] | None = None,
        **kwargs: Any,
    ):
        super().__init__(*args, **kwargs)
        config = self.model.config
        training_args = self.args
        if not isinstance(training_args, EquiReconTrainingArguments):
            training_args = None
        if transformation is None:
            transformation = (
                training_args.transformation_config(config.transformation)
                if training_args is not None
                else TransformationConfig.from_dict(config.transformation)
            )
        self.transformation = transformation
        self.image_mean = image_mean
        self.image_std = image_std
        if training_args is not None:
            check_config_agrees(training_args, config)
        # Per phase and component: (sum of batch values, number of batches that counted), on the device.
        self._component_sums: dict[str, dict[str, torch.Tensor]] = {"train": {}, "eval": {}}
        # The blend controls' coefficients during an evaluation, and the position of the next evaluation pair.
        self._blend_coefficients: dict[str, torch.Tensor] | None = None
        #: The last evaluation's blend fits ({name: (2, K, 2)}; half i mod 2 of its pairs), for the run's picture.
        self.blend_coefficients: dict[str, torch.Tensor] | None = None
        self._evaluation_position = 0
        self._component_counts: dict[str, dict[str, torch.Tensor]] = {"train": {}, "eval": {}}
        self._non_finite: tuple[torch.Tensor, torch.Tensor] | None = None
        self._components_present: list[str] = []
        if getattr(self.model, "teacher", None) is not None:  # DINO family: the EMA teacher follows global_step
            self.add_callback(TeacherCallback)
        self.add_callback(LeaveProcessGroupAtExit(self))  # several processes: leave the group cleanly at exit
        #: Training time across interruptions, and where a resumed run resumed from.
        self.training_time = TrainingTimeCallback()
        self.add_callback(self.training_time)
        #: The undecodable images the batches reported skipped (distinct, all workers and processes), as of the
        #: last log or evaluation; training logs their number as `skipped_images` once there is one.
        self.skipped_images: list[str] = []
        self._skipped_here: set[str] = set()

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, torch.Tensor],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | None = None,
    ):
        self._skipped_here.update(inputs.pop(SKIPPED_IMAGES_KEY, None) or ())
        missing = [key for key in ("pixel_values", "base_pixel_values", "transform_params") if key not in inputs]
        if missing:
            raise KeyError(
                f"Batch lacks {missing}; EquiReconTrainer expects transform pairs (equirecon.training.data) and "
                f"remove_unused_columns=False. Found keys: {sorted(inputs)}."
            )
        pair = self._transformed_pair(inputs)
        with_reconstruction = self.reconstruction_weight > 0
        outputs = model(
            pixel_values=inputs["pixel_values"],
            transformed_pixel_values=pair.transformed,
            intermediate_pixel_values=pair.targets if with_reconstruction else None,
            intermediate_mask=pair.target_masks if with_reconstruction else None,
            bool_masked_pos=inputs.get("bool_masked_pos"),
            local_pixel_values=inputs.get("local_pixel_values"),
            return_loss=True,
        )
        loss = outputs.loss
        phase = "train" if model.training else "eval"
        if phase == "train":
            self._note_non_finite(loss, outputs)
        components = {name: getattr(outputs, name) for name in LOSS_COMPONENTS}
        weights: dict[str, torch.Tensor] = {}
        if outputs.reconstruction_loss is not None:
            masks, counts = self._control_masks(pair, outputs.reconstructed_pairs)
            if counts is not None:
                weights["reconstruction_loss"] = counts
            if phase == "eval":
                first_view = inputs["pixel_values"]
                targets = pair.targets
                components.update(copy_losses(first_view, pair.transformed, targets, masks))
                controls = list(COPY_BASELINES)
                if self._blend_coefficients is not None:
                    halves = self._next_halves(len(first_view), first_view.device)
                    blends = blend_losses(
                        first_view, pair.transformed, targets, masks, halves, self._blend_coefficients
                    )
                    components.update(blends)
                    controls += list(blends)
                weights.update(dict.fromkeys(controls, counts))
                components[UNPAIRED_CONTROL] = self._unpaired_reconstruction_loss(model, outputs, pair)
                has_other_pair = torch.tensor(float(len(masks) > 1), device=masks.device)
                weights[UNPAIRED_CONTROL] = has_other_pair * (1.0 if counts is None else counts)
        self._record_components(phase, components, weights)
        return (loss, outputs) if return_outputs else loss

    def _transformed_pair(self, inputs: dict[str, torch.Tensor]) -> TransformedPair:
        """v2 and the K targets with their masks, made on the device from the batch's u and θ."""
        return batch_transformed_pair(
            inputs, self.transformation, self.model.config.num_intermediates, self.image_mean, self.image_std
        )

    @staticmethod
    def _control_masks(
        pair: TransformedPair, counted_pairs: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The target masks the controls score, and whether the batch counts (None: it does). The model leaves masked
        pairs (iBOT, DINOv2) out of the reconstruction loss and returns the pairs it counted (`reconstructed_pairs`,
        None: all); the controls score the same pixels (the model's `counted_target_mask`), and a batch without any
        pair must not count as a loss of 0."""
        masks = counted_target_mask(pair.target_masks, counted_pairs)
        return masks, None if counted_pairs is None else counted_pairs.any().float()

    def _next_halves(self, batch_size: int, device: torch.device) -> torch.Tensor:
        """Which half of the evaluation pairs each pair of the next batch belongs to: alternate positions in the
        evaluation order, the same in the fitting pass and the scoring pass."""
        positions = torch.arange(self._evaluation_position, self._evaluation_position + batch_size, device=device)
        self._evaluation_position += batch_size
        return positions % NUM_HALVES

    def _fit_blends(self, dataloader: Any) -> dict[str, torch.Tensor] | None:
        """The blend controls' coefficients, (2, K, 2) per blend: one pass over the evaluation pairs (no model call)
        sums the normal equations of each half, then each half gets the fit of the other. None when the evaluation
        set cannot be cut in two halves (fewer than two pairs) or the model has no decoders."""
        if self.reconstruction_weight <= 0:
            return None
        self._evaluation_position = 0
        sums: dict[str, list[torch.Tensor]] = {}
        with torch.no_grad():
            for batch in dataloader:
                inputs = self._prepare_inputs(batch)
                pair = self._transformed_pair(inputs)
                # No model call in this pass: the model's rule for the pairs its reconstruction loss counts.
                masks, _ = self._control_masks(pair, reconstructed_pairs(inputs.get("bool_masked_pos")))
                halves = self._next_halves(len(masks), masks.device)
                for name, (first, second) in blend_inputs(inputs["pixel_values"], pair.transformed).items():
                    gram, moments = blend_statistics(first, second, pair.targets, masks, halves)
                    previous = sums.get(name)
                    sums[name] = [gram, moments] if previous is None else [previous[0] + gram, previous[1] + moments]
        self._evaluation_position = 0
        if not sums:
            return None
        coefficients = {}
        for name in BLEND_BASELINES:
            gram, moments = (self.accelerator.reduce(value.contiguous(), reduction="sum") for value in sums[name])
            if not bool((gram[:, :, 0, 0] > 0).all()):  # a half without any valid pixel: no fit to score with
                return None
            coefficients[name] = cross_fitted_coefficients(gram, moments)
        return coefficients

    def _unpaired_reconstruction_loss(self, model: nn.Module, outputs: Any, pair: TransformedPair) -> torch.Tensor:
        """The model's reconstruction loss on the same targets and pairs when each pair's first view is replaced by
        the next pair's (`UNPAIRED_CONTROL`)."""
        equivariant = outputs.equivariant_embeds
        unpaired = torch.stack([equivariant[0].roll(1, dims=0), equivariant[1]])
        patch_size = self.model.config.patch_size
        grid_size = (pair.targets.shape[-2] // patch_size, pair.targets.shape[-1] // patch_size)
        model = self.accelerator.unwrap_model(model)
        if torch.distributed.is_available() and "reconstruct" not in vars(model):
            from torch.distributed.fsdp import register_fsdp_forward_method

            # FSDP2 may hold the decoders sharded outside a forward: gather them around this call as around one.
            register_fsdp_forward_method(model, "reconstruct")
        reconstructions = model.reconstruct(unpaired, grid_size)
        return model.reconstruction_loss(reconstructions, pair.targets, pair.target_masks, outputs.reconstructed_pairs)

    def _record_components(
        self,
        phase: str,
        components: dict[str, torch.Tensor | None],
        weights: dict[str, torch.Tensor | None] | None = None,
    ) -> None:
        """Add each component's batch value, weighted by whether the batch counts for it (default: it does)."""
        sums, counts = self._component_sums[phase], self._component_counts[phase]
        for name, value in components.items():
            if value is None:
                continue
            weight = (weights or {}).get(name)
            weight = torch.ones((), device=value.device) if weight is None else weight
            sums[name] = sums.get(name, 0.0) + value.detach().float() * weight
            counts[name] = counts.get(name, 0.0) + weight

    def _pop_component_means(self, phase: str) -> dict[str, float]:
        """Mean of each component over the batches that counted since the last call, on all processes."""
        sums, counts = self._component_sums[phase], self._component_counts[phase]
        self._component_sums[phase], self._component_counts[phase] = {}, {}
        means = {}
        for name in sorted(sums):  # the same order on every process
            totals = torch.stack([sums[name], counts[name]]).to(self.args.device)
            total, count = self.accelerator.reduce(totals, reduction="sum").tolist()
            if count > 0:
                means[name] = total / count
        return means

    def _note_non_finite(self, loss: torch.Tensor, outputs: Any) -> None:
        """Remember the first step whose loss is not finite, and its components, on the device: no host sync."""
        values = torch.stack(
            [
                getattr(outputs, name).detach().float()
                if getattr(outputs, name) is not None
                else torch.full((), math.nan, device=loss.device)
                for name in LOSS_COMPONENTS
            ]
        )
        self._components_present = [name for name in LOSS_COMPONENTS if getattr(outputs, name) is not None]
        if self._non_finite is None:
            self._non_finite = (torch.full((), -1, device=loss.device, dtype=torch.long), torch.zeros_like(values))
        step, components = self._non_finite
        first = ~torch.isfinite(loss.detach()) & (step < 0)
        self._non_finite = (
            torch.where(first, torch.full_like(step, self.state.global_step), step),
            torch.where(first, values, components),
        )

    def _check_finite(self) -> None:
        """Raise `NonFiniteLossError` if a training loss since the start was not finite (one sync, at log/save)."""
        if self._non_finite is None:
            return
        step, components = (value.cpu() for value in self._non_finite)
        if step.item() < 0:
            return
        last = get_last_checkpoint(self.args.output_dir) if self.args.output_dir else None
        values = ", ".join(
            f"{name}={value:.4g}"
            for name, value in zip(LOSS_COMPONENTS, components.tolist(), strict=True)
            if name in self._components_present
        )
        raise NonFiniteLossError(
            f"Non-finite training loss at step {step.item()} ({values}); stopping before a checkpoint of these "
            f"weights is saved. Last good checkpoint: {last or 'none saved yet'}. Lower the learning rate or "
            "reconstruction_weight (the paper found λ > 5 unstable), or enable bf16 instead of fp16, then resume."
        )

    def _save_checkpoint(self, model: nn.Module, trial: Any) -> None:
        self._check_finite()
        super()._save_checkpoint(model, trial)

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        self._check_finite()  # Trainer syncs here anyway
        self._gather_skipped_images()
        if "loss" in logs:
            logs.update({name: round(value, 6) for name, value in self._pop_component_means("train").items()})
            if self.skipped_images:
                logs["skipped_images"] = len(self.skipped_images)
        super().log(logs, *args, **kwargs)

    def _gather_skipped_images(self) -> None:
        """Update `skipped_images` from every process (a collective call: every process logs and evaluates)."""
        found = [self._skipped_here]
        if self.args.world_size > 1:
            from accelerate.utils import gather_object

            found = gather_object([self._skipped_here])
        self.skipped_images = sorted(set().union(*found))

    def evaluation_loop(
        self,
        dataloader: Any,
        description: str,
        prediction_loss_only: bool | None = None,
        ignore_keys: list[str] | None = None,
        metric_key_prefix: str = "eval",
    ):
        self._pop_component_means("eval")  # start clean
        self._blend_coefficients = self.blend_coefficients = self._fit_blends(dataloader)
        try:
            output = super().evaluation_loop(
                dataloader, description, prediction_loss_only, ignore_keys, metric_key_prefix
            )
        finally:
            self._blend_coefficients, self._evaluation_position = None, 0
        for name, value in self._pop_component_means("eval").items():
            output.metrics[f"{metric_key_prefix}_{name}"] = value
        self._gather_skipped_images()
        return output

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: nn.Module | None = None) -> None:
        """Restore weights through `from_pretrained`. Trainer's own path feeds the raw safetensors file to
        `load_state_dict`, skipping the key conversion that `save_pretrained` reverted, so a Dinov2 encoder's attention
        weights came back missing (only a warning; huggingface/transformers#48805, PR #48822)."""
        if self.is_fsdp_enabled or self.is_deepspeed_enabled:
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        target = self.accelerator.unwrap_model(model if model is not None else self.model)
        restored = type(target).from_pretrained(resume_from_checkpoint, config=target.config)
        target.load_state_dict(restored.state_dict(), strict=True)

    def _load_best_model(self) -> None:
        if self.is_fsdp_enabled or self.is_deepspeed_enabled:
            return super()._load_best_model()
        self._load_from_checkpoint(self.state.best_model_checkpoint)

    def prediction_step(
        self,
        model: nn.Module,
        inputs: dict[str, torch.Tensor],
        prediction_loss_only: bool,
        ignore_keys: list[str] | None = None,
    ) -> tuple[torch.Tensor | None, None, None]:
        """Losses only: reconstructions and embeddings are not gathered over the evaluation set."""
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss = self.compute_loss(model, inputs)
        return loss.detach().mean(), None, None

    @property
    def reconstruction_weight(self) -> float:
        """λ, from the model config."""
        return self.model.config.reconstruction_weight

    @property
    def num_intermediates(self) -> int:
        """K, from the model config."""
        return self.model.config.num_intermediates
