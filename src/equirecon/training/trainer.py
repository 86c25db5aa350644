"""`EquiReconTrainer`: a `transformers.Trainer` whose loss is the weighted sum of the host SSL loss and the
reconstruction loss, computed from transform pairs whose g_θ is applied on the device, once per batch."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from transformers import Trainer
from transformers.trainer_utils import get_last_checkpoint

from ..modeling.modeling_equirecon import masked_mse
from .arguments import EquiReconTrainingArguments
from .transformations import TransformationConfig, make_transformed_pair

LOSS_COMPONENTS = ("ssl_loss", "reconstruction_loss")
COPY_BASELINES = ("copy_view2_loss", "copy_view1_loss")
"""Evaluation controls: the reconstruction loss of answering every target with view 2 (resp. view 1) itself, on the
same pairs and masks. Decoders that do not beat both have learnt nothing about the in-between states."""


class NonFiniteLossError(RuntimeError):
    """Raised when a training loss is NaN or infinite: continuing would overwrite good weights with garbage."""


class EquiReconTrainer(Trainer):
    """Trainer for `EquiReconForPreTraining` on batches of transform pairs
    `{pixel_values, base_pixel_values, transform_params}` (see `equirecon.training.data`).

    For every batch it builds v2 = g_θ(u) and the K targets g_{kθ/(K+1)}(u) with their validity masks on the
    device, calls the model, and combines `ssl_weight·ssl_loss + reconstruction_weight·reconstruction_loss`.
    `ssl_loss` and `reconstruction_loss` are logged next to `loss` (averaged over the steps since the last log and
    over processes), and evaluation reports them as `eval_ssl_loss` and `eval_reconstruction_loss`, next to the
    controls `eval_copy_view2_loss` and `eval_copy_view1_loss` (`COPY_BASELINES`).

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
        requested_k = training_args.num_intermediates if training_args is not None else None
        if requested_k is not None and requested_k != config.num_intermediates:
            raise ValueError(
                f"--num_intermediates {requested_k} does not match the model's num_intermediates "
                f"{config.num_intermediates} (one decoder per intermediate target); build the model with K={requested_k}."
            )
        self.num_intermediates = config.num_intermediates
        self.ssl_weight = training_args.ssl_weight if training_args is not None else 1.0
        weight = training_args.reconstruction_weight if training_args is not None else None
        self.reconstruction_weight = config.reconstruction_weight if weight is None else weight
        self._component_sums: dict[str, dict[str, torch.Tensor]] = {"train": {}, "eval": {}}
        self._component_counts: dict[str, int] = {"train": 0, "eval": 0}

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
            self.num_intermediates,
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
            return_loss=True,
        )
        loss = self.ssl_weight * outputs.ssl_loss
        if outputs.reconstruction_loss is not None:
            loss = loss + self.reconstruction_weight * outputs.reconstruction_loss
        phase = "train" if model.training else "eval"
        if phase == "train" and not torch.isfinite(loss.detach()).item():
            self._raise_non_finite(outputs)
        components = {name: getattr(outputs, name) for name in LOSS_COMPONENTS}
        if phase == "eval" and outputs.reconstruction_loss is not None:
            components.update(self._copy_baselines(inputs["pixel_values"], pair))
        self._record_components(phase, components)
        return (loss, outputs) if return_outputs else loss

    @staticmethod
    def _copy_baselines(first_view: torch.Tensor, pair: Any) -> dict[str, torch.Tensor]:
        targets = pair.targets
        return {
            name: masked_mse(view.unsqueeze(1).expand_as(targets), targets, pair.target_masks)
            for name, view in zip(COPY_BASELINES, (pair.transformed, first_view), strict=True)
        }

    def _record_components(self, phase: str, components: dict[str, torch.Tensor | None]) -> None:
        sums = self._component_sums[phase]
        for name, value in components.items():
            if value is not None:
                sums[name] = sums.get(name, 0.0) + value.detach().float()
        self._component_counts[phase] += 1

    def _pop_component_means(self, phase: str) -> dict[str, float]:
        """Mean of each component since the last call, over micro-steps and then over processes."""
        sums, count = self._component_sums[phase], self._component_counts[phase]
        self._component_sums[phase], self._component_counts[phase] = {}, 0
        if count == 0:
            return {}
        means = {}
        for name in sorted(sums):  # the same order on every process
            local_mean = (sums[name] / count).to(self.args.device)
            means[name] = self.accelerator.reduce(local_mean, reduction="mean").item()
        return means

    def _raise_non_finite(self, outputs: Any) -> None:
        last = get_last_checkpoint(self.args.output_dir) if self.args.output_dir else None
        components = ", ".join(
            f"{name}={getattr(outputs, name).item():.4g}"
            for name in LOSS_COMPONENTS
            if getattr(outputs, name) is not None
        )
        raise NonFiniteLossError(
            f"Non-finite training loss at step {self.state.global_step} ({components}); stopping before the weights "
            f"are updated. Last good checkpoint: {last or 'none saved yet'}. Lower the learning rate or "
            "reconstruction_weight (the paper found λ > 5 unstable), or enable bf16 instead of fp16, then resume."
        )

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
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
