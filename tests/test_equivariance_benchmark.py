"""The equivariance R² benchmark: the regression half on synthetic features, then the whole pipeline."""

import json
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import skimage.data
import skimage.transform
import torch
from PIL import Image
from transformers import ViTConfig, ViTModel

from equirecon.evaluation.cache import FeatureCache
from equirecon.evaluation.crops import LEVEL_STEP, OVERSAMPLING, CropSet, as_photos
from equirecon.evaluation.equivariance import run_equivariance_benchmark, score_feature_pairs
from equirecon.evaluation.loading import InputSpec
from equirecon.evaluation.regression import RegressorConfig, fit_mlp_regressor, fit_mlp_regressors
from equirecon.evaluation.scores import regression_cost, score_families
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


def _linear_families(count=500, seed=1):
    """Families whose θ is linearly recoverable from f(g_θ(I)) − f(I), with 1, 2 and 4 parameters."""
    rng = np.random.default_rng(seed)
    content = torch.tensor(rng.normal(size=(count, 8)), dtype=torch.float32)
    transformed, params = {}, {}
    for index, family in enumerate(["rotation", "translation", "color"]):
        _, theta = _theta(family, count, seed=index)
        code = (theta - theta.mean(0)) / theta.std(0)
        embedding = torch.tensor(rng.normal(size=(code.shape[1], 8)), dtype=torch.float32)
        transformed[family], params[family] = content + code @ embedding, theta
    return content, transformed, params


def test_families_fitted_as_one_batch_score_as_when_fitted_alone():
    content, transformed, params = _linear_families()
    together = score_families(content, transformed, params, regressor=SMALL_REGRESSOR, shuffled_control=True)
    for family in params:
        alone = score_feature_pairs(
            content, transformed[family], params[family], regressor=SMALL_REGRESSOR, shuffled_control=True
        )
        assert together[family].r2 > 0.9 and alone.r2 > 0.9
        assert together[family].r2 == pytest.approx(alone.r2, abs=1e-4)
        assert together[family].shuffled_r2 == pytest.approx(alone.shuffled_r2, abs=1e-4)
        assert together[family].shuffled_r2 < 0.05
        assert together[family].epochs == alone.epochs
    only_rotation = score_families(
        content, transformed, params, regressor=SMALL_REGRESSOR, shuffled_control=["rotation"]
    )
    assert only_rotation["rotation"].shuffled_r2 is not None and only_rotation["color"].shuffled_r2 is None


def test_each_regressor_of_a_batch_stops_on_its_own():
    rng = np.random.default_rng(0)
    features = torch.tensor(rng.normal(size=(300, 8)), dtype=torch.float32)
    signal = features[:, :2] @ torch.tensor([[1.0], [-2.0]])
    noise = torch.tensor(rng.normal(size=(300, 1)), dtype=torch.float32)
    config = RegressorConfig(hidden_sizes=(32,), epochs=60, batch_size=32, patience=3)
    fits = [(features, signal), (features, noise), (features * 2, torch.cat([signal, -signal], 1))]
    batched = fit_mlp_regressors(
        [x[:200] for x, _ in fits],
        [y[:200] for _, y in fits],
        config,
        validation=[(x[200:], y[200:]) for x, y in fits],
    )
    assert batched[1].epochs_run == batched[1].best_epoch + 3 < batched[0].epochs_run  # the noise fit left early
    for (x, y), model in zip(fits, batched, strict=True):
        alone = fit_mlp_regressor(x[:200], y[:200], config, validation=(x[200:], y[200:]))
        assert (model.epochs_run, model.best_epoch) == (alone.epochs_run, alone.best_epoch)
        torch.testing.assert_close(model.predict(x[200:]), alone.predict(x[200:]), atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="one shape"):
        fit_mlp_regressors([features, features[:, :4]], [signal, signal], config)
    with pytest.raises(ValueError, match="validation pairs for all"):
        fit_mlp_regressors([features], [signal], config, validation=[])


def test_regression_cost_counts_the_fits_of_a_benchmark():
    config = RegressorConfig(hidden_sizes=(16,), epochs=7, patience=2)
    counts = {"rotation": 1, "translation": 2, "color": 4}
    cost = regression_cost(500, 8, counts, folds=5, scored_folds=2, regressor=config, shuffled_control=["color"])
    assert (cost.folds, cost.total_folds, cost.families, cost.fits, cost.max_epochs) == (2, 5, 3, 4, 7)
    assert cost.typical_epochs <= 7 and 0 < cost.seconds <= cost.max_seconds
    assert "2 of 5 fold(s) × 4 regressors (3 families + 1 θ-shuffled controls)" in cost.describe()


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
    # 1 probe forward, 3 that time the encoder for the time estimate, 5 passes (I and 4 families) of 144 crops in
    # batches of 32.
    assert len(calls) == 1 + 3 + 5 * 5

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
    # A family's result ignores the other families (fitted with them as one batch: up to float rounding).
    assert alone.r2["translation"] == pytest.approx(result.r2["translation"], abs=1e-6)

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


def test_crops_are_cut_from_a_downscaled_copy_that_matches_the_full_photo():
    # A 3-megapixel photo: each crop is resized from the smallest copy of it that holds OVERSAMPLING times the
    # crop's pixels (never fewer, and fewer than LEVEL_STEP times more).
    photo = as_photos([np.asarray(skimage.transform.resize(skimage.data.astronaut(), (1536, 2048)) * 255, np.uint8)])
    crops = CropSet.sample(tuple(photo), [0], 48, (40, 40), scale=(0.25, 1.0), generator=np.random.default_rng(0))
    rendered = crops.render(slice(None)) * 255
    source = crops._source(0)
    assert source.image.width < photo[0].width / 4  # the first copy is much smaller than the photo...
    reductions, copies = [], set()
    for box in crops.boxes:
        image, (left, top, right, bottom) = source.copy_for(box, (40, 40))
        reductions.append(min(right - left, bottom - top) / 40)
        copies.add(image.size)
    assert min(reductions) >= OVERSAMPLING and max(reductions) < OVERSAMPLING * LEVEL_STEP * 1.02  # whole pixels
    assert len(copies) == 2  # sides from half the largest crop's to all of it: reductions 2-4 from two copies
    direct = [np.asarray(photo[0].resize((40, 40), Image.Resampling.BICUBIC, box=tuple(box))) for box in crops.boxes]
    difference = (rendered - torch.from_numpy(np.stack(direct)).permute(0, 3, 1, 2).float()).abs()
    assert difference.mean() < 0.5 and torch.quantile(difference.flatten(), 0.99) <= 3  # levels out of 255
    # Context beyond the border: the copy is reflected once for all crops, as far as the widest reaches.
    small = as_photos([skimage.data.camera()[:100, :120]])
    wide = CropSet.sample(tuple(small), [0], 20, (16, 16), context_size=(40, 40), generator=np.random.default_rng(1))
    assert wide.boxes[:, 0].min() < 0 and wide.render(slice(None)).shape == (20, 3, 40, 40)


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


def test_crops_come_in_the_same_batches_rendered_in_turn_or_in_the_background():
    photos = as_photos([skimage.data.astronaut(), skimage.data.coffee()])
    crops = CropSet.sample(
        tuple(photos), [0, 1], 10, (16, 16), context_size=(24, 24), generator=np.random.default_rng(0)
    )
    expected = crops.render(slice(None))
    for background in (False, True):
        batches = list(crops.batches(4, background=background))
        assert [len(batch) for batch in batches] == [4, 4, 2]
        assert torch.equal(torch.cat(batches), expected)
    with ThreadPoolExecutor(max_workers=3) as pool:  # the resizes of one batch on several threads
        assert torch.equal(crops.render(slice(None), pool), expected)
