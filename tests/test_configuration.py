import pytest
import torch
from model_helpers import TINY_BACKBONE, tiny_config
from transformers import AutoConfig, Dinov2Config, ViTConfig

from equirecon import PRESETS, EquiReconConfig, EquiReconForPreTraining
from equirecon.modeling.configuration_equirecon import MASKED_OBJECTIVES, SSL_OBJECTIVES
from equirecon.modeling.objectives import build_objective
from equirecon.modeling.ssl_objective import SSLObjective


def test_default_is_vit_s16_dinov2():
    config = EquiReconConfig()
    assert config.backbone_config.model_type == "dinov2"
    assert (config.hidden_size, config.patch_size, config.image_size) == (384, 16, 224)
    assert (config.d_patch, config.d_equi, config.d_inv) == (512, 256, 256)
    assert config.num_intermediates == 2 and config.reconstruction_weight == 1.0


def test_presets_match_the_paper():
    vicreg = EquiReconConfig.from_preset("vicreg-vit-s16")
    assert (vicreg.d_patch, vicreg.d_equi, vicreg.ssl_objective) == (512, 256, "vicreg")
    assert (vicreg.vicreg_sim_coeff, vicreg.vicreg_std_coeff, vicreg.vicreg_cov_coeff) == (10, 10, 1)
    assert vicreg.vicreg_expander_dims == [2048, 2048, 2048]
    assert EquiReconConfig.from_preset("simclr-vit-s16").ssl_objective == "simclr"
    tiny = EquiReconConfig.from_preset("tiny", d_equi=64)
    assert tiny.image_size == 64 and tiny.d_equi == 64
    with pytest.raises(ValueError, match="Unknown preset 'nope'"):
        EquiReconConfig.from_preset("nope")
    assert set(PRESETS) >= {"vicreg-vit-s16", "simclr-vit-s16", "tiny"}


def test_dino_family_presets_match_the_paper_split_sizes():
    for name, hidden in (("ibot-vit-s16", 384), ("ibot-vit-l16", 1024)):
        ibot = EquiReconConfig.from_preset(name)
        assert (ibot.ssl_objective, ibot.d_patch, ibot.d_equi, ibot.hidden_size) == ("ibot", 8192, 2048, hidden)
        assert ibot.dino_out_dim == 8192 and not ibot.ibot_separate_head and ibot.uses_masks
        assert ibot.backbone_config.use_mask_token
    dinov2 = EquiReconConfig.from_preset("dinov2-vit-l16")
    assert (dinov2.ssl_objective, dinov2.d_patch, dinov2.d_equi, dinov2.hidden_size) == ("dinov2", 2048, 512, 1024)
    assert (dinov2.dino_out_dim, dinov2.koleo_loss_weight, dinov2.teacher_momentum) == (65536, 0.1, 0.992)
    assert dinov2.mask_ratio_range == [0.1, 0.5] and dinov2.mask_probability == 0.5


def test_save_and_reload_round_trip(tmp_path):
    config = tiny_config(transformation={"family": "rotation", "rotation_range": [-30, 30]})
    config.save_pretrained(tmp_path)
    reloaded = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(reloaded, EquiReconConfig)
    assert reloaded.to_diff_dict() == config.to_diff_dict()
    assert reloaded.transformation == {"family": "rotation", "rotation_range": [-30, 30]}
    assert reloaded.backbone_config.hidden_size == 32


def test_any_vit_family_backbone_is_accepted():
    config = EquiReconConfig(
        backbone_config=ViTConfig(
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=64,
            image_size=32,
            patch_size=8,
        ),
        d_patch=16,
        d_equi=4,
    )
    assert config.backbone_config.model_type == "vit"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"d_equi": 16}, r"`d_equi` must be an integer in \[1, d_patch\) = \[1, 16\)"),
        ({"d_equi": 0}, r"`d_equi` must be an integer in \[1, d_patch\)"),
        ({"d_patch": 1, "d_equi": 1}, r"`d_patch` must be an integer >= 2"),
        ({"num_intermediates": 0}, r"`num_intermediates` \(K\) must be an integer >= 1"),
        ({"reconstruction_weight": -1.0}, r"`reconstruction_weight` \(λ\) must be >= 0"),
        ({"dino_centering": "mean"}, "`dino_centering` must be one of"),
        ({"mask_ratio_range": [0.5, 0.1]}, "`mask_ratio_range` must be"),
        ({"teacher_momentum": 1.5}, r"`teacher_momentum` must be in \[0, 1\]"),
        ({"dino_teacher_temperature": 0}, "`dino_teacher_temperature` must be > 0"),
        (
            {"ssl_objective": "byol"},
            r"`ssl_objective` must be one of \('vicreg', 'simclr', 'dino', 'ibot', 'dinov2'\), got 'byol'",
        ),
        ({"vicreg_std_coeff": -1.0}, r"`vicreg_std_coeff` must be >= 0"),
        ({"simclr_temperature": 0.0}, r"`simclr_temperature` must be > 0"),
        ({"vicreg_expander_dims": []}, r"`vicreg_expander_dims` must be a non-empty list"),
        ({"decoder_hidden_channels": 0}, r"`decoder_hidden_channels` must be a positive integer"),
        ({"segmentation_head": "fcn"}, r"`segmentation_head` must be one of \('linear', 'upernet'\)"),
        ({"out_indices": [1, 5]}, r"out_indices must be valid indices for stage_names \['stem', 'stage1', 'stage2'\]"),
        ({"out_indices": [2, 1]}, r"out_indices must be in the same order as stage_names"),
        ({"out_features": ["stage3"]}, r"out_features must be a subset of stage_names"),
        ({"transformation": {"rotation_range": [0, 1]}}, r"`transformation` must name its 'family'"),
        ({"backbone_config": {**TINY_BACKBONE, "image_size": 36}}, r"image_size` \(36\) must be a multiple of"),
        ({"backbone_config": {"hidden_size": 32}}, r"has no 'model_type'"),
        ({"backbone_config": {"model_type": "bert"}}, r"\(bert\) has no `patch_size`"),
        ({"backbone_config": 3}, r"must be a transformers PretrainedConfig, a dict or None, got int"),
    ],
)
def test_invalid_configurations_name_the_field(overrides, message):
    with pytest.raises(ValueError, match=message):
        tiny_config(**overrides)


def test_every_declared_objective_is_buildable_and_returns_a_scalar_loss():
    for name in SSL_OBJECTIVES:
        masked = name in MASKED_OBJECTIVES
        config = tiny_config(
            ssl_objective=name,
            backbone_config={**TINY_BACKBONE, "use_mask_token": masked},
            dino_out_dim=32,
            dino_hidden_dim=32,
            dino_bottleneck_dim=8,
        )
        assert isinstance(build_objective(config), SSLObjective)
        model = EquiReconForPreTraining(config)
        masks = {"bool_masked_pos": torch.rand(4, 2, 16) < 0.3} if masked else {}
        loss = model(
            pixel_values=torch.randn(4, 3, 32, 32), transformed_pixel_values=torch.randn(4, 3, 32, 32), **masks
        )
        assert loss.ssl_loss.ndim == 0 and torch.isfinite(loss.ssl_loss)


def test_prefix_tokens_come_from_the_config():
    assert tiny_config().num_prefix_tokens == 1
    registers = tiny_config(
        backbone_config={**TINY_BACKBONE, "model_type": "dinov2_with_registers", "num_register_tokens": 4}
    )
    assert registers.num_prefix_tokens == 5


def test_default_stages_are_four_evenly_spaced_layers_ending_with_the_last():
    assert EquiReconConfig().out_features == ["stage3", "stage6", "stage9", "stage12"]
    assert EquiReconConfig().segmentation_out_indices == [3, 6, 9, 12]
    assert EquiReconConfig.from_preset("tiny").out_indices == [2, 3, 4, 6]
    # Two layers have two stages after the embeddings: the four pyramid levels share them.
    assert tiny_config().out_indices == [1, 2]
    assert tiny_config().segmentation_out_indices == [1, 1, 2, 2]


def test_the_stages_follow_a_saved_config_and_a_new_depth(tmp_path):
    config = tiny_config(out_indices=[0, 2])
    config.save_pretrained(tmp_path)
    reloaded = AutoConfig.from_pretrained(tmp_path)
    assert (reloaded.out_indices, reloaded.out_features) == ([0, 2], ["stem", "stage2"])
    deeper = EquiReconConfig.from_dict(
        {**tiny_config().to_dict(), "backbone_config": {**TINY_BACKBONE, "num_hidden_layers": 8}}
    )
    assert deeper.stage_names[-1] == "stage8" and deeper.out_indices == [1, 2]  # the saved stages, still valid


@pytest.mark.parametrize("objective", MASKED_OBJECTIVES)
def test_an_objective_that_masks_gets_the_encoders_mask_token(objective):
    """`ssl_objective=ibot` on an encoder config without a mask token (the default preset's) turns it on rather
    than asking for it; the caller's config is left as it was."""
    backbone = Dinov2Config(**{k: v for k, v in TINY_BACKBONE.items() if k != "model_type"})
    assert backbone.use_mask_token is False
    config = tiny_config(ssl_objective=objective, backbone_config=backbone)
    assert config.backbone_config.use_mask_token is True and backbone.use_mask_token is False
    assert EquiReconConfig.from_preset("vicreg-vit-s16", ssl_objective=objective).backbone_config.use_mask_token
    model = EquiReconForPreTraining(tiny_config(ssl_objective=objective, dino_out_dim=32, dino_hidden_dim=32))
    assert model.equirecon.backbone.embeddings.mask_token is not None
    # An objective that does not mask leaves the encoder as configured.
    assert tiny_config(ssl_objective="dino").backbone_config.use_mask_token is False


@pytest.mark.parametrize("size", ["224", (224, 224, 3), [224]])
def test_a_size_that_is_neither_a_number_nor_a_pair_is_refused(size):
    """Configs and evaluation read sizes with one helper, which names what it cannot read."""
    from equirecon.evaluation.loading import InputSpec

    with pytest.raises(ValueError, match="cannot read a size"):
        InputSpec((224, 224)).with_size(size)
