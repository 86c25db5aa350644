"""What makes the method's effect measurable: the reconstruction signal reaches the encoder from the first step,
and every evaluation carries its trivial control (copy baselines for the decoders, shuffled θ for the regressor)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from model_helpers import tiny_config
from trainer_helpers import pair_stream, tiny_trainer
from transformers import set_seed

from equirecon import EquiReconForPreTraining
from equirecon.evaluation import RegressorConfig, score_feature_pairs
from equirecon.imaging.transformations import TransformationConfig, make_transformed_pair
from equirecon.training.controls import (
    BLEND_BASELINES,
    blend_answers,
    blend_losses,
    blend_statistics,
    cross_fitted_coefficients,
)
from equirecon.training.data import collate_transform_pairs
from equirecon.training.trainer import COPY_BASELINES, UNPAIRED_CONTROL, box_blur


def _encoder_gradient_norms(model: EquiReconForPreTraining) -> tuple[float, float]:
    torch.manual_seed(0)
    base = torch.randn(8, 3, 40, 40)
    theta = torch.from_numpy(TransformationConfig(family="rotation").sample(8, np.random.default_rng(0)))
    pair = make_transformed_pair(base, theta, TransformationConfig(family="rotation"), 2, output_size=32)
    out = model(
        pixel_values=torch.randn(8, 3, 32, 32),
        transformed_pixel_values=pair.transformed,
        intermediate_pixel_values=pair.targets,
        intermediate_mask=pair.target_masks,
    )
    encoder = list(model.equirecon.backbone.parameters())
    norms = []
    for loss in (out.ssl_loss, out.reconstruction_loss):
        grads = torch.autograd.grad(loss, encoder, retain_graph=True)
        norms.append(float(torch.sqrt(sum((g**2).sum() for g in grads))))
    return norms[0], norms[1]


def test_reconstruction_gradient_reaches_the_encoder_at_initialisation():
    set_seed(0)
    model = EquiReconForPreTraining(tiny_config())
    ssl, reconstruction = _encoder_gradient_norms(model)
    # With 0.02-std decoder layers this ratio was ~1e-6: five small layers in a row starve the encoder.
    assert reconstruction / ssl > 1e-3
    for decoder in model.decoders:
        conv = decoder.convs[0]
        assert conv.weight.std().item() == pytest.approx((2 / conv.weight[0].numel()) ** 0.5, rel=0.15)
        assert decoder.to_patches.weight.std().item() == pytest.approx(
            decoder.to_patches.weight.shape[1] ** -0.5, rel=0.15
        )
    # The other heads keep the encoder-style initialisation.
    assert model.equirecon.projection.weight.std().item() == pytest.approx(0.02, rel=0.15)


def test_loaded_decoders_keep_their_trained_weights(tmp_path):
    model = EquiReconForPreTraining(tiny_config())
    with torch.no_grad():
        model.decoders[0].convs[0].weight.fill_(0.123)
    model.save_pretrained(tmp_path)
    loaded = EquiReconForPreTraining.from_pretrained(tmp_path)
    assert torch.all(loaded.decoders[0].convs[0].weight == 0.123)


def test_evaluation_logs_the_copy_baselines(tmp_path):
    trainer = tiny_trainer(tmp_path, eval_dataset=list(pair_stream("validation").take(8)), max_steps=1)
    metrics = trainer.evaluate()
    controls = (*COPY_BASELINES, *BLEND_BASELINES)
    for name in ("eval_reconstruction_loss", f"eval_{UNPAIRED_CONTROL}", *(f"eval_{name}" for name in controls)):
        assert np.isfinite(metrics[name]) and metrics[name] > 0
    # The blends contain both copies (a, b = 0, 1 and 1, 0): fitted on the other half, they still do better.
    assert metrics["eval_copy_blend_loss"] < min(metrics["eval_copy_view2_loss"], metrics["eval_copy_view1_loss"])
    assert metrics["eval_copy_blurred_blend_loss"] < metrics["eval_copy_view1_loss"]
    # Training logs carry no controls: they are computed on the evaluation pairs only.
    trainer.train()
    assert all("copy_view2_loss" not in entry for entry in trainer.state.log_history if "loss" in entry)


def test_copy_view2_baseline_is_zero_when_theta_is_the_identity(tmp_path):
    pairs = [
        {**example, "transform_params": torch.zeros_like(example["transform_params"])}
        for example in pair_stream("validation").take(4)
    ]
    trainer = tiny_trainer(tmp_path, eval_dataset=pairs, max_steps=1)
    metrics = trainer.evaluate()
    assert metrics["eval_copy_view2_loss"] == pytest.approx(0.0, abs=1e-10)
    assert metrics["eval_copy_blurred_view2_loss"] > 0.0  # a blurred v2 is not v2
    assert metrics["eval_copy_view1_loss"] > 0.01  # v1 is another crop: copying it is a real error


def _evaluation_components(trainer, batch) -> dict[str, float]:
    trainer.model.eval()
    with torch.no_grad():
        trainer.compute_loss(trainer.model, batch)
    return trainer._pop_component_means("eval")


def test_unpaired_control_is_the_loss_with_the_next_pairs_first_view(tmp_path):
    trainer = tiny_trainer(tmp_path, max_steps=1)
    batch = collate_transform_pairs(list(pair_stream("validation").take(5)))
    components = _evaluation_components(trainer, batch)
    pair = make_transformed_pair(
        batch["base_pixel_values"], batch["transform_params"], trainer.transformation, 2, output_size=32
    )
    with torch.no_grad():
        unpaired = trainer.model(
            pixel_values=batch["pixel_values"].roll(1, dims=0),  # the encoder sees each image alone
            transformed_pixel_values=pair.transformed,
            intermediate_pixel_values=pair.targets,
            intermediate_mask=pair.target_masks,
        ).reconstruction_loss
    assert components[UNPAIRED_CONTROL] == pytest.approx(unpaired.item(), rel=1e-5)
    assert components[UNPAIRED_CONTROL] != components["reconstruction_loss"]  # another view 1, another answer


def test_decoders_that_ignore_view_1_lose_nothing_unpaired(tmp_path):
    trainer = tiny_trainer(tmp_path, max_steps=1)
    d_equi = trainer.model.config.d_equi
    with torch.no_grad():
        for decoder in trainer.model.decoders:
            decoder.to_patches.weight[:, :d_equi] = 0  # the first view's half of the decoder input
    components = _evaluation_components(trainer, collate_transform_pairs(list(pair_stream("validation").take(5))))
    assert components[UNPAIRED_CONTROL] == pytest.approx(components["reconstruction_loss"], rel=1e-6)


def test_a_batch_of_one_pair_has_no_unpaired_control(tmp_path):
    trainer = tiny_trainer(tmp_path, max_steps=1)
    components = _evaluation_components(trainer, collate_transform_pairs(list(pair_stream("validation").take(1))))
    assert "reconstruction_loss" in components and UNPAIRED_CONTROL not in components


def test_box_blur_keeps_constants_and_averages_its_window():
    constant = torch.full((1, 3, 9, 9), 0.7)
    assert torch.allclose(box_blur(constant, 5), constant)
    impulse = torch.zeros(1, 1, 9, 9)
    impulse[0, 0, 4, 4] = 25.0
    blurred = box_blur(impulse, 5)
    assert torch.allclose(blurred[0, 0, 2:7, 2:7], torch.ones(5, 5))
    assert blurred.sum().item() == pytest.approx(25.0)


def test_shuffled_theta_control_sits_at_chance_while_the_real_fit_does_not():
    config = TransformationConfig(family="rotation")
    theta = torch.from_numpy(config.sample(600, np.random.default_rng(0)))
    content = torch.tensor(np.random.default_rng(1).normal(size=(600, 8)), dtype=torch.float32)
    code = (theta - theta.mean()) / theta.std()
    result = score_feature_pairs(
        content,
        content + code * torch.ones(1, 8),
        theta,
        regressor=RegressorConfig(epochs=40, hidden_sizes=(64, 64)),
        shuffled_control=True,
    )
    assert result.r2 > 0.9
    assert result.shuffled_r2 is not None and result.shuffled_r2 < 0.1
    assert result.to_dict()["shuffled_r2"] == result.shuffled_r2
    without = score_feature_pairs(content, content, theta, regressor=RegressorConfig(epochs=2))
    assert without.shuffled_r2 is None


def test_component_means_leave_out_batches_that_do_not_count(tmp_path):
    # An iBOT batch whose pairs are all masked has no reconstruction loss: it must not count as a loss of 0.
    trainer = tiny_trainer(tmp_path, max_steps=1)
    counts, skips = torch.ones(()), torch.zeros(())
    trainer._record_components("eval", {"reconstruction_loss": torch.tensor(0.4), "ssl_loss": torch.tensor(2.0)})
    trainer._record_components(
        "eval",
        {"reconstruction_loss": torch.tensor(0.0), "ssl_loss": torch.tensor(4.0)},
        {"reconstruction_loss": skips, "ssl_loss": counts},
    )
    means = trainer._pop_component_means("eval")
    assert means["reconstruction_loss"] == pytest.approx(0.4) and means["ssl_loss"] == pytest.approx(3.0)
    assert trainer._pop_component_means("eval") == {}  # popped: the next evaluation starts clean


def _synthetic_pairs(coefficients: list[tuple[float, float]], batch: int = 10, size: int = 12, seed: int = 0):
    """Views v1, v2 and K targets that are exactly a_k·v1 + b_k·v2, with random masks."""
    generator = torch.Generator().manual_seed(seed)
    first, second = torch.randn(2, batch, 3, size, size, generator=generator)
    targets = torch.stack([a * first + b * second for a, b in coefficients], dim=1)
    masks = (torch.rand(batch, len(coefficients), 1, size, size, generator=generator) > 0.3).float()
    return first, second, targets, masks


def test_the_blend_recovers_the_coefficients_of_an_exact_blend_and_scores_zero():
    first, second, targets, masks = _synthetic_pairs([(0.3, 0.7), (0.6, 0.4)])
    halves = torch.arange(len(first)) % 2
    coefficients = cross_fitted_coefficients(*blend_statistics(first, second, targets, masks, halves))
    assert coefficients.shape == (2, 2, 2)
    expected = torch.tensor([[0.3, 0.7], [0.6, 0.4]])
    assert torch.allclose(coefficients, expected.expand(2, 2, 2), atol=1e-5)
    losses = blend_losses(first, second, targets, masks, halves, dict.fromkeys(BLEND_BASELINES, coefficients))
    assert losses["copy_blend_loss"].item() == pytest.approx(0.0, abs=1e-8)
    # Blurring the views loses their detail: the blurred blend is a real error.
    assert losses["copy_blurred_blend_loss"].item() > 0.05


def test_each_half_is_answered_with_the_fit_of_the_other():
    first, second, _, masks = _synthetic_pairs([(0.0, 0.0)])
    halves = torch.arange(len(first)) % 2
    # Pairs in half 0 are 0.3·v1 + 0.7·v2, pairs in half 1 are 0.9·v1 + 0.1·v2.
    weights = torch.where(halves[:, None] == 0, torch.tensor([0.3, 0.7]), torch.tensor([0.9, 0.1]))
    targets = (weights[:, 0, None, None, None] * first + weights[:, 1, None, None, None] * second).unsqueeze(1)
    coefficients = cross_fitted_coefficients(*blend_statistics(first, second, targets, masks, halves))
    assert torch.allclose(coefficients[0, 0], torch.tensor([0.9, 0.1]), atol=1e-5)  # fitted on half 1
    assert torch.allclose(coefficients[1, 0], torch.tensor([0.3, 0.7]), atol=1e-5)  # fitted on half 0
    answers = blend_answers(first, second, coefficients[halves])
    assert not torch.allclose(answers, targets, atol=1e-2)  # never answered with its own fit


def test_masked_pixels_do_not_enter_the_fit():
    first, second, targets, masks = _synthetic_pairs([(0.3, 0.7)])
    corrupted = torch.where(masks.bool().expand_as(targets), targets, torch.full_like(targets, 50.0))
    halves = torch.arange(len(first)) % 2
    coefficients = cross_fitted_coefficients(*blend_statistics(first, second, corrupted, masks, halves))
    assert torch.allclose(coefficients[:, 0], torch.tensor([0.3, 0.7]).expand(2, 2), atol=1e-5)


def test_an_evaluation_set_of_one_pair_has_no_blend_control(tmp_path):
    trainer = tiny_trainer(tmp_path, eval_dataset=list(pair_stream("validation").take(1)), max_steps=1)
    metrics = trainer.evaluate()
    assert "eval_copy_view2_loss" in metrics and "eval_copy_blend_loss" not in metrics
