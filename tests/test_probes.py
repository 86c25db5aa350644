"""Feature extraction on tiny transformers encoders, and the k-NN / linear probes."""

import numpy as np
import pytest
import torch
from transformers import (
    Dinov2Config,
    Dinov2Model,
    Dinov2WithRegistersConfig,
    Dinov2WithRegistersModel,
    ViTConfig,
    ViTModel,
)

from equirecon.evaluation.features import FeatureExtractor, encode_images, num_prefix_tokens, pool_features
from equirecon.evaluation.labelled import load_labelled_images
from equirecon.evaluation.loading import InputSpec
from equirecon.evaluation.probes import knn_probe, linear_probe

TINY = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "image_size": 32, "patch_size": 8}


def _vit():
    torch.manual_seed(0)
    return ViTModel(ViTConfig(intermediate_size=64, **TINY)).eval()


def _dinov2():
    torch.manual_seed(0)
    return Dinov2Model(Dinov2Config(mlp_ratio=2, **TINY)).eval()


def _dinov2_registers():
    torch.manual_seed(0)
    return Dinov2WithRegistersModel(Dinov2WithRegistersConfig(mlp_ratio=2, num_register_tokens=4, **TINY)).eval()


# --------------------------------------------------------------------------------------------- features


@pytest.mark.parametrize(("factory", "prefix"), [(_vit, 1), (_dinov2, 1), (_dinov2_registers, 5)])
def test_generic_models_cls_and_mean_patch(factory, prefix):
    model = factory()
    assert num_prefix_tokens(model) == prefix
    pixels = torch.randn(3, 3, 32, 32)
    features = FeatureExtractor(model, kinds=("cls", "mean_patch", "cls+mean_patch"))(pixels)
    with torch.no_grad():
        hidden = model(pixel_values=pixels).last_hidden_state
    assert hidden.shape[1] == prefix + 16
    torch.testing.assert_close(features["cls"], hidden[:, 0])
    torch.testing.assert_close(features["mean_patch"], hidden[:, prefix:].mean(1))  # registers never averaged in
    torch.testing.assert_close(features["cls+mean_patch"], torch.cat([hidden[:, 0], hidden[:, prefix:].mean(1)], 1))
    extractor = FeatureExtractor(model, kinds=("auto",))
    assert extractor.resolved_kind() == "mean_patch"


def test_equirecon_kinds_need_equirecon_outputs():
    extractor = FeatureExtractor(_vit(), kinds=("pooled",))
    with pytest.raises(ValueError, match="needs the invariant/equivariant split of an EquiRecon model"):
        extractor(torch.randn(1, 3, 32, 32))
    with pytest.raises(ValueError, match="unknown feature kind"):
        FeatureExtractor(_vit(), kinds=("avg",))


def test_equirecon_feature_kinds(tiny_equirecon_config):
    from equirecon import EquiReconModel

    torch.manual_seed(0)
    model = EquiReconModel(tiny_equirecon_config).eval()
    pixels = torch.randn(2, 3, 32, 32)
    extractor = FeatureExtractor(model, kinds=("auto", "pooled", "invariant", "equivariant", "cls"))
    features = extractor(pixels)
    assert extractor.resolved_kind() == "mean_patch"  # the backbone, as for any model
    with torch.no_grad():
        out = model(pixel_values=pixels)
    prefix = model.num_prefix_tokens
    d_equi = tiny_equirecon_config.d_equi
    torch.testing.assert_close(features["invariant"], out.invariant_embeds[:, prefix:].mean(1))
    torch.testing.assert_close(features["equivariant"], out.equivariant_embeds[:, prefix:].mean(1))
    torch.testing.assert_close(features["pooled"][:, -d_equi:], features["equivariant"])
    assert features["pooled"].shape == (2, tiny_equirecon_config.d_patch)
    torch.testing.assert_close(features["cls"], out.pooler_output)


def test_pool_features_on_cnn_feature_maps():
    class Output:
        last_hidden_state = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).view(2, 3, 4, 4)

    torch.testing.assert_close(pool_features(Output(), "mean_patch", 0), Output.last_hidden_state.mean((2, 3)))
    with pytest.raises(ValueError, match="CLS token"):
        pool_features(Output(), "cls", 0)


def test_encode_images_preprocesses_any_image_type():
    model = _vit()
    spec = InputSpec(image_size=(32, 32), image_mean=(0.5, 0.5, 0.5), image_std=(0.5, 0.5, 0.5))
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (40, 60, 3), dtype=np.uint8), rng.random((20, 20)), torch.rand(3, 32, 48)]
    batch = spec.preprocess(images)
    assert batch.shape == (3, 3, 32, 32) and batch.min() >= -1.0 and batch.max() <= 1.0
    features = encode_images(model, images, input_spec=spec, kinds=("cls",), batch_size=2)["cls"]
    torch.testing.assert_close(features, FeatureExtractor(model, kinds=("cls",))(batch)["cls"])


# ------------------------------------------------------------------------------------------------ probes


def _separable(seed, per_class=60, classes=4, dim=16, spread=0.05):
    # Each class is a tight cluster around its own direction (the same for every seed): separable by angle
    # (k-NN) and linearly. ``seed`` only draws the noise, so train and test sets share their classes.
    centres = np.linalg.qr(np.random.default_rng(123).normal(size=(dim, dim)))[0][:classes] * 3.0
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(classes), per_class)
    features = centres[labels] + rng.normal(0, spread, (len(labels), dim))
    return torch.tensor(features, dtype=torch.float32), labels


def test_knn_probe_reaches_full_accuracy_on_a_separable_set():
    train, train_labels = _separable(0)
    test, test_labels = _separable(1, per_class=25)
    result = knn_probe(train, train_labels, test, test_labels, k=(20, 200))
    assert result.top1 == {20: 1.0, 200: 1.0}  # k=200 < 240 training samples; far classes weigh ~e^-14
    assert result.to_dict()["top1"] == {"20": 1.0, "200": 1.0}


def test_knn_probe_weighted_votes_by_hand():
    # One test point; neighbours at cosine similarity 1.0 (class 0) and 0.8, 0.8 (class 1).
    train = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.8, -0.6]])
    test = torch.tensor([[1.0, 0.0]])
    # exp(1/T) vs 2·exp(0.8/T): class 0 wins for T = 0.07 (margin e^2.86 > 2), class 1 wins for T = 1.
    assert knn_probe(train, [0, 1, 1], test, [0], k=3, temperature=0.07).top1[3] == 1.0
    assert knn_probe(train, [0, 1, 1], test, [0], k=3, temperature=1.0).top1[3] == 0.0
    assert knn_probe(train, [0, 1, 1], test, [0], k=1, temperature=1.0).top1[1] == 1.0


def test_linear_probe_reaches_full_accuracy_and_is_deterministic():
    train, train_labels = _separable(0, spread=0.5)
    test, test_labels = _separable(1, per_class=25, spread=0.5)
    first = linear_probe(train, train_labels, test, test_labels, weight_decays=(1e-2, 1.0))
    second = linear_probe(train, train_labels, test, test_labels, weight_decays=(1e-2, 1.0))
    assert first.accuracy == 1.0 and first.top5 == 1.0
    assert set(first.validation_accuracy) == {1e-2, 1.0} and first.weight_decay in first.validation_accuracy
    assert first.to_dict() == second.to_dict()


def test_linear_probe_is_linear():
    # XOR is not linearly separable: a linear probe stays near chance, unlike a k-NN.
    rng = np.random.default_rng(0)
    points = rng.uniform(-1, 1, (400, 2))
    labels = (points[:, 0] * points[:, 1] > 0).astype(int)
    x = torch.tensor(points, dtype=torch.float32)
    linear = linear_probe(x[:300], labels[:300], x[300:], labels[300:], weight_decays=(1e-4,))
    knn = knn_probe(
        x[:300] + torch.tensor([3.0, 3.0]), labels[:300], x[300:] + torch.tensor([3.0, 3.0]), labels[300:], k=5
    )
    assert linear.accuracy < 0.7 < knn.top1[5]


class _PixelEncoder(torch.nn.Module):
    """A "model" whose CLS token is the 8×8 grey thumbnail of its input: ideal features for digits."""

    num_prefix_tokens = 1

    def forward(self, pixel_values):
        thumbnail = torch.nn.functional.adaptive_avg_pool2d(pixel_values.mean(1, keepdim=True), 8).flatten(1)
        tokens = torch.cat([thumbnail[:, None], torch.zeros_like(thumbnail)[:, None].expand(-1, 16, -1)], dim=1)
        return type("Output", (), {"last_hidden_state": tokens})()


def test_probes_on_digits_end_to_end():
    # Labels stay aligned with their images through loading, splitting, preprocessing and extraction: with
    # features that hold the digit itself both probes are near perfect (chance is 0.1).
    data = load_labelled_images("digits", max_images=300, seed=0)
    assert data.num_classes == 10 and set(data.train_labels) == set(range(10)) == set(data.test_labels)
    assert len(data.train_labels) == 300 and len(data.test_labels) == 300
    spec = InputSpec(image_size=(32, 32))
    model = _PixelEncoder()
    train = encode_images(model, data.train_images, input_spec=spec, kinds=("cls",))["cls"]
    test = encode_images(model, data.test_images, input_spec=spec, kinds=("cls",))["cls"]
    assert train.shape == (300, 64)
    assert knn_probe(train, data.train_labels, test, data.test_labels, k=(20,)).top1[20] > 0.9
    assert linear_probe(train, data.train_labels, test, data.test_labels, weight_decays=(1e-3, 1e-1)).accuracy > 0.9
    # The same pipeline with shuffled training labels is at chance: the probes measure the features, not the split.
    shuffled = np.random.default_rng(0).permutation(data.train_labels)
    assert knn_probe(train, shuffled, test, data.test_labels, k=(20,)).top1[20] < 0.3


def test_digits_split_is_stratified_and_fixed():
    first = load_labelled_images("digits", seed=0)
    other = load_labelled_images("digits", seed=1)
    assert len(first.train_labels) + len(first.test_labels) == 1797
    # One split rule for probes and fine-tuning: a built-in set's held-out images do not depend on the seed.
    np.testing.assert_array_equal(first.test_labels, other.test_labels)
    np.testing.assert_array_equal(np.stack(first.test_images), np.stack(other.test_images))
    counts = np.bincount(first.test_labels) / np.bincount(first.train_labels)
    np.testing.assert_allclose(counts, 1 / 4, atol=0.02)  # 20 % held out from every class


def test_probes_and_fine_tuning_see_the_same_digits():
    from equirecon.evaluation.labelled import load_labelled_dataset
    from equirecon.finetuning.data import load_downstream_dataset

    probes = load_labelled_dataset("digits")
    fine_tuning = load_downstream_dataset("classification", "digits")
    assert fine_tuning.name == "digits"
    assert probes["validation"]["label"] == fine_tuning.eval["label"]
    assert [np.asarray(image).tolist() for image in probes["validation"]["image"][:5]] == [
        np.asarray(image).tolist() for image in fine_tuning.eval["image"][:5]
    ]
