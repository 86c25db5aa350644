"""Warm start: the encoder from a transformers DINOv2 / ViT / ViTMAE checkpoint, heads and decoders fresh, through
`from_pretrained_backbone` and `equirecon pretrain --init_from`."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from trainer_helpers import FAST_PRETRAIN
from transformers import (
    AutoModel,
    BertConfig,
    BertModel,
    Dinov2Config,
    Dinov2ForImageClassification,
    Dinov2Model,
    ViTConfig,
    ViTImageProcessorPil,
    ViTMAEConfig,
    ViTMAEModel,
    ViTModel,
)

from equirecon import EquiReconForPreTraining, EquiReconModel
from equirecon.argument_checks import ArgumentError
from equirecon.commands import main as cli_main
from equirecon.modeling.warm_start import load_backbone_weights
from equirecon.training.arguments import EquiReconTrainingArguments, ModelArguments
from equirecon.training.model_setup import build_model
from equirecon.training.pretrain import rebuild_reference_encoder

SIZES = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "image_size": 32, "patch_size": 8}
HEADS = {"d_patch": 16, "d_equi": 8, "vicreg_expander_dims": [32, 32], "decoder_hidden_channels": 8}


def _save(model: torch.nn.Module, directory) -> str:
    model.save_pretrained(directory)
    return str(directory)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """Tiny transformers checkpoints, as `save_pretrained` writes them: DINOv2 (with its mask token), ViT (with a
    pooler and the 0.5 normalisation of Google's ViTs), ViTMAE, a DINOv2 classifier and a text model."""
    root = tmp_path_factory.mktemp("checkpoints")
    torch.manual_seed(0)
    paths = {
        "dinov2": _save(Dinov2Model(Dinov2Config(mlp_ratio=2, **SIZES)), root / "dinov2"),
        "vit": _save(ViTModel(ViTConfig(intermediate_size=64, **SIZES)), root / "vit"),
        "vit_mae": _save(ViTMAEModel(ViTMAEConfig(intermediate_size=64, mask_ratio=0.0, **SIZES)), root / "vit_mae"),
        "dinov2_classifier": _save(
            Dinov2ForImageClassification(Dinov2Config(mlp_ratio=2, num_labels=3, **SIZES)), root / "classifier"
        ),
        "bert": _save(
            BertModel(BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)),
            root / "bert",
        ),
    }
    ViTImageProcessorPil(image_mean=[0.5] * 3, image_std=[0.5] * 3).save_pretrained(paths["vit"])
    return paths


@pytest.mark.parametrize(("kind", "model_class"), [("dinov2", Dinov2Model), ("vit", ViTModel)])
def test_encoder_weights_are_the_checkpoints_and_the_heads_fresh(checkpoints, kind, model_class):
    pretrained = model_class.from_pretrained(checkpoints[kind]).eval()
    torch.manual_seed(1)
    model = EquiReconForPreTraining.from_pretrained_backbone(checkpoints[kind], **HEADS)
    assert model.config.backbone_config.model_type == kind and model.config.image_size == 32
    encoder = model.equirecon.backbone.state_dict()
    source = pretrained.state_dict()
    for name in (
        "embeddings.cls_token",
        "embeddings.position_embeddings",
        "embeddings.patch_embeddings.projection.weight",
        "layernorm.weight",
    ):
        assert torch.equal(encoder[name], source[name]), name
    assert all(torch.equal(encoder[name], source[name]) for name in encoder)
    assert "embeddings.mask_token" not in encoder  # no masked-image objective: a weight without a gradient
    pixel_values = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ours = model.equirecon.eval()(pixel_values).last_hidden_state
        assert torch.allclose(ours, pretrained(pixel_values).last_hidden_state, atol=1e-6)
    # Heads and decoders: `_init_weights`' distributions, not the checkpoint's nor uninitialised memory.
    projection = model.equirecon.projection
    assert 0.01 < projection.weight.std().item() < 0.03 and not projection.bias.any()
    to_patches = model.decoders[0].to_patches.weight  # fan-in scaled: std 1 / sqrt(2·d_equi) = 0.25
    assert 0.15 < to_patches.std().item() < 0.35
    torch.manual_seed(2)
    again = EquiReconForPreTraining.from_pretrained_backbone(checkpoints[kind], **HEADS)
    assert not torch.equal(again.equirecon.projection.weight, projection.weight)
    assert torch.equal(again.equirecon.backbone.embeddings.cls_token, pretrained.embeddings.cls_token)


def test_classifier_checkpoint_gives_its_encoder(checkpoints):
    classifier = Dinov2ForImageClassification.from_pretrained(checkpoints["dinov2_classifier"]).eval()
    model = EquiReconModel.from_pretrained_backbone(checkpoints["dinov2_classifier"], **HEADS).eval()
    pixel_values = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        expected = classifier.dinov2(pixel_values).last_hidden_state
        assert torch.allclose(model(pixel_values).last_hidden_state, expected, atol=1e-6)


def test_vit_mae_checkpoint_becomes_a_vit_encoder(checkpoints):
    mae = ViTMAEModel.from_pretrained(checkpoints["vit_mae"]).eval()
    model = EquiReconModel.from_pretrained_backbone(checkpoints["vit_mae"], **HEADS).eval()
    assert type(model.backbone) is ViTModel and model.config.backbone_config.model_type == "vit"
    pixel_values = torch.randn(2, 3, 32, 32)
    keep_order = torch.arange(16.0).expand(2, 16)  # MAE shuffles tokens by `noise`; ascending noise keeps them
    with torch.no_grad():
        expected = mae(pixel_values, noise=keep_order).last_hidden_state
        assert torch.allclose(model(pixel_values).last_hidden_state, expected, atol=1e-6)


@pytest.mark.parametrize(("kind", "model_class"), [("dinov2", Dinov2Model), ("vit", ViTModel)])
def test_another_image_size_resizes_the_position_embeddings(checkpoints, kind, model_class):
    pretrained = model_class.from_pretrained(checkpoints[kind]).eval()
    model = EquiReconModel.from_pretrained_backbone(checkpoints[kind], image_size=48, **HEADS).eval()
    assert model.config.image_size == 48
    assert model.backbone.embeddings.position_embeddings.shape == (1, 1 + 6 * 6, 32)
    pixel_values = torch.randn(1, 3, 48, 48)
    with torch.no_grad():  # the resized table is what the checkpoint computes for 48² inputs on the fly
        expected = pretrained(pixel_values, interpolate_pos_encoding=True).last_hidden_state
        assert torch.allclose(model(pixel_values).last_hidden_state, expected, atol=1e-5)


def test_teacher_initialised_from_its_student_through_the_same_function(checkpoints):
    student = EquiReconModel.from_pretrained_backbone(checkpoints["dinov2"], **HEADS)
    torch.manual_seed(3)
    teacher = EquiReconModel(student.config)
    assert not torch.equal(teacher.backbone.embeddings.cls_token, student.backbone.embeddings.cls_token)
    load_backbone_weights(teacher.backbone, student.backbone)
    student_state = student.backbone.state_dict()
    assert all(torch.equal(tensor, student_state[name]) for name, tensor in teacher.backbone.state_dict().items())
    vit = ViTModel.from_pretrained(checkpoints["vit"])
    with pytest.raises(ValueError, match="does not fit this dinov2 backbone: missing"):
        load_backbone_weights(teacher.backbone, vit)


def test_unusable_checkpoints_are_errors_that_say_what_to_do(checkpoints, tmp_path):
    with pytest.raises(OSError, match="'/nonexistent/dinov2' is not a directory"):
        EquiReconModel.from_pretrained_backbone("/nonexistent/dinov2")
    with pytest.raises(ValueError, match="is a bert checkpoint, not a ViT-family encoder.*DINOv2, ViT"):
        EquiReconModel.from_pretrained_backbone(checkpoints["bert"])
    equirecon_dir = _save(EquiReconModel.from_pretrained_backbone(checkpoints["vit"], **HEADS), tmp_path / "eq")
    with pytest.raises(ValueError, match="is an EquiRecon checkpoint.*--model_name_or_path"):
        EquiReconModel.from_pretrained_backbone(equirecon_dir)
    # A checkpoint lacking weights its config promises: an error, not a silently random encoder.
    incomplete = tmp_path / "incomplete"
    ViTConfig.from_pretrained(checkpoints["vit"]).save_pretrained(incomplete)
    weights = load_file(f"{checkpoints['vit']}/model.safetensors")
    save_file(
        {k: v for k, v in weights.items() if not k.startswith("encoder.layer.1.")}, incomplete / "model.safetensors"
    )
    with pytest.raises(ValueError, match=r"does not hold a complete vit encoder: \d+ weight\(s\) missing"):
        EquiReconModel.from_pretrained_backbone(str(incomplete))


def test_pretrain_command_starts_from_the_checkpoint(checkpoints, tmp_path):
    output_dir = tmp_path / "run"
    assert (
        cli_main(["pretrain", "--init_from", checkpoints["vit"], "--output_dir", str(output_dir), *FAST_PRETRAIN]) == 0
    )
    model = EquiReconForPreTraining.from_pretrained(output_dir)
    assert type(model.equirecon.backbone) is ViTModel
    assert (model.config.hidden_size, model.config.patch_size, model.config.image_size) == (32, 8, 32)
    assert (model.config.d_patch, model.config.d_equi) == (512, 256)  # EquiReconConfig's heads: no preset named
    # Two small steps away from the checkpoint (a fresh encoder would differ by ~0.03 everywhere).
    start = ViTModel.from_pretrained(checkpoints["vit"]).state_dict()
    trained = model.equirecon.backbone.state_dict()
    assert max((trained[name] - start[name]).abs().max().item() for name in trained) < 5e-3
    assert any(not torch.equal(trained[name], start[name]) for name in trained)
    # The checkpoint's normalisation is kept: in the saved processor and in the closing benchmark.
    processor = json.loads((output_dir / "preprocessor_config.json").read_text())
    assert processor["image_mean"] == [0.5] * 3 and processor["image_std"] == [0.5] * 3
    assert processor["size"] == {"height": 32, "width": 32}
    equivariance = json.loads((output_dir / "equivariance_results.json").read_text())
    assert equivariance["settings"]["input"]["image_mean"] == [0.5] * 3
    record = json.loads((output_dir / "equirecon_run.json").read_text())
    assert record["init_from"] == {"checkpoint": checkpoints["vit"], "local": True, "model_type": "vit"}
    card = (output_dir / "README.md").read_text()
    assert f"Encoder initialised from the local checkpoint `{checkpoints['vit']}` (vit)" in card
    # The benchmark's reference is the checkpoint the run started from, not a random encoder.
    reference = equivariance["reference"]
    assert reference["label"] == f"start ({checkpoints['vit']})"
    rotation = reference["read_outs"]["mean_patch"]["r2"]["rotation"]
    assert f"| start ({checkpoints['vit']}), mean_patch | {rotation:.3f} |" in card


def test_the_reference_encoder_is_the_warm_start_checkpoint(checkpoints, tmp_path):
    training_args = EquiReconTrainingArguments(output_dir=str(tmp_path), seed=3, use_cpu=True)
    warm = rebuild_reference_encoder(ModelArguments(init_from=checkpoints["vit"]), training_args)
    assert warm.label == f"start ({checkpoints['vit']})"
    start = ViTModel.from_pretrained(checkpoints["vit"]).state_dict()
    assert all(torch.equal(value, start[name]) for name, value in warm.encoder.backbone.state_dict().items())
    # A start that cannot be rebuilt, or that the run has overwritten, gives no reference row, not a wrong one.
    assert rebuild_reference_encoder(ModelArguments(init_from=str(tmp_path / "gone")), training_args) is None
    assert rebuild_reference_encoder(ModelArguments(model_name_or_path=str(tmp_path)), training_args) is None


def test_pretrain_command_with_a_preset_and_another_image_size(checkpoints, tmp_path):
    output_dir = tmp_path / "run"
    arguments = [
        "--init_from",
        checkpoints["dinov2"],
        "--image_size",
        "48",
        "--config_overrides",
        "d_patch=32,d_equi=8",
    ]
    arguments += ["--equivariance_benchmark", "False", "--output_dir", str(output_dir), *FAST_PRETRAIN]
    assert cli_main(["pretrain", *arguments]) == 0
    config = EquiReconForPreTraining.from_pretrained(output_dir).config
    assert (config.backbone_config.model_type, config.image_size, config.d_patch, config.d_equi) == (
        "dinov2",
        48,
        32,
        8,
    )
    processor = json.loads((output_dir / "preprocessor_config.json").read_text())
    assert processor["size"] == {"height": 48, "width": 48}
    assert processor["image_mean"] == pytest.approx([0.485, 0.456, 0.406])  # no processor saved: ImageNet's


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--init_from", "/nonexistent/dinov2"], "--init_from /nonexistent/dinov2: '/nonexistent/dinov2' is not a"),
        (["--init_from", "{bert}"], "is a bert checkpoint, not a ViT-family encoder"),
        (
            ["--init_from", "{dinov2}", "--preset", "tiny"],
            "--preset tiny (hidden_size=192, num_hidden_layers=6, num_attention_heads=3, image_size=64) conflicts "
            "with --init_from {dinov2} (hidden_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=32)",
        ),
        (
            ["--init_from", "{dinov2}", "--config_overrides", "d_patch=32,patch_size=16"],
            "--config_overrides sets patch_size, but with --init_from {dinov2} the encoder's architecture is the "
            "checkpoint's",
        ),
        (
            ["--init_from", "{dinov2}", "--config_overrides", 'backbone_config={"model_type":"vit"}'],
            "--config_overrides sets backbone_config, but with --init_from",
        ),
        (
            ["--init_from", "{dinov2}", "--model_name_or_path", "{vit}"],
            "--init_from {dinov2} and --model_name_or_path",
        ),
        (["--init_from", "{dinov2}", "--image_size", "44"], "must be a multiple of `backbone_config.patch_size` (8)"),
    ],
)
def test_bad_warm_starts_fail_with_one_line_before_training(checkpoints, tmp_path, capsys, arguments, message):
    def fill(text: str) -> str:  # the checkpoints' paths for their {names}
        for name, path in checkpoints.items():
            text = text.replace(f"{{{name}}}", path)
        return text

    assert cli_main(["pretrain", "--output_dir", str(tmp_path / "out"), *FAST_PRETRAIN, *map(fill, arguments)]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and error[0].startswith("equirecon pretrain: error: ")
    assert fill(message) in error[0]
    assert not (tmp_path / "out" / "model.safetensors").exists()


@pytest.mark.parametrize("kind", ["dinov2", "vit"])
def test_masking_objective_keeps_the_checkpoints_weights_and_adds_a_mask_token(checkpoints, kind):
    # iBOT masks student patch tokens: a ViT checkpoint has no mask token (it starts fresh), a DINOv2 one has one.
    model = EquiReconForPreTraining.from_pretrained_backbone(checkpoints[kind], ssl_objective="ibot", **HEADS)
    backbone = model.equirecon.backbone
    assert backbone.embeddings.mask_token is not None
    source = AutoModel.from_pretrained(checkpoints[kind]).state_dict()
    assert torch.equal(
        backbone.state_dict()["embeddings.patch_embeddings.projection.weight"],
        source["embeddings.patch_embeddings.projection.weight"],
    )
    if kind == "dinov2":
        assert torch.equal(backbone.embeddings.mask_token, source["embeddings.mask_token"])


def _drop_path_rates(model) -> set[float]:
    return {getattr(layer.drop_path, "drop_prob", 0.0) for layer in model.equirecon.backbone.encoder.layer}


def test_stochastic_depth_is_a_training_setting_a_warm_start_keeps(checkpoints):
    model = EquiReconForPreTraining.from_pretrained_backbone(checkpoints["dinov2"], drop_path_rate=0.2, **HEADS)
    assert model.config.backbone_config.drop_path_rate == 0.2
    assert _drop_path_rates(model) == {0.2}
    with pytest.raises(ValueError, match="a vit encoder has no stochastic depth"):
        EquiReconForPreTraining.from_pretrained_backbone(checkpoints["vit"], drop_path_rate=0.2, **HEADS)


def test_a_presets_drop_path_rate_reaches_a_warm_started_encoder(checkpoints, tmp_path, monkeypatch, caplog):
    """The preset's encoder sizes must match the checkpoint's; its stochastic depth is kept where the encoder has one,
    and an explicit override wins."""
    from equirecon.modeling.presets import PRESETS

    monkeypatch.setitem(PRESETS, "tiny-drop-path", {**HEADS, "backbone_config": {**SIZES, "drop_path_rate": 0.3}})
    training_args = EquiReconTrainingArguments(output_dir=str(tmp_path), use_cpu=True)
    model = build_model(ModelArguments(init_from=checkpoints["dinov2"], preset="tiny-drop-path"), training_args)
    assert _drop_path_rates(model) == {0.3}
    overridden = ModelArguments(
        init_from=checkpoints["dinov2"], preset="tiny-drop-path", config_overrides="drop_path_rate=0.1"
    )
    assert _drop_path_rates(build_model(overridden, training_args)) == {0.1}
    with caplog.at_level("WARNING"):
        model = build_model(ModelArguments(init_from=checkpoints["vit"], preset="tiny-drop-path"), training_args)
    assert "a vit encoder has no stochastic depth: training without it" in caplog.text


def test_overrides_reach_the_encoder_of_a_new_model_or_are_refused(tmp_path):
    training_args = EquiReconTrainingArguments(output_dir=str(tmp_path), use_cpu=True)
    overrides = "drop_path_rate=0.2,num_hidden_layers=2,d_patch=64,d_equi=32"
    model = build_model(ModelArguments(preset="tiny", config_overrides=overrides), training_args)
    assert _drop_path_rates(model) == {0.2} and len(model.equirecon.backbone.encoder.layer) == 2
    assert (model.config.d_patch, model.config.d_equi) == (64, 32)
    with pytest.raises(ArgumentError, match="sets d_pach, which is neither an EquiReconConfig field nor a field of"):
        build_model(ModelArguments(preset="tiny", config_overrides="d_pach=64"), training_args)
