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

from ..imaging.transformations import TransformationConfig, make_transformed_pair
from ..modeling.modeling_equirecon import masked_mse
from .arguments import EquiReconTrainingArguments
from .teacher import TeacherCallback

LOSS_COMPONENTS = ("ssl_loss", "reconstruction_loss")
COPY_BASELINES = ("copy_view2_loss", "copy_blurred_view2_loss", "copy_view1_loss")
"""Evaluation controls: the reconstruction loss of answering every target with view 2 itself, with view 2 through a
5×5 box blur, and with view 1, on the same pairs and masks. Decoders that do not beat all three have learnt nothing
about the in-between states: the blurred copy is the trivial answer a low-pass decoder must beat (the targets lie
between v2 and u, so an MSE-optimal guess that ignores θ is a smoothed v2)."""
BLURRED_COPY_KERNEL = 5
UNPAIRED_CONTROL = "unpaired_reconstruction_loss"
"""Evaluation control: the decoders' loss when each pair's first view is replaced by the next pair's in the batch.
θ links the two views of a pair, so decoders that read θ from the pair do worse unpaired; decoders that reconstruct
from view 2 alone do as well (a batch of one example has no other pair and does not count)."""


def box_blur(images: torch.Tensor, size: int) -> torch.Tensor:
    """Mean over a `size`×`size` window (odd `size`), mirrored at the border so the image keeps its size."""
    radius = size // 2
    padded = nn.functional.pad(images, (radius, radius, radius, radius), mode="reflect")
    return nn.functional.avg_pool2d(padded, size, stride=1)


class NonFiniteLossError(RuntimeError):
    """Raised when a training loss is NaN or infinite: continuing would overwrite good weights with garbage."""


def check_config_agrees(training_args: EquiReconTrainingArguments, config: Any) -> None:
    """The model config owns λ, K and the SSL weight; training arguments that set them must agree with it (the
    `equirecon pretrain` command applies them to the config before it builds the model)."""
    for name in ("num_intermediates", "reconstruction_weight", "ssl_weight"):
        requested = getattr(training_args, name)
        if requested is not None and requested != getattr(config, name):
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
    controls `eval_copy_view2_loss`, `eval_copy_blurred_view2_loss` and `eval_copy_view1_loss` (`COPY_BASELINES`)
    and `eval_unpaired_reconstruction_loss` (`UNPAIRED_CONTROL`).

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
        self._component_counts: dict[str, dict[str, torch.Tensor]] = {"train": {}, "eval": {}}
        self._non_finite: tuple[torch.Tensor, torch.Tensor] | None = None
        self._components_present: list[str] = []
        if getattr(self.model, "teacher", None) is not None:  # DINO family: the EMA teacher follows global_step
            self.add_callback(TeacherCallback)

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, torch.Tensor],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | None = None,
    ):
        missing = [key for key in ("pixel_values", "base_pixel_values", "transform_params") if key not in inputs]
        if missing:
            raise KeyError(
                f"Batch lacks {missing}; EquiReconTrainer expects transform pairs (equirecon.training.data) and "
                f"remove_unused_columns=False. Found keys: {sorted(inputs)}."
            )
        pair = make_transformed_pair(
            inputs["base_pixel_values"],
            inputs["transform_params"],
            self.transformation,
            self.model.config.num_intermediates,
            image_mean=self.image_mean,
            image_std=self.image_std,
            output_size=inputs["pixel_values"].shape[-1],  # u may carry a context margin around the view
        )
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
            # The model leaves masked pairs (iBOT, DINOv2) out of the reconstruction loss; the controls must score
            # the same pairs, and a batch without any unmasked pair must not count as a loss of 0.
            masks = pair.target_masks
            if inputs.get("bool_masked_pos") is not None:
                unmasked = ~inputs["bool_masked_pos"].flatten(1).any(dim=1)
                masks = masks * unmasked.to(masks.dtype).view(-1, *([1] * (masks.ndim - 1)))
                weights["reconstruction_loss"] = unmasked.any().float()
            if phase == "eval":
                components.update(self._copy_baselines(inputs["pixel_values"], pair, masks))
                weights.update(dict.fromkeys(COPY_BASELINES, weights.get("reconstruction_loss")))
                components[UNPAIRED_CONTROL] = self._unpaired_reconstruction_loss(model, outputs, pair, masks)
                has_other_pair = torch.tensor(float(len(masks) > 1), device=masks.device)
                weights[UNPAIRED_CONTROL] = has_other_pair * weights.get("reconstruction_loss", 1.0)
        self._record_components(phase, components, weights)
        return (loss, outputs) if return_outputs else loss

    @staticmethod
    def _copy_baselines(first_view: torch.Tensor, pair: Any, masks: torch.Tensor) -> dict[str, torch.Tensor]:
        targets = pair.targets
        answers = (pair.transformed, box_blur(pair.transformed, BLURRED_COPY_KERNEL), first_view)
        return {
            name: masked_mse(view.unsqueeze(1).expand_as(targets), targets, masks)
            for name, view in zip(COPY_BASELINES, answers, strict=True)
        }

    def _unpaired_reconstruction_loss(
        self, model: nn.Module, outputs: Any, pair: Any, masks: torch.Tensor
    ) -> torch.Tensor:
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
        return masked_mse(reconstructions, pair.targets, masks)

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
        if "loss" in logs:
            logs.update({name: round(value, 6) for name, value in self._pop_component_means("train").items()})
        super().log(logs, *args, **kwargs)

    def evaluation_loop(
        self,
        dataloader: Any,
        description: str,
        prediction_loss_only: bool | None = None,
        ignore_keys: list[str] | None = None,
        metric_key_prefix: str = "eval",
    ):
        self._pop_component_means("eval")  # start clean
        output = super().evaluation_loop(dataloader, description, prediction_loss_only, ignore_keys, metric_key_prefix)
        for name, value in self._pop_component_means("eval").items():
            output.metrics[f"{metric_key_prefix}_{name}"] = value
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
