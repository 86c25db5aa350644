"""The small MLP that regresses transformation parameters θ from a pair of frozen features (SIE's protocol).

SIE (``facebookresearch/SIE:eval_angle_prediction.py``) reads θ from ``[f(I); f(g_θ(I))]`` with
``Linear(2d, 1024) → ReLU → Linear(1024, 1024) → ReLU → Linear(1024, P)``, Adam (lr 1e-3, no weight decay, no
schedule), batch 256, MSE, a fixed number of epochs, and reports R² of the final model on held-out data.

Three deliberate differences:

* inputs and targets are standardised with the training set's statistics before fitting, and predictions are mapped
  back to θ's own units. SIE regresses quaternions (all of order 1); here θ is in degrees (±45), pixels or colour
  offsets (±0.4), and the features of arbitrary checkpoints differ in scale by orders of magnitude, so without
  standardisation a short CPU-sized fit measures the optimiser's progress rather than the information in the
  features. R² is computed on the raw θ, so its definition is unchanged;
* predictions are clamped to the range of the training targets. θ is drawn from a bounded range, and an MLP fed the
  features of a photo unlike its training photos can extrapolate far outside it, so that one photo's crops decide
  the whole R²;
* given validation pairs (crops of photos the fit does not see), the fit runs until their loss has not improved for
  ``patience`` epochs and keeps the best epoch's weights. SIE's benchmark has thousands of images; with the few
  photos a user or this package has, a fixed epoch count either stops short or memorises the training photos, and
  the held-out R² then measures that choice rather than the features.

Regressors fitted on the same pairs (a benchmark fold: every family, and each one's θ-shuffled control) are trained
as one batch by :func:`fit_mlp_regressors`: their weights are stacked and every layer is one batched matrix product.
Each regressor still gets exactly its own gradient, Adam step and early stopping; what changes is that the CPU's
threads work through a few large operations instead of synchronising on many small ones, which keeps the cores busy
on a loaded machine instead of waiting on each other.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from .precision import autocast

__all__ = ["MLPRegressor", "RegressorConfig", "epoch_seconds", "fit_mlp_regressor", "fit_mlp_regressors"]


@dataclass
class RegressorConfig:
    """Hyper-parameters of the θ regressor. Defaults are SIE's, except the epoch count (sized for CPU runs) and early
    stopping (``patience``: epochs without improvement of the validation loss; it applies only when the fit is
    given validation pairs, and ``epochs`` is then the maximum)."""

    hidden_sizes: tuple[int, ...] = (1024, 1024)
    epochs: int = 100
    batch_size: int = 256
    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    standardize_inputs: bool = True
    standardize_targets: bool = True
    patience: int = 10
    #: The training steps' matrix products: ``"float32"`` or ``"bfloat16"`` autocast (:mod:`.precision`). Weights,
    #: Adam's state, the early-stopping losses and the predictions stay float32.
    precision: str = "float32"

    def __post_init__(self) -> None:
        self.hidden_sizes = tuple(int(size) for size in self.hidden_sizes)
        if any(size < 1 for size in self.hidden_sizes):
            raise ValueError(f"hidden sizes must be positive, got {self.hidden_sizes}.")
        if self.epochs < 1 or self.batch_size < 1 or self.learning_rate <= 0:
            raise ValueError("epochs and batch_size must be >= 1 and learning_rate > 0.")
        if self.patience < 1:
            raise ValueError(f"patience must be >= 1 epoch, got {self.patience}.")
        if self.precision not in ("float32", "bfloat16"):
            raise ValueError(f"precision must be 'float32' or 'bfloat16', got {self.precision!r}.")

    def to_dict(self) -> dict:
        return {**asdict(self), "hidden_sizes": list(self.hidden_sizes)}


def _constant_columns(values: torch.Tensor) -> torch.Tensor:
    """Columns without variance (relative to their size), as a boolean mask."""
    values = values.double()
    return values.std(dim=0, unbiased=False) <= 1e-6 * (values.mean(dim=0).abs() + 1.0)


def _standardizer(values: torch.Tensor, enabled: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and scale of each column; columns without variance are only centred (their scale stays 1)."""
    if not enabled:
        return torch.zeros(values.shape[1]), torch.ones(values.shape[1])
    std = values.double().std(dim=0, unbiased=False)
    scale = torch.where(_constant_columns(values), torch.ones_like(std), std)
    return values.double().mean(dim=0).float(), scale.float()


class MLPRegressor(nn.Module):
    """MLP with ReLU hidden layers whose input and output (de)standardisation is part of the module.

    ``forward`` takes raw features and returns θ in its own units, so the fitted regressor can be applied to new
    features without carrying separate statistics around.
    """

    def __init__(self, in_features: int, out_features: int, hidden_sizes: tuple[int, ...] = (1024, 1024)) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = in_features
        for size in hidden_sizes:
            layers += [nn.Linear(width, size), nn.ReLU()]
            width = size
        layers.append(nn.Linear(width, out_features))
        self.net = nn.Sequential(*layers)
        self.register_buffer("input_mean", torch.zeros(in_features))
        self.register_buffer("input_scale", torch.ones(in_features))
        self.register_buffer("target_mean", torch.zeros(out_features))
        self.register_buffer("target_scale", torch.ones(out_features))
        self.register_buffer("target_min", torch.full((out_features,), -torch.inf))
        self.register_buffer("target_max", torch.full((out_features,), torch.inf))
        #: Epochs the fit ran, and the epoch whose weights were kept (the last one unless it stopped early).
        self.epochs_run = 0
        self.best_epoch = 0

    def forward_standardized(self, features: torch.Tensor) -> torch.Tensor:
        return self.net((features - self.input_mean) / self.input_scale)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        # A target that was constant in training (scale 0) is predicted as that constant, not as the net's noise,
        # and no prediction leaves the range of the training targets (θ is drawn from a bounded range).
        predictions = self.forward_standardized(features) * self.target_scale + self.target_mean
        return torch.minimum(torch.maximum(predictions, self.target_min), self.target_max)

    def standardize_targets(self, targets: torch.Tensor) -> torch.Tensor:
        """Targets in the units the net is trained in (constant columns become 0)."""
        scale = torch.where(self.target_scale > 0, self.target_scale, torch.ones_like(self.target_scale))
        return (targets.to(scale.device, torch.float32) - self.target_mean) / scale

    @torch.no_grad()
    def predict(self, features: torch.Tensor, batch_size: int = 4096) -> torch.Tensor:
        """Predictions for ``features`` ``(N, D)`` (any device), returned on the CPU as float32."""
        self.eval()
        device = self.input_mean.device
        outputs = [self(chunk.to(device, torch.float32)).cpu() for chunk in features.split(batch_size)]
        return torch.cat(outputs) if outputs else torch.empty(0, self.target_mean.numel())


def _initialised_regressor(features: torch.Tensor, targets: torch.Tensor, config: RegressorConfig, seed: int):
    """A fresh :class:`MLPRegressor` (initialised from ``seed`` alone) carrying the statistics of its training set."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = MLPRegressor(features.shape[1], targets.shape[1], config.hidden_sizes)
    model.input_mean, model.input_scale = _standardizer(features, config.standardize_inputs)
    model.target_mean, model.target_scale = _standardizer(targets, config.standardize_targets)
    constant = _constant_columns(targets)
    model.target_mean[constant] = targets.mean(dim=0)[constant]
    model.target_min, model.target_max = targets.amin(dim=0), targets.amax(dim=0)
    model.target_scale[constant] = 0.0
    return model


class _StackedMLPs:
    """The weights of M MLPs of one shape stacked along a leading axis, so that one batched matrix product per layer
    trains all of them: a handful of large operations instead of M times as many small ones, which is what keeps
    both CPU threads busy. Outputs are zero-padded to the widest regressor's and masked out of the loss.

    Adam updates every element on its own, so one Adam over the stack is M independent Adams, and the loss is the
    sum of the M regressors' own losses, so each gets exactly its own gradient."""

    def __init__(self, regressors: Sequence[MLPRegressor], config: RegressorConfig, device: torch.device) -> None:
        self.config = config
        width = max(regressor.target_mean.numel() for regressor in regressors)
        layers = [[module for module in regressor.net if isinstance(module, nn.Linear)] for regressor in regressors]
        self.parameters: list[torch.Tensor] = []
        for depth in range(len(layers[0])):
            linears = [regressor_layers[depth] for regressor_layers in layers]
            out_features = width if depth == len(layers[0]) - 1 else linears[0].out_features
            weight = torch.zeros(len(linears), linears[0].in_features, out_features)
            bias = torch.zeros(len(linears), 1, out_features)
            for index, linear in enumerate(linears):
                weight[index, :, : linear.out_features] = linear.weight.detach().T
                bias[index, 0, : linear.out_features] = linear.bias.detach()
            self.parameters += [weight.to(device).requires_grad_(), bias.to(device).requires_grad_()]
        self.optimizer = self._adam(self.parameters)

    def _adam(self, parameters: list[torch.Tensor]) -> torch.optim.Adam:
        # The fused kernel reads and writes each element once per step, where the foreach form makes seven passes
        # over the ~12 M weights of a benchmark's stack: 3× faster steps, a third of an epoch on 2 CPU cores.
        config = self.config
        return torch.optim.Adam(parameters, lr=config.learning_rate, weight_decay=config.weight_decay, fused=True)

    def __call__(self, inputs: torch.Tensor) -> torch.Tensor:
        """``(M, B, D)`` standardised inputs → ``(M, B, width)`` standardised predictions."""
        hidden = inputs
        num_layers = len(self.parameters) // 2
        for depth in range(num_layers):
            weight, bias = self.parameters[2 * depth], self.parameters[2 * depth + 1]
            hidden = torch.baddbmm(bias, hidden, weight)
            if depth < num_layers - 1:
                hidden = hidden.relu()
        return hidden

    def weights_of(self, row: int) -> list[torch.Tensor]:
        return [parameter[row].detach().clone() for parameter in self.parameters]

    def keep(self, rows: list[int]) -> None:
        """Drop every regressor but ``rows`` (stopped ones cost nothing more), carrying Adam's state over."""
        index = torch.tensor(rows, device=self.parameters[0].device)
        kept = [parameter.detach()[index].clone().requires_grad_() for parameter in self.parameters]
        optimizer = self._adam(kept)
        for old, new in zip(self.parameters, kept, strict=True):
            optimizer.state[new] = {
                name: value[index].clone() if value.ndim else value.clone()
                for name, value in self.optimizer.state[old].items()
            }
        self.parameters, self.optimizer = kept, optimizer


def _masked_losses(predictions: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Each regressor's mean squared error over its own outputs (``mask`` hides the padding): ``(M,)``."""
    squared = (predictions - targets).square() * mask
    return squared.sum(dim=(1, 2)) / (targets.shape[1] * mask.sum(dim=(1, 2)))


@torch.no_grad()
def _validation_losses(
    stack: _StackedMLPs, inputs: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor, chunk: int = 4096
) -> list[float]:
    """:func:`_masked_losses` over all validation pairs, a chunk of them at a time (memory stays bounded)."""
    total = torch.zeros(inputs.shape[0], device=inputs.device)
    for start in range(0, inputs.shape[1], chunk):
        rows = slice(start, start + chunk)
        total += _masked_losses(stack(inputs[:, rows]), targets[:, rows], mask) * targets[:, rows].shape[1]
    return (total / inputs.shape[1]).tolist()


def fit_mlp_regressors(
    features: Sequence[torch.Tensor],
    targets: Sequence[torch.Tensor],
    config: RegressorConfig | None = None,
    *,
    validation: Sequence[tuple[torch.Tensor, torch.Tensor]] | None = None,
    seed: int = 0,
    device: torch.device | str | None = None,
    progress: bool = False,
    description: str = "regressors",
) -> list[MLPRegressor]:
    """Fit M :class:`MLPRegressor` s at once, the ``m``-th from ``features[m]`` ``(N, D)`` to ``targets[m]``
    ``(N, P_m)``, each as :func:`fit_mlp_regressor` would fit it alone (up to float rounding).

    The M fits share the batch order (it depends on ``seed`` alone, as for one fit) and are trained together with
    batched matrix products (the benchmark's families and θ-shuffled controls of one fold: the same pairs, other
    targets). Each keeps its own early stopping on ``validation[m]``; a stopped regressor leaves the batch.
    """
    config = config or RegressorConfig()
    if not features or len(features) != len(targets):
        raise ValueError(
            f"expected as many feature as target tensors (at least one), got {len(features)} and {len(targets)}."
        )
    shape = tuple(features[0].shape)
    for inputs, outputs in zip(features, targets, strict=True):
        if inputs.ndim != 2 or outputs.ndim != 2 or tuple(inputs.shape) != shape or outputs.shape[0] != shape[0]:
            raise ValueError(
                f"expected features (N, D) of one shape and targets (N, P), got {tuple(inputs.shape)} and "
                f"{tuple(outputs.shape)} (first features: {shape})."
            )
    if shape[0] < 2:
        raise ValueError("the regressor needs at least two training samples.")
    if validation is not None:
        if len(validation) != len(features):
            raise ValueError(f"give validation pairs for all {len(features)} regressors or for none.")
        for (inputs, outputs), train_targets in zip(validation, targets, strict=True):
            if inputs.shape != validation[0][0].shape or inputs.shape[1:] != shape[1:]:
                raise ValueError(f"validation features must all be (N_val, {shape[1]}), got {tuple(inputs.shape)}.")
            if tuple(outputs.shape) != (inputs.shape[0], train_targets.shape[1]):
                raise ValueError(f"validation targets {tuple(outputs.shape)} do not match their features or targets.")
    device = torch.device(device) if device is not None else torch.device("cpu")
    features = [inputs.float().cpu() for inputs in features]
    targets = [outputs.float().cpu() for outputs in targets]
    regressors = [
        _initialised_regressor(inputs, outputs, config, seed)
        for inputs, outputs in zip(features, targets, strict=True)
    ]
    stack = _StackedMLPs(regressors, config, device)
    width = stack.parameters[-1].shape[-1]

    def standardised(pairs: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
        inputs = torch.stack(
            [(x.float().cpu() - r.input_mean) / r.input_scale for r, (x, _) in zip(regressors, pairs, strict=True)]
        )
        outputs = torch.zeros(len(pairs), inputs.shape[1], width)
        for index, (regressor, (_, y)) in enumerate(zip(regressors, pairs, strict=True)):
            outputs[index, :, : y.shape[1]] = regressor.standardize_targets(y.float().cpu())
        return inputs.to(device), outputs.to(device)

    x, y = standardised(list(zip(features, targets, strict=True)))
    mask = torch.zeros(len(regressors), 1, width, device=device)
    for index, outputs in enumerate(targets):
        mask[index, 0, : outputs.shape[1]] = 1.0
    if validation is not None:
        validation_x, validation_y = standardised(validation)

    active = list(range(len(regressors)))  # the regressor in each row of the stack
    best_loss = [float("inf")] * len(regressors)
    best_epoch = [0] * len(regressors)
    best_weights: list[list[torch.Tensor] | None] = [None] * len(regressors)
    stale = [0] * len(regressors)

    def finish(row: int, index: int) -> None:  # the best epoch's weights, or the last epoch's without validation
        regressor = regressors[index]
        _load_weights(regressor, best_weights[index] or stack.weights_of(row))
        regressor.best_epoch = best_epoch[index] if best_weights[index] is not None else regressor.epochs_run

    generator = torch.Generator().manual_seed(seed)
    for epoch in tqdm(range(config.epochs), desc=description, unit="epoch", disable=not progress, leave=False):
        order = torch.randperm(x.shape[1], generator=generator).to(device)
        for batch in order.split(config.batch_size):
            with autocast(device, config.precision):
                predictions = stack(x[:, batch])
            losses = _masked_losses(predictions.float(), y[:, batch], mask)
            stack.optimizer.zero_grad(set_to_none=True)
            losses.sum().backward()
            stack.optimizer.step()
        for index in active:
            regressors[index].epochs_run = epoch + 1
        if validation is None:
            continue
        validation_losses = _validation_losses(stack, validation_x, validation_y, mask)
        kept = []
        for row, (index, loss) in enumerate(zip(active, validation_losses, strict=True)):
            if loss < best_loss[index]:
                best_loss[index], best_epoch[index], stale[index] = loss, epoch + 1, 0
                best_weights[index] = stack.weights_of(row)
            else:
                stale[index] += 1
            if stale[index] >= config.patience:
                finish(row, index)
            else:
                kept.append(row)
        if len(kept) < len(active):
            active = [active[row] for row in kept]
            if not active:
                break
            x, y, mask = x[kept], y[kept], mask[kept]
            validation_x, validation_y = validation_x[kept], validation_y[kept]
            stack.keep(kept)
    for row, index in enumerate(active):
        finish(row, index)
    return [regressor.to(device).eval() for regressor in regressors]


def _load_weights(regressor: MLPRegressor, weights: list[torch.Tensor]) -> None:
    """Copy one regressor's slice of the stack (``[W₁, b₁, W₂, b₂, ...]``, padded outputs) into its layers."""
    linears = [module for module in regressor.net if isinstance(module, nn.Linear)]
    with torch.no_grad():
        for linear, weight, bias in zip(linears, weights[::2], weights[1::2], strict=True):
            linear.weight.copy_(weight[:, : linear.out_features].T)
            linear.bias.copy_(bias[0, : linear.out_features])


def fit_mlp_regressor(
    features: torch.Tensor,
    targets: torch.Tensor,
    config: RegressorConfig | None = None,
    *,
    validation: tuple[torch.Tensor, torch.Tensor] | None = None,
    seed: int = 0,
    device: torch.device | str | None = None,
    progress: bool = False,
    description: str = "regressor",
) -> MLPRegressor:
    """Fit an :class:`MLPRegressor` from ``features`` ``(N, D)`` to ``targets`` ``(N, P)`` with Adam and MSE.

    With ``validation`` (features, targets), the fit stops once their loss has not improved for
    ``config.patience`` epochs and returns the weights of the best epoch (early stopping); without, it runs
    ``config.epochs`` epochs. Initialisation and batch order depend only on ``seed``, not on the global RNG state,
    so two runs with the same inputs give the same regressor (on the same device).
    """
    if features.ndim != 2 or targets.ndim != 2 or features.shape[0] != targets.shape[0]:
        raise ValueError(f"expected features (N, D) and targets (N, P), got {features.shape} and {targets.shape}.")
    (regressor,) = fit_mlp_regressors(
        [features],
        [targets],
        config,
        validation=[validation] if validation is not None else None,
        seed=seed,
        device=device,
        progress=progress,
        description=description,
    )
    return regressor


def epoch_seconds(
    num_models: int,
    in_features: int,
    out_features: int,
    num_train: int,
    num_validation: int = 0,
    config: RegressorConfig | None = None,
    device: torch.device | str | None = None,
) -> float:
    """Seconds one epoch of :func:`fit_mlp_regressors` takes here for ``num_models`` regressors of this shape, from the
    fastest of three optimisation steps on random data (for a time estimate before a long fit; well under a second)."""
    config = config or RegressorConfig()
    device = torch.device(device) if device is not None else torch.device("cpu")
    with torch.random.fork_rng(devices=[]):
        template = MLPRegressor(in_features, out_features, config.hidden_sizes)
        stack = _StackedMLPs([template] * num_models, config, device)
        inputs = torch.randn(num_models, min(config.batch_size, num_train), in_features, device=device)
    targets = torch.zeros(*inputs.shape[:2], out_features, device=device)
    mask = torch.ones(num_models, 1, out_features, device=device)

    def step() -> float:
        with autocast(device, config.precision):
            predictions = stack(inputs)
        losses = _masked_losses(predictions.float(), targets, mask)
        stack.optimizer.zero_grad(set_to_none=True)
        losses.sum().backward()
        stack.optimizer.step()
        return float(losses.detach().sum())  # waits for an asynchronous device

    step()  # warm-up
    seconds = float("inf")
    for _ in range(3):  # the fastest step: a shared machine's hiccups are not the fit's cost
        start = time.perf_counter()
        step()
        seconds = min(seconds, time.perf_counter() - start)
    # A validation pass is a forward without backward over the validation pairs: about a third of a step per batch.
    return seconds * (math.ceil(num_train / config.batch_size) + num_validation / (3 * config.batch_size))
