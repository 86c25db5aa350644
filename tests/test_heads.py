"""The downstream heads: shapes, losses, loading from a pretraining checkpoint, probing, Auto classes, remote code."""

import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F
from model_helpers import tiny_config
from transformers import AutoModelForImageClassification, AutoModelForSemanticSegmentation
from transformers.modeling_outputs import ImageClassifierOutput, SemanticSegmenterOutput

from equirecon import (
    EquiReconForImageClassification,
    EquiReconForPreTraining,
    EquiReconForSemanticSegmentation,
    EquiReconModel,
)

LABELS = {0: "cat", 1: "dog", 2: "bird"}


def _pixels(batch_size=2, size=32, seed=0):
    return torch.randn(batch_size, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _classifier(**overrides):
    torch.manual_seed(0)
    return EquiReconForImageClassification(tiny_config(num_labels=3, **overrides))


def _segmenter(head, **overrides):
    torch.manual_seed(0)
    return EquiReconForSemanticSegmentation(tiny_config(num_labels=3, segmentation_head=head, **overrides))


@pytest.fixture(scope="module")
def pretraining_checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    model = EquiReconForPreTraining(tiny_config())
    path = tmp_path_factory.mktemp("pretrained")
    model.save_pretrained(path)
    return path, model


# ------------------------------------------------------------------------------------------------ classification


def test_classifier_reads_cls_and_mean_patch_token():
    model = _classifier().eval()
    pixel_values = _pixels()
    with torch.no_grad():
        out = model(pixel_values, output_hidden_states=True)
        tokens = model.equirecon(pixel_values).last_hidden_state
    assert isinstance(out, ImageClassifierOutput) and out.loss is None
    assert out.logits.shape == (2, 3)
    assert model.classifier.in_features == 2 * 32
    expected = model.classifier(torch.cat([tokens[:, 0], tokens[:, 1:].mean(dim=1)], dim=-1))
    assert torch.allclose(out.logits, expected, atol=1e-6)
    assert len(out.hidden_states) == 3  # embeddings + 2 layers


def test_classification_loss_follows_problem_type():
    pixel_values = _pixels(batch_size=4)

    single = _classifier().eval()
    labels = torch.tensor([0, 2, 1, 2])
    out = single(pixel_values, labels=labels)
    assert single.config.problem_type == "single_label_classification"
    assert torch.allclose(out.loss, F.cross_entropy(out.logits, labels))

    multi = _classifier().eval()
    targets = torch.tensor([[1.0, 0, 1], [0, 0, 0], [0, 1, 0], [1, 1, 1]])
    out = multi(pixel_values, labels=targets)
    assert multi.config.problem_type == "multi_label_classification"
    assert torch.allclose(out.loss, F.binary_cross_entropy_with_logits(out.logits, targets))

    torch.manual_seed(0)
    regression = EquiReconForImageClassification(tiny_config(num_labels=1)).eval()
    values = torch.tensor([0.5, -1.0, 2.0, 0.0])
    out = regression(pixel_values, labels=values)
    assert regression.config.problem_type == "regression"
    assert out.logits.shape == (4, 1)
    assert torch.allclose(out.loss, F.mse_loss(out.logits.squeeze(-1), values))


def test_classifier_trains_on_a_fixed_batch():
    model = _classifier().train()
    pixel_values, labels = _pixels(batch_size=6), torch.tensor([0, 1, 2, 0, 1, 2])
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(10):
        loss = model(pixel_values, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


# -------------------------------------------------------------------------------------------------- segmentation


@pytest.mark.parametrize(("head", "resolution"), [("linear", 4), ("upernet", 16)])
def test_segmentation_logits_and_loss_with_ignored_pixels(head, resolution):
    """Logits at the head's resolution (patch grid for linear, ×4 for UPerNet); the loss upsamples them to the label
    size, whatever it is, and ignored pixels (255) take no part."""
    model = _segmenter(head, use_auxiliary_head=False).eval()
    pixel_values = _pixels()
    labels = torch.randint(0, 3, (2, 40, 40), generator=torch.Generator().manual_seed(1))
    labels[:, :10] = 255
    out = model(pixel_values, labels=labels)
    assert isinstance(out, SemanticSegmenterOutput)
    assert out.logits.shape == (2, 3, resolution, resolution)
    upsampled = F.interpolate(out.logits, size=(40, 40), mode="bilinear", align_corners=False)
    keep = labels != 255
    expected = F.cross_entropy(upsampled.permute(0, 2, 3, 1)[keep], labels[keep])
    assert torch.allclose(out.loss, expected, atol=1e-6)
    changed = labels.clone()
    changed[:, :10] = 1  # reveal the ignored rows: the loss must change
    assert not torch.allclose(model(pixel_values, labels=changed).loss, out.loss)


def test_upernet_auxiliary_loss_is_weighted_and_only_used_in_training():
    with_aux = _segmenter("upernet", use_auxiliary_head=True, auxiliary_loss_weight=0.4).train()
    pixel_values = _pixels(batch_size=3)
    labels = torch.randint(0, 3, (3, 32, 32), generator=torch.Generator().manual_seed(2))
    out = with_aux(pixel_values, labels=labels)
    main = F.cross_entropy(F.interpolate(out.logits, size=(32, 32), mode="bilinear", align_corners=False), labels)
    assert out.loss > main + 1e-3  # the auxiliary term is there ...
    no_weight = _segmenter("upernet", use_auxiliary_head=True, auxiliary_loss_weight=0.0).train()
    no_weight.load_state_dict(with_aux.state_dict())
    assert torch.allclose(no_weight(pixel_values, labels=labels).loss, main, atol=1e-6)  # ... and weighted
    with_aux.eval()
    eval_out = with_aux(pixel_values, labels=labels)
    eval_main = F.cross_entropy(
        F.interpolate(eval_out.logits, size=(32, 32), mode="bilinear", align_corners=False), labels
    )
    assert torch.allclose(eval_out.loss, eval_main, atol=1e-6)


def test_upernet_reads_the_configured_layers():
    """The four pyramid levels read the stages `out_indices` names, spread evenly when it names fewer than four."""
    model = _segmenter("upernet", out_indices=[0, 1, 2], use_auxiliary_head=False).eval()
    assert model.config.segmentation_out_indices == [0, 1, 1, 2]
    assert _segmenter("upernet", out_features=["stem", "stage2"]).config.segmentation_out_indices == [0, 0, 2, 2]
    pixel_values = _pixels()
    seen = []
    original = model.head.forward
    model.head.forward = lambda maps: (seen.extend(maps), original(maps))[1]
    with torch.no_grad():
        model(pixel_values)
        states = model.equirecon(pixel_values, output_hidden_states=True).hidden_states
        norm = model.equirecon.backbone.layernorm  # as Dinov2Backbone: each layer read through the final norm
        expected = [norm(states[index])[:, 1:].transpose(1, 2).reshape(2, 32, 4, 4) for index in [0, 1, 1, 2]]
    assert [m.shape for m in seen] == [(2, 32, 4, 4)] * 4
    for feature_map, wanted in zip(seen, expected, strict=True):
        assert torch.allclose(feature_map, wanted)


def test_segmentation_needs_two_classes_for_a_loss():
    torch.manual_seed(0)
    model = EquiReconForSemanticSegmentation(tiny_config(num_labels=1, segmentation_head="linear"))
    with pytest.raises(ValueError, match="num_labels >= 2"):
        model(_pixels(), labels=torch.zeros(2, 32, 32, dtype=torch.long))


# ------------------------------------------------------------------------------------- loading, probing, export


@pytest.mark.parametrize(
    ("auto_class", "overrides", "head_prefix"),
    [
        (AutoModelForImageClassification, {}, "classifier."),
        (AutoModelForSemanticSegmentation, {"segmentation_head": "linear"}, "head."),
        (AutoModelForSemanticSegmentation, {"segmentation_head": "upernet"}, "head."),
    ],
)
def test_pretraining_checkpoint_loads_encoder_and_reports_only_the_head_as_new(
    pretraining_checkpoint, auto_class, overrides, head_prefix
):
    path, pretrained = pretraining_checkpoint
    model, info = auto_class.from_pretrained(
        path,
        num_labels=3,
        id2label=LABELS,
        label2id={v: k for k, v in LABELS.items()},
        output_loading_info=True,
        **overrides,
    )
    assert model.equirecon.projection is None  # the split head is pretraining's; the heads read the encoder
    head_keys = {key for key in model.state_dict() if key.startswith(head_prefix)}
    assert head_keys and set(info["missing_keys"]) == head_keys
    assert not info["unexpected_keys"] and not info["mismatched_keys"]
    encoder = model.equirecon.state_dict()
    for name, tensor in pretrained.equirecon.state_dict().items():
        if not name.startswith("projection."):  # the split head is pretraining's; the heads read the encoder
            assert torch.equal(encoder[name], tensor), name
    assert model.config.id2label == LABELS


@pytest.mark.parametrize("make", [lambda: _classifier(), lambda: _segmenter("upernet"), lambda: _segmenter("linear")])
def test_frozen_backbone_gets_no_gradient(make):
    model = make().train()
    model.freeze_backbone()
    labels = (
        torch.tensor([0, 2])
        if isinstance(model, EquiReconForImageClassification)
        else (torch.randint(0, 3, (2, 32, 32)))
    )
    model(_pixels(), labels=labels).loss.backward()
    encoder = dict(model.equirecon.named_parameters())
    assert all(parameter.grad is None for parameter in encoder.values())
    head = [p for name, p in model.named_parameters() if not name.startswith("equirecon.")]
    assert head and all(p.grad is not None and p.grad.abs().sum() > 0 for p in head)
    assert model.config.freeze_backbone is True
    model.freeze_backbone(False)
    assert all(parameter.requires_grad for parameter in model.parameters())


def test_freeze_backbone_from_config_survives_loading(pretraining_checkpoint):
    path, _ = pretraining_checkpoint
    model = EquiReconForImageClassification.from_pretrained(path, num_labels=3, freeze_backbone=True)
    assert not any(p.requires_grad for p in model.equirecon.parameters())
    assert all(p.requires_grad for p in model.classifier.parameters())


def test_heads_are_registered_and_export_as_hub_custom_code(tmp_path):
    classifier, segmenter = _classifier().eval(), _segmenter("upernet").eval()
    assert type(AutoModelForImageClassification.from_config(classifier.config)) is EquiReconForImageClassification
    assert type(AutoModelForSemanticSegmentation.from_config(segmenter.config)) is EquiReconForSemanticSegmentation
    pixel_values = _pixels()
    torch.save(pixel_values, tmp_path / "input.pt")
    for name, model in (("classifier", classifier), ("segmenter", segmenter)):
        model.save_pretrained(tmp_path / name)
        for file in ("configuration_equirecon.py", "modeling_equirecon.py"):
            assert (tmp_path / name / file).is_file()
        with torch.no_grad():
            torch.save(model(pixel_values).logits, tmp_path / f"{name}.pt")
    script = textwrap.dedent(
        f"""
        import importlib.abc, sys

        class HideEquirecon(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name == "equirecon" or name.startswith("equirecon."):
                    raise ModuleNotFoundError(name)

        sys.meta_path.insert(0, HideEquirecon())
        import torch
        from transformers import AutoModelForImageClassification, AutoModelForSemanticSegmentation

        root = {str(tmp_path)!r}
        pixel_values = torch.load(root + "/input.pt")
        for name, auto in (("classifier", AutoModelForImageClassification),
                           ("segmenter", AutoModelForSemanticSegmentation)):
            model = auto.from_pretrained(root + "/" + name, trust_remote_code=True).eval()
            assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
            with torch.no_grad():
                expected = torch.load(root + "/" + name + ".pt")  # computed with another thread count
                assert torch.allclose(model(pixel_values).logits, expected, atol=1e-5, rtol=1e-4), name
            print("REMOTE-OK", type(model).__name__)
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["HF_MODULES_CACHE"] = str(tmp_path / "modules")
    result = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, cwd=tmp_path, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "REMOTE-OK EquiReconForImageClassification" in result.stdout
    assert "REMOTE-OK EquiReconForSemanticSegmentation" in result.stdout


def test_encoder_loads_from_a_fine_tuned_checkpoint(tmp_path):
    """`pipeline("image-feature-extraction")` and `AutoModel` on a fine-tuned directory get its encoder."""
    model = _classifier()
    model.save_pretrained(tmp_path)
    encoder = EquiReconModel.from_pretrained(tmp_path)
    for name, tensor in model.equirecon.state_dict().items():
        assert torch.equal(encoder.state_dict()[name], tensor), name


def _batch_norms(model):
    return {
        name: m for name, m in model.named_modules() if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d))
    }


@pytest.mark.parametrize(
    "build",
    [lambda: _classifier(), lambda: _segmenter("linear"), lambda: _segmenter("upernet", use_auxiliary_head=True)],
    ids=["classification", "segmentation-linear", "segmentation-upernet"],
)
def test_a_training_batch_of_one_example_trains(build):
    """The last batch of an epoch can hold one example; a BatchNorm that would see one value per channel (PyTorch
    raises) uses its running statistics and leaves them as they were, the others train as usual."""
    model = build().train()
    before = {name: (m.running_mean.clone(), m.running_var.clone()) for name, m in _batch_norms(model).items()}
    is_classifier = isinstance(model, EquiReconForImageClassification)
    labels = torch.tensor([2]) if is_classifier else torch.randint(0, 3, (1, 32, 32))
    output = model(pixel_values=_pixels(batch_size=1), labels=labels)
    output.loss.backward()

    assert torch.isfinite(output.loss)
    assert all(m.training for m in model.modules())
    assert model.classifier.weight.grad is not None if is_classifier else True
    moved = {name for name, m in _batch_norms(model).items() if not torch.equal(m.running_mean, before[name][0])}
    if is_classifier:
        assert moved == set()
    elif model.config.segmentation_head == "linear":
        assert moved == {"head.norm"}  # 4×4 values per channel: batch statistics
    else:  # only UPerNet's globally pooled branch sees one value per channel
        frozen = set(_batch_norms(model)) - moved
        assert frozen == {"head.decode_head.psp_modules.0.1.batch_norm"}


def test_a_batch_of_one_example_is_normalised_with_the_running_statistics():
    model = _classifier().train()
    pixels = _pixels(batch_size=1)
    trained = model(pixel_values=pixels).logits
    assert torch.allclose(trained, model.eval()(pixel_values=pixels).logits, atol=1e-6)
