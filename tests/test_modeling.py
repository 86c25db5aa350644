import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from model_helpers import TINY_BACKBONE, tiny_config
from transformers import AutoModel, Dinov2Config, Dinov2Model, ViTConfig

from equirecon import EquiReconConfig, EquiReconForPreTraining, EquiReconModel
from equirecon.modeling import modeling_equirecon
from equirecon.modeling.modeling_equirecon import masked_mse


def _batch(batch_size=4, size=32, k=2, seed=0):
    generator = torch.Generator().manual_seed(seed)
    pixel_values = torch.randn(batch_size, 3, size, size, generator=generator)
    transformed = torch.randn(batch_size, 3, size, size, generator=generator)
    targets = torch.randn(batch_size, k, 3, size, size, generator=generator)
    mask = (torch.rand(batch_size, k, 1, size, size, generator=generator) > 0.2).float()
    return {
        "pixel_values": pixel_values,
        "transformed_pixel_values": transformed,
        "intermediate_pixel_values": targets,
        "intermediate_mask": mask,
    }


def _model(**overrides):
    torch.manual_seed(0)
    return EquiReconForPreTraining(tiny_config(**overrides))


def test_base_model_outputs_split_the_head():
    config = tiny_config()
    model = EquiReconModel(config).eval()
    out = model(torch.randn(2, 3, 32, 32), output_hidden_states=True)
    num_tokens = 1 + (32 // 8) ** 2
    assert out.last_hidden_state.shape == (2, num_tokens, 32)
    assert out.pooler_output.shape == (2, 32)
    assert torch.equal(out.pooler_output, out.last_hidden_state[:, 0])
    assert out.invariant_embeds.shape == (2, num_tokens, 8)
    assert out.equivariant_embeds.shape == (2, num_tokens, 8)
    assert len(out.hidden_states) == 3
    projected = model.projection(out.last_hidden_state)
    assert torch.allclose(torch.cat([out.invariant_embeds, out.equivariant_embeds], -1), projected)
    assert model.num_prefix_tokens == 1


def test_pretraining_outputs_and_loss_composition():
    model = _model(reconstruction_weight=0.5)
    out = model(**_batch(), output_reconstructions=True)
    assert out.reconstructions.shape == (4, 2, 3, 32, 32)
    assert out.pooled_invariant_embeds.shape == (2, 4, 8)
    assert out.equivariant_embeds.shape == (2, 4, 16, 8)
    assert torch.allclose(out.loss, out.ssl_loss + 0.5 * out.reconstruction_loss)
    no_targets = model(pixel_values=_batch()["pixel_values"], transformed_pixel_values=_batch()["pixel_values"])
    assert no_targets.reconstruction_loss is None and torch.equal(no_targets.loss, no_targets.ssl_loss)
    assert model(**_batch(), return_loss=False).loss is None


def test_zero_reconstruction_weight_is_the_host_method_alone():
    model = _model(reconstruction_weight=0.0)
    assert len(model.decoders) == 0
    out = model(**_batch())
    assert out.reconstruction_loss is None and torch.equal(out.loss, out.ssl_loss)


def test_forward_returns_the_pairs_its_reconstruction_loss_counted():
    """iBOT masks some pairs: the reconstruction loss counts the others, and `reconstructed_pairs` says which, so a
    caller (the trainer's controls) scores the same pairs without deriving them again."""
    model = _model(ssl_objective="ibot", dino_out_dim=32, dino_hidden_dim=32, dino_bottleneck_dim=8).eval()
    batch = _batch()
    bool_masked_pos = torch.zeros(4, 2, 16, dtype=torch.bool)
    bool_masked_pos[1, 0, :5] = True  # pair 1: its first view masked
    bool_masked_pos[3, 1, 7] = True  # pair 3: one token of its second view
    with torch.no_grad():
        out = model(**batch, bool_masked_pos=bool_masked_pos, output_reconstructions=True)
    assert out.reconstructed_pairs.tolist() == [True, False, True, False]
    counted = out.reconstructed_pairs.float().view(4, 1, 1, 1, 1) * batch["intermediate_mask"]
    expected = masked_mse(out.reconstructions, batch["intermediate_pixel_values"], counted)
    torch.testing.assert_close(out.reconstruction_loss, expected)
    assert _model()(**batch).reconstructed_pairs is None  # no masks: every pair counts


def test_reconstruction_loss_method_is_the_forward_loss_and_scores_other_reconstructions():
    """`reconstruction_loss` is the one place the loss is computed: `forward`'s value, and what the trainer's unpaired
    control gets for another pair's reconstructions, on the same targets, valid pixels and counted pairs."""
    model = _model().eval()
    batch = _batch()
    pairs = torch.tensor([True, False, True, True])
    with torch.no_grad():
        out = model(**batch, output_reconstructions=True)
        targets, mask = batch["intermediate_pixel_values"], batch["intermediate_mask"]
        torch.testing.assert_close(
            model.reconstruction_loss(out.reconstructions, targets, mask), out.reconstruction_loss
        )
        other = out.reconstructions.roll(1, dims=0)
        counted = mask * pairs.float().view(4, 1, 1, 1, 1)
        expected = masked_mse(other, targets, counted)
        torch.testing.assert_close(model.reconstruction_loss(other, targets, mask, pairs), expected)
    with pytest.raises(ValueError, match="`intermediate_pixel_values` has shape"):
        model.reconstruction_loss(out.reconstructions, targets[:, :1], mask)


def test_reconstruction_loss_ignores_masked_pixels():
    prediction, target = torch.zeros(1, 2, 3, 4, 4), torch.ones(1, 2, 3, 4, 4)
    mask = torch.zeros(1, 2, 1, 4, 4)
    mask[..., :2, :] = 1
    target_outside = target.clone()
    target_outside[..., 2:, :] = 100.0
    assert masked_mse(prediction, target, mask) == pytest.approx(1.0)
    assert masked_mse(prediction, target_outside, mask) == pytest.approx(1.0)
    assert masked_mse(prediction, target_outside, None) > 1.0


@pytest.mark.parametrize(("kernel_size", "dilation"), [(3, 1), (5, 2)])
def test_decoder_writes_each_token_to_its_own_patch(kernel_size, dilation):
    """The linear layer is local: changing one token changes its patch and, through the four convolutions, exactly
    4·(kernel_size − 1)·dilation/2 pixels beyond it (4 with the defaults, 16 for 5×5 with dilation 2)."""
    model = _model(decoder_kernel_size=kernel_size, decoder_dilation=dilation)
    decoder = model.decoders[0]
    tokens = torch.randn(1, 64, 16)
    changed = tokens.clone()
    changed[0, 27] += 1.0  # token (row 3, col 3) of an 8×8 grid → pixels [24:32, 24:32] of the 64² image
    with torch.no_grad():
        output = decoder(tokens, (8, 8))
        difference = (decoder(changed, (8, 8)) - output).abs().sum(dim=(0, 1))
    assert output.shape == (1, 3, 64, 64)
    reach = 4 * (kernel_size - 1) * dilation // 2
    first, last = 24 - reach, 31 + reach
    assert difference[24:32, 24:32].sum() > 0
    assert difference[first].sum() > 0 and difference[last].sum() > 0  # the farthest pixels reached ...
    assert difference[:, first].sum() > 0 and difference[:, last].sum() > 0
    assert difference[:first].sum() == 0 and difference[last + 1 :].sum() == 0  # ... and none beyond
    assert difference[:, :first].sum() == 0 and difference[:, last + 1 :].sum() == 0


def test_decoder_parameters_keep_their_names_and_shapes():
    """The defaults build the decoder that checkpoints hold (3×3 convolutions); the kernel size only changes the
    convolution weights' last two dimensions."""
    default = _model().decoders[0].state_dict()
    expected = {
        "to_patches.weight": (4 * 8 * 8, 16),
        "to_patches.bias": (4 * 8 * 8,),
        "convs.0.weight": (8, 4, 3, 3),
        "convs.2.weight": (8, 8, 3, 3),
        "convs.4.weight": (8, 8, 3, 3),
        "convs.6.weight": (3, 8, 3, 3),
        **{f"convs.{i}.bias": (3 if i == 6 else 8,) for i in (0, 2, 4, 6)},
    }
    assert {name: tuple(tensor.shape) for name, tensor in default.items()} == expected
    wider = _model(decoder_kernel_size=5, decoder_dilation=2).decoders[0].state_dict()
    assert wider.keys() == default.keys()
    assert tuple(wider["convs.0.weight"].shape) == (8, 4, 5, 5)
    out = _model(decoder_kernel_size=5, decoder_dilation=2)(**_batch(), output_reconstructions=True)
    assert out.reconstructions.shape == (4, 2, 3, 32, 32)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"decoder_kernel_size": 4}, r"`decoder_kernel_size` must be an odd integer >= 1 .* got 4"),
        ({"decoder_kernel_size": 0}, r"`decoder_kernel_size` must be an odd integer >= 1 .* got 0"),
        ({"decoder_kernel_size": 3.0}, r"`decoder_kernel_size` must be an odd integer >= 1 .* got 3.0"),
        ({"decoder_dilation": 0}, r"`decoder_dilation` must be an integer >= 1, got 0"),
        ({"decoder_dilation": 1.5}, r"`decoder_dilation` must be an integer >= 1, got 1.5"),
    ],
)
def test_invalid_decoder_reach_names_the_field(overrides, message):
    with pytest.raises(ValueError, match=message):
        tiny_config(**overrides)


def test_decoder_reach_survives_save_and_load(tmp_path):
    model = _model(decoder_kernel_size=5, decoder_dilation=2).eval()
    batch = _batch()
    model.save_pretrained(tmp_path)
    reloaded = EquiReconForPreTraining.from_pretrained(tmp_path).eval()
    assert (reloaded.config.decoder_kernel_size, reloaded.config.decoder_dilation) == (5, 2)
    with torch.no_grad():
        expected = model(**batch, output_reconstructions=True).reconstructions
        torch.testing.assert_close(reloaded(**batch, output_reconstructions=True).reconstructions, expected)
    saved_before_the_fields = {
        k: v for k, v in model.config.to_dict().items() if k not in ("decoder_kernel_size", "decoder_dilation")
    }
    older = EquiReconConfig.from_dict(saved_before_the_fields)
    assert (older.decoder_kernel_size, older.decoder_dilation) == (3, 1)


def test_shape_errors_name_the_argument():
    model = _model()
    batch = _batch()
    with pytest.raises(ValueError, match="must have the same shape"):
        model(pixel_values=batch["pixel_values"], transformed_pixel_values=batch["pixel_values"][:, :, :16])
    with pytest.raises(ValueError, match=r"`intermediate_pixel_values` has shape \(4, 1, 3, 32, 32\), expected"):
        model(**{**batch, "intermediate_pixel_values": batch["intermediate_pixel_values"][:, :1]})


def test_pretraining_checkpoint_loads_into_the_encoder_intact(tmp_path):
    model = _model()
    model.save_pretrained(tmp_path)
    encoder, info = AutoModel.from_pretrained(tmp_path, output_loading_info=True)
    assert type(encoder) is EquiReconModel
    assert not info["missing_keys"] and not info["mismatched_keys"]
    for name, tensor in model.equirecon.state_dict().items():
        assert torch.equal(tensor, encoder.state_dict()[name]), name


@pytest.mark.parametrize("objective", ["vicreg", "simclr"])
def test_loss_is_finite_and_decreases_on_a_fixed_batch(objective):
    model = _model(ssl_objective=objective).train()
    batch = _batch(batch_size=8)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    history = []
    for _ in range(30):
        out = model(**batch)
        assert torch.isfinite(out.loss)
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        history.append((out.loss.item(), out.reconstruction_loss.item()))
    assert history[-1][0] < 0.8 * history[0][0]
    assert history[-1][1] < history[0][1]


def test_other_image_sizes_with_position_interpolation():
    vit = tiny_config(
        backbone_config=ViTConfig(
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=64,
            image_size=32,
            patch_size=8,
        )
    )
    model = EquiReconModel(vit).eval()
    assert not hasattr(model.backbone, "pooler") or model.backbone.pooler is None
    out = model(torch.randn(1, 3, 48, 48), interpolate_pos_encoding=True)
    assert out.last_hidden_state.shape == (1, 1 + 36, 32)
    dinov2 = EquiReconModel(tiny_config()).eval()
    assert dinov2(torch.randn(1, 3, 48, 48)).equivariant_embeds.shape == (1, 37, 8)


def test_encoder_initialised_from_a_pretrained_transformers_checkpoint(tmp_path):
    torch.manual_seed(1)
    backbone_config = Dinov2Config(**{k: v for k, v in TINY_BACKBONE.items() if k != "model_type"})
    pretrained = Dinov2Model(backbone_config)
    pretrained.save_pretrained(tmp_path)
    model = EquiReconForPreTraining.from_pretrained_backbone(
        str(tmp_path), d_patch=16, d_equi=8, vicreg_expander_dims=[32, 32], decoder_hidden_channels=8
    )
    assert isinstance(model.config, EquiReconConfig) and model.config.d_equi == 8
    for name, tensor in pretrained.state_dict().items():
        assert torch.equal(model.equirecon.backbone.state_dict()[name], tensor), name
    pixel_values = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(
            model.equirecon.eval()(pixel_values).last_hidden_state, pretrained.eval()(pixel_values).last_hidden_state
        )


def test_auto_map_and_remote_code_load_without_equirecon_installed(tmp_path):
    model = _model().eval()
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["auto_map"]["AutoModel"] == "modeling_equirecon.EquiReconModel"
    assert config["auto_map"]["AutoConfig"] == "configuration_equirecon.EquiReconConfig"
    # The modeling package travels whole: every module it is made of, found through the relative imports.
    package = Path(modeling_equirecon.__file__).parent
    assert {path.name for path in package.glob("*.py")} - {path.name for path in tmp_path.glob("*.py")} == {
        "__init__.py"
    }
    pixel_values = torch.randn(2, 3, 32, 32)
    torch.save(pixel_values, tmp_path / "input.pt")
    with torch.no_grad():
        torch.save(model.equirecon(pixel_values).equivariant_embeds, tmp_path / "expected.pt")

    script = textwrap.dedent(
        f"""
        import importlib.abc, sys

        class HideEquirecon(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name == "equirecon" or name.startswith("equirecon."):
                    raise ModuleNotFoundError(name)

        sys.meta_path.insert(0, HideEquirecon())
        try:
            import equirecon
        except ModuleNotFoundError:
            pass
        else:
            raise SystemExit("equirecon is importable: the test would not show remote code")

        import torch
        from transformers import AutoModel

        model = AutoModel.from_pretrained({str(tmp_path)!r}, trust_remote_code=True).eval()
        assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
        with torch.no_grad():
            out = model(torch.load({str(tmp_path / "input.pt")!r}))
        assert torch.equal(out.equivariant_embeds, torch.load({str(tmp_path / "expected.pt")!r}))
        print("REMOTE-OK", type(model).__name__)
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["HF_MODULES_CACHE"] = str(tmp_path / "modules")
    result = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, cwd=tmp_path, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "REMOTE-OK EquiReconModel" in result.stdout
