"""The equivariance R² benchmark: the regression half on synthetic features, then the whole pipeline."""

import json

import numpy as np
import pytest
import skimage.data
import torch
from transformers import ViTConfig, ViTModel

from equirecon.evaluation.cache import FeatureCache
from equirecon.evaluation.crops import CropSet
from equirecon.evaluation.equivariance import run_equivariance_benchmark, score_feature_pairs
from equirecon.evaluation.loading import InputSpec
from equirecon.evaluation.regression import RegressorConfig, fit_mlp_regressor
from equirecon.imaging.transformations import TransformationConfig

# Small and quick (fewer, larger steps than SIE's MLP); the protocol itself is the default RegressorConfig.
SMALL_REGRESSOR = RegressorConfig(hidden_sizes=(64, 64), epochs=20, batch_size=128, learning_rate=5e-3)
SPEC = InputSpec(image_size=(32, 32), image_mean=(0.5, 0.5, 0.5), image_std=(0.25, 0.25, 0.25))


def _theta(family, count, seed=0):
    config = TransformationConfig(family=family)
    return config, torch.from_numpy(config.sample(count, np.random.default_rng(seed)))


# ----------------------------------------------------------------------------------- regression on features


@pytest.mark.parametrize("family", ["rotation", "translation", "color"])
def test_features_containing_theta_give_r2_near_one(family):
    config, theta = _theta(family, 600)
    rng = np.random.default_rng(1)
    content = torch.tensor(rng.normal(size=(600, 8)), dtype=torch.float32)
    embedding = torch.tensor(rng.normal(size=(config.num_parameters, 8)), dtype=torch.float32)
    # f(I) is image content; f(g_θ(I)) is the same content moved by a linear code of θ (each parameter
    # standardised, so a small-range one such as hue is as visible as the others).
    code = (theta - theta.mean(0)) / theta.std(0)
    result = score_feature_pairs(
        content,
        content + code @ embedding,
        theta,
        family=family,
        parameter_names=config.parameter_names,
        regressor=SMALL_REGRESSOR,
    )
    assert result.r2 > 0.95 and result.r2_global > 0.95 and result.r2_per_output > 0.95
    assert min(result.per_parameter_r2.values()) > 0.9 and min(result.fold_r2) > 0.9
    assert list(result.per_parameter_r2) == list(config.parameter_names)
    # 5 folds: each regressor fits 3/5 of the pairs, stops on 1/5, scores 1/5; every pair is scored once.
    assert (result.num_train, result.num_test, len(result.fold_r2)) == (360, 600, 5)


@pytest.mark.parametrize("convention", ["global", "per_output"])
def test_constant_and_invariant_features_give_r2_near_zero(convention):
    config, theta = _theta("color", 600)
    constant = torch.full((600, 8), 0.3)
    result = score_feature_pairs(constant, constant, theta, regressor=SMALL_REGRESSOR, multioutput=convention)
    assert -0.1 < result.r2 < 0.02  # slightly negative: train and test θ means differ
    # Invariant features (f(g_θ(I)) = f(I)) vary with the image but carry no θ either.
    content = torch.tensor(np.random.default_rng(2).normal(size=(600, 8)), dtype=torch.float32)
    result = score_feature_pairs(content, content, theta, regressor=SMALL_REGRESSOR, multioutput=convention)
    assert result.r2 < 0.05
    assert max(result.epochs) < SMALL_REGRESSOR.epochs  # nothing to learn: early stopping ends every fit


def test_regressors_never_see_the_photo_they_score():
    # θ is the same for every crop of a photo and the features name the photo: a regressor that saw crops of the
    # photo it scores would read θ off the photo's identity (R² ≈ 1); split by photo, the identity tells nothing.
    photo = np.repeat(np.arange(10), 40)
    theta = torch.from_numpy(np.random.default_rng(0).uniform(-45, 45, size=10)[photo]).float()
    identity = torch.nn.functional.one_hot(torch.from_numpy(photo), 10).float()
    by_photo = score_feature_pairs(identity, identity, theta, groups=photo, regressor=SMALL_REGRESSOR)
    by_crop = score_feature_pairs(identity, identity, theta, regressor=SMALL_REGRESSOR)
    assert by_crop.r2 > 0.9 and by_photo.r2 < 0.05
    held_out = score_feature_pairs(
        identity, identity, theta, groups=photo, test_groups=[3, 7], regressor=SMALL_REGRESSOR
    )
    assert held_out.num_test == 80 and held_out.r2 < 0.05


def test_early_stopping_keeps_the_best_epoch():
    rng = np.random.default_rng(0)
    features, noise = (torch.tensor(rng.normal(size=(300, 8)), dtype=torch.float32) for _ in range(2))
    config = RegressorConfig(hidden_sizes=(64,), epochs=200, batch_size=32, patience=3)
    stopped = fit_mlp_regressor(features[:200], noise[:200, :1], config, validation=(features[200:], noise[200:, :1]))
    assert stopped.epochs_run == stopped.best_epoch + 3 < 200  # pure noise: validation loss stops improving
    full = fit_mlp_regressor(features[:200], noise[:200, :1], RegressorConfig(hidden_sizes=(64,), epochs=5))
    assert full.epochs_run == full.best_epoch == 5  # no validation pairs: every epoch runs
    with pytest.raises(ValueError, match="patience"):
        RegressorConfig(patience=0)


def test_score_feature_pairs_validates_its_inputs():
    zeros = torch.zeros(10, 4)
    with pytest.raises(ValueError, match="same N samples"):
        score_feature_pairs(zeros, torch.zeros(9, 4), torch.zeros(10, 1))
    with pytest.raises(ValueError, match="same N samples"):
        score_feature_pairs(zeros, zeros, torch.zeros(10, 1), groups=np.zeros(9))
    with pytest.raises(ValueError, match="at least 3 photos"):
        score_feature_pairs(zeros, zeros, torch.zeros(10, 1), groups=np.arange(10) % 2)
    with pytest.raises(ValueError, match="test_groups"):
        score_feature_pairs(zeros, zeros, torch.zeros(10, 1), groups=np.arange(10) % 2, test_groups=[0, 1])


# ------------------------------------------------------------------------------------------- whole pipeline


def _photos():
    return [
        skimage.data.astronaut(),
        skimage.data.chelsea(),
        skimage.data.coffee(),
        skimage.data.rocket(),
        skimage.data.camera(),
    ]


class _Output:
    def __init__(self, last_hidden_state):
        self.last_hidden_state = last_hidden_state


class _MeanColour(torch.nn.Module):
    """Features: each patch's mean colour. Brightness scales them, so they carry the brightness factor."""

    num_prefix_tokens = 0

    def forward(self, pixel_values):
        return _Output(torch.nn.functional.avg_pool2d(pixel_values, 8).flatten(2).transpose(1, 2))


class _Constant(torch.nn.Module):
    num_prefix_tokens = 0

    def forward(self, pixel_values):
        return _Output(torch.ones(pixel_values.shape[0], 4, 6))


class _BlackCorners(torch.nn.Module):
    """CLS: where the input is exactly black (the fill of a geometric g_θ), on a 4×4 grid. Blind to content."""

    num_prefix_tokens = 1

    def forward(self, pixel_values):
        black_value = -SPEC.image_mean[0] / SPEC.image_std[0]
        black = (pixel_values <= black_value + 1e-4).float().mean(1, keepdim=True)
        grid = torch.nn.functional.adaptive_avg_pool2d(black, 4).flatten(1)
        return _Output(torch.stack([grid, torch.zeros_like(grid)], dim=1))


def _tiny_vit():
    torch.manual_seed(0)
    config = ViTConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=32, patch_size=8
    )
    return ViTModel(config, add_pooling_layer=False)


def test_pipeline_recovers_theta_from_features_that_carry_it():
    brightness_only = TransformationConfig(
        family="color", contrast_range=(0, 0), saturation_range=(0, 0), hue_range=(0, 0)
    )
    kwargs = {"num_crops": 576, "input_spec": SPEC, "regressor": SMALL_REGRESSOR, "progress": False}
    carrying = run_equivariance_benchmark(_MeanColour(), _photos(), families={"brightness": brightness_only}, **kwargs)
    assert carrying.feature == "mean_patch"
    # Each fold's regressor fits 3 of the 5 photos: the features carry θ, the fit generalises from few photos.
    assert carrying.families["brightness"].per_parameter_r2["brightness"] > 0.75
    assert carrying.r2["brightness"] > 0.75
    constant = run_equivariance_benchmark(_Constant(), _photos(), families=["rotation", "blur"], **kwargs)
    assert all(-0.05 < value < 0.02 for value in constant.r2.values())


def test_context_border_hides_the_fill_cue():
    # With black fill, θ can be read off the corners of g_θ(I) without looking at the content; rendering the crop
    # with real surroundings ("context", the default) removes that shortcut.
    kwargs = {
        "num_crops": 576,
        "input_spec": SPEC,
        "regressor": SMALL_REGRESSOR,
        "progress": False,
        "feature": "cls",
        "families": ["rotation"],
    }
    # Photos without black pixels of their own (astronaut's sky is black): the feature then sees only the fill.
    photos = [*_photos()[1:], skimage.data.immunohistochemistry()]
    filled = run_equivariance_benchmark(_BlackCorners(), photos, border="fill", **kwargs)
    context = run_equivariance_benchmark(_BlackCorners(), photos, **kwargs)
    assert filled.r2["rotation"] > 0.5
    assert context.r2["rotation"] < 0.05  # no better than chance
    assert context.settings["context_size"] == [50, 50] and filled.settings["context_size"] == [32, 32]


def test_pipeline_on_a_tiny_vit_is_deterministic_cached_and_serialisable(tmp_path):
    model = _tiny_vit()
    calls = []
    model.register_forward_hook(lambda module, args, output: calls.append(1))
    kwargs = {
        "num_crops": 144,
        "input_spec": SPEC,
        "regressor": SMALL_REGRESSOR,
        "progress": False,
        "batch_size": 32,
    }
    cache = FeatureCache(tmp_path / "cache")
    result = run_equivariance_benchmark(model, _photos(), cache=cache, **kwargs)
    assert list(result.r2) == ["rotation", "color", "blur", "translation"]
    assert result.feature == "mean_patch" and result.multioutput == "global"
    assert all(np.isfinite(list(result.r2.values())))
    assert result.mean_r2 == pytest.approx(np.mean(list(result.r2.values())))
    assert result.families["translation"].parameter_names == ("tx", "ty")
    assert result.settings["num_images"] == 5 and result.settings["protocol"] == "cross-validation by crop"
    assert all(family.num_test == 144 for family in result.families.values())  # every crop scored once
    # 1 probe forward + 5 passes (I and 4 families) of 144 crops in batches of 32.
    assert len(calls) == 1 + 5 * 5

    calls.clear()
    other_convention = run_equivariance_benchmark(
        model, _photos(), cache=FeatureCache(tmp_path / "cache"), multioutput="per_output", **kwargs
    )
    assert len(calls) == 1  # features came from the disk cache; only the kind check ran the model
    for name, family in other_convention.families.items():
        assert family.r2 == family.r2_per_output
        assert family.r2_global == pytest.approx(result.families[name].r2_global)  # same features, same fit

    again = run_equivariance_benchmark(model, _photos(), **kwargs)
    assert again.to_dict() == result.to_dict()
    json.dumps(result.to_dict())
    entries = result.to_eval_results("embedded photos")
    assert len(entries) == 5 and entries[-1]["metric_name"] == "R² mean"
    assert "| mean_patch |" in result.table()

    alone = run_equivariance_benchmark(model, _photos(), families=["translation"], **kwargs)
    assert alone.r2["translation"] == result.r2["translation"]  # a family's result ignores the other families

    different_seed = run_equivariance_benchmark(model, _photos(), seed=1, **kwargs)
    assert different_seed.r2 != result.r2


def test_cache_keys_depend_on_the_weights(tmp_path):
    model = _tiny_vit()
    kwargs = {
        "num_crops": 24,
        "input_spec": SPEC,
        "families": ["blur"],
        "progress": False,
        "regressor": RegressorConfig(hidden_sizes=(8,), epochs=1),
        "cache": FeatureCache(tmp_path),
    }
    run_equivariance_benchmark(model, _photos(), **kwargs)
    with torch.no_grad():
        next(model.parameters()).add_(1.0)
    calls = []
    model.register_forward_hook(lambda module, args, output: calls.append(1))
    run_equivariance_benchmark(model, _photos(), **kwargs)
    assert len(calls) > 1  # changed weights: re-encoded, not served stale features


def test_feature_kind_is_checked_before_encoding():
    with pytest.raises(ValueError, match="EquiRecon"):
        run_equivariance_benchmark(_tiny_vit(), _photos(), feature="equivariant", input_spec=SPEC, progress=False)


def test_equirecon_model_defaults_to_the_mean_patch_token(tiny_equirecon_config):
    from equirecon import EquiReconModel

    torch.manual_seed(0)
    model = EquiReconModel(tiny_equirecon_config).train()  # as inside a training loop
    result = run_equivariance_benchmark(
        model,
        _photos(),
        families=["rotation"],
        num_crops=48,
        progress=False,
        regressor=RegressorConfig(hidden_sizes=(16,), epochs=2),
    )
    assert result.feature == "mean_patch" and result.settings["input"]["image_size"] == [32, 32]
    assert model.training  # handed back in the mode it came in


def test_crops_are_held_out_by_photo():
    photos = [torch.rand(3, 40 + 10 * i, 64).mul(255).byte().permute(1, 2, 0).numpy() for i in range(6)]
    from equirecon.evaluation.crops import as_photos

    pil = tuple(as_photos(photos))
    test_ids = [1, 4]
    generator = np.random.default_rng(0)
    crops = CropSet.sample(pil, test_ids, 50, (16, 16), scale=(0.25, 1.0), generator=generator)
    assert set(crops.photo_index.tolist()) <= set(test_ids)
    for index, (left, top, right, bottom) in zip(crops.photo_index, crops.boxes, strict=True):
        assert 0 <= left < right <= pil[index].width and 0 <= top < bottom <= pil[index].height
        assert right - left == pytest.approx(bottom - top)  # aspect ratio of the 16×16 output
    rendered = crops.render(slice(0, 5))
    assert rendered.shape == (5, 3, 16, 16) and 0.0 <= rendered.min() and rendered.max() <= 1.0
    with pytest.raises(ValueError, match="at least one photo"):
        run_equivariance_benchmark(_Constant(), [], input_spec=SPEC, progress=False)
    with pytest.raises(ValueError, match="at least 3 photos"):
        run_equivariance_benchmark(_Constant(), photos[:2], input_spec=SPEC, progress=False, group_by="photo")


def test_one_scored_fold_is_one_split():
    config, theta = _theta("rotation", 500)
    content = torch.tensor(np.random.default_rng(1).normal(size=(500, 8)), dtype=torch.float32)
    code = (theta - theta.mean()) / theta.std()
    one = score_feature_pairs(content, content + code, theta, scored_folds=1, regressor=SMALL_REGRESSOR)
    assert (one.num_test, len(one.fold_r2)) == (100, 1) and one.r2 > 0.9
    with pytest.raises(ValueError, match="scored_folds"):
        score_feature_pairs(content, content, theta, scored_folds=0)


def test_folds_of_crops_score_features_that_carry_theta_and_refuse_held_out_photos():
    brightness_only = TransformationConfig(
        family="color", contrast_range=(0, 0), saturation_range=(0, 0), hue_range=(0, 0)
    )
    kwargs = {"num_crops": 576, "input_spec": SPEC, "regressor": SMALL_REGRESSOR, "progress": False}
    by_crop = run_equivariance_benchmark(
        _MeanColour(), _photos(), families={"brightness": brightness_only}, group_by="crop", **kwargs
    )
    assert by_crop.settings["protocol"] == "cross-validation by crop" and by_crop.r2["brightness"] > 0.9
    constant = run_equivariance_benchmark(_Constant(), _photos(), families=["rotation"], group_by="crop", **kwargs)
    assert constant.r2["rotation"] < 0.02  # θ is drawn per crop: folds of crops cannot learn it from the photo
    with pytest.raises(ValueError, match="group_by='photo'"):
        run_equivariance_benchmark(_Constant(), _photos()[:3], test_images=_photos()[3:], group_by="crop", **kwargs)
