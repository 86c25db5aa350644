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
  the whole R² (measured: −11 on 5 photos for a feature that is exact on the other 4);
* given validation pairs (crops of photos the fit does not see), the fit runs until their loss has not improved for
  ``patience`` epochs and keeps the best epoch's weights. SIE's benchmark has thousands of images; with the few
  photos a user or this package has, a fixed epoch count either stops short or memorises the training photos, and
  the held-out R² then measures that choice rather than the features.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

__all__ = ["MLPRegressor", "RegressorConfig", "fit_mlp_regressor"]


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

    def __post_init__(self) -> None:
        self.hidden_sizes = tuple(int(size) for size in self.hidden_sizes)
        if any(size < 1 for size in self.hidden_sizes):
            raise ValueError(f"hidden sizes must be positive, got {self.hidden_sizes}.")
        if self.epochs < 1 or self.batch_size < 1 or self.learning_rate <= 0:
            raise ValueError("epochs and batch_size must be >= 1 and learning_rate > 0.")
        if self.patience < 1:
            raise ValueError(f"patience must be >= 1 epoch, got {self.patience}.")

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
    config = config or RegressorConfig()
    if features.ndim != 2 or targets.ndim != 2 or features.shape[0] != targets.shape[0]:
        raise ValueError(f"expected features (N, D) and targets (N, P), got {features.shape} and {targets.shape}.")
    if features.shape[0] < 2:
        raise ValueError("the regressor needs at least two training samples.")
    device = torch.device(device) if device is not None else torch.device("cpu")
    features = features.float().cpu()
    targets = targets.float().cpu()

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = MLPRegressor(features.shape[1], targets.shape[1], config.hidden_sizes)
    model.input_mean, model.input_scale = _standardizer(features, config.standardize_inputs)
    model.target_mean, model.target_scale = _standardizer(targets, config.standardize_targets)
    constant = _constant_columns(targets)
    model.target_mean[constant] = targets.mean(dim=0)[constant]
    model.target_min, model.target_max = targets.amin(dim=0), targets.amax(dim=0)
    model.target_scale[constant] = 0.0
    model.to(device)

    x = features.to(device)
    y = model.standardize_targets(targets.to(device))
    optimizer = torch.optim.Adam(
        model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay, foreach=True
    )
    if validation is not None:
        validation_x = validation[0].float().to(device)
        validation_y = model.standardize_targets(validation[1].to(device))
    generator = torch.Generator().manual_seed(seed)
    best_loss, best_state, stale = float("inf"), None, 0
    for epoch in tqdm(range(config.epochs), desc=description, unit="epoch", disable=not progress, leave=False):
        model.train()
        order = torch.randperm(x.shape[0], generator=generator).to(device)
        for batch in order.split(config.batch_size):
            loss = nn.functional.mse_loss(model.forward_standardized(x[batch]), y[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        model.epochs_run = model.best_epoch = epoch + 1
        if validation is None:
            continue
        model.eval()
        with torch.no_grad():
            validation_loss = nn.functional.mse_loss(model.forward_standardized(validation_x), validation_y).item()
        if validation_loss < best_loss:
            best_loss, best_state, stale = validation_loss, copy.deepcopy(model.state_dict()), 0
            best_epoch = epoch + 1
        else:
            stale += 1
            if stale >= config.patience:
                break
    if best_state is not None:
        model.load_state_dict(best_state)
        model.best_epoch = best_epoch
    model.eval()
    return model
