"""Evaluation precision: which arithmetic "auto" picks, and what bfloat16 autocast may and may not change."""

import pytest
import torch
from transformers import ViTConfig, ViTModel

from equirecon.evaluation import precision as precision_module
from equirecon.evaluation.equivariance import run_equivariance_benchmark
from equirecon.evaluation.features import FeatureExtractor, encode_images
from equirecon.evaluation.loading import InputSpec
from equirecon.evaluation.metrics import r2_score
from equirecon.evaluation.precision import autocast, resolve_precision
from equirecon.evaluation.regression import RegressorConfig, fit_mlp_regressor

SPEC = InputSpec(image_size=(32, 32), image_mean=(0.5, 0.5, 0.5), image_std=(0.25, 0.25, 0.25))


def _tiny_vit() -> ViTModel:
    torch.manual_seed(0)
    config = ViTConfig(
        image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64
    )
    return ViTModel(config, add_pooling_layer=False).eval()


@pytest.mark.parametrize(("amx", "expected"), [(True, "bfloat16"), (False, "float32"), (None, "float32")])
def test_auto_is_bfloat16_only_on_a_cpu_with_bfloat16_matrix_units(monkeypatch, amx, expected):
    if amx is None:  # a torch without the query stays in float32
        monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported", raising=False)
    else:
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx, raising=False)
    assert resolve_precision("auto", "cpu") == expected
    assert resolve_precision("float32", "cpu") == "float32" and resolve_precision("bfloat16", "cpu") == "bfloat16"


def test_auto_on_cuda_follows_bfloat16_support_and_bad_values_name_the_choices(monkeypatch):
    for supported, expected in ((True, "bfloat16"), (False, "float32")):
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda supported=supported: supported)
        assert resolve_precision("auto", "cuda:0") == expected
    with pytest.raises(ValueError, match="precision must be one of auto, float32, bfloat16, got 'fp16'"):
        resolve_precision("fp16", "cpu")
    with pytest.raises(ValueError, match="resolved precision"):
        autocast("cpu", "auto")
    with pytest.raises(ValueError, match="precision must be 'float32' or 'bfloat16'"):
        RegressorConfig(precision="auto")


def test_autocast_changes_matrix_products_only_in_bfloat16():
    linear = torch.nn.Linear(8, 4)
    inputs = torch.randn(3, 8)
    with autocast("cpu", "float32"):
        assert linear(inputs).dtype == torch.float32
    with autocast("cpu", "bfloat16"):
        assert linear(inputs).dtype == torch.bfloat16
    assert linear(inputs).dtype == torch.float32  # and nothing outlives the context


def test_bfloat16_features_are_float32_tensors_close_to_the_float32_ones():
    model = _tiny_vit()
    images = torch.rand(6, 3, 32, 32) * 2 - 1
    exact = FeatureExtractor(model, kinds=("mean_patch", "cls"))(images)
    mixed = FeatureExtractor(model, kinds=("mean_patch", "cls"), precision="bfloat16")(images)
    for kind, values in exact.items():
        assert mixed[kind].dtype == torch.float32
        assert not torch.equal(mixed[kind], values)  # the forward did run in bfloat16
        assert (mixed[kind] - values).norm() <= 0.02 * values.norm()
    with pytest.raises(ValueError, match="resolved precision"):
        FeatureExtractor(model, precision="auto")
    pictures = [image.permute(1, 2, 0).numpy() * 0.5 + 0.5 for image in images]
    encoded = encode_images(model, pictures, input_spec=SPEC, kinds=("cls",), precision="float32")["cls"]
    assert encoded.dtype == torch.float32 and encoded.shape == (6, 32)


def test_a_bfloat16_fit_keeps_float32_weights_and_reaches_the_float32_fit():
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(512, 16, generator=generator)
    targets = features[:, :2] @ torch.tensor([[1.0, -0.5], [0.5, 2.0]]) + 3.0
    scores = {}
    for precision in ("float32", "bfloat16"):
        config = RegressorConfig(
            hidden_sizes=(64, 64), epochs=30, batch_size=64, learning_rate=3e-3, precision=precision
        )
        regressor = fit_mlp_regressor(features[:384], targets[:384], config)
        assert all(parameter.dtype == torch.float32 for parameter in regressor.parameters())
        predictions = regressor.predict(features[384:])
        assert predictions.dtype == torch.float32
        scores[precision] = r2_score(y_true=targets[384:], y_pred=predictions)
    assert scores["float32"] > 0.95 and scores["bfloat16"] == pytest.approx(scores["float32"], abs=0.03)


def _photos():
    generator = torch.Generator().manual_seed(1)
    return [(torch.rand(48, 64, 3, generator=generator) * 255).to(torch.uint8).numpy() for _ in range(3)]


def test_the_benchmark_records_its_precision_and_float32_is_unchanged_by_auto_without_matrix_units(monkeypatch):
    model = _tiny_vit()
    small = RegressorConfig(hidden_sizes=(32,), epochs=5, batch_size=64)
    kwargs = {"num_crops": 64, "input_spec": SPEC, "regressor": small, "progress": False, "families": ["rotation"]}
    exact = run_equivariance_benchmark(model, _photos(), precision="float32", **kwargs)
    assert exact.settings["precision"] == "float32" and exact.settings["regressor"]["precision"] == "float32"
    monkeypatch.setattr(precision_module, "_cpu_has_bfloat16_matrix_units", lambda: False)
    assert run_equivariance_benchmark(model, _photos(), **kwargs).to_dict() == exact.to_dict()
    monkeypatch.setattr(precision_module, "_cpu_has_bfloat16_matrix_units", lambda: True)
    mixed = run_equivariance_benchmark(model, _photos(), **kwargs)
    assert mixed.settings["precision"] == "bfloat16" and mixed.settings["regressor"]["precision"] == "bfloat16"
    assert mixed.r2 != exact.r2  # the features of another arithmetic, recorded, on the same crops and θ
