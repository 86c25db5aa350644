"""Tiny model configurations shared by the tests."""

TINY_BACKBONE = {
    "model_type": "dinov2",
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "mlp_ratio": 2,
    "patch_size": 8,
    "image_size": 32,
    "use_mask_token": False,
}


def tiny_config(**overrides):
    """An EquiRecon config small enough for a unit test (hidden 32, 2 layers, 32² images)."""
    from equirecon import EquiReconConfig

    fields = {
        "backbone_config": dict(TINY_BACKBONE),
        "d_patch": 16,
        "d_equi": 8,
        "vicreg_expander_dims": [32, 32],
        "simclr_projector_dims": [32, 16],
        "decoder_patch_channels": 4,
        "decoder_hidden_channels": 8,
        "segmentation_channels": 16,
        "auxiliary_channels": 8,
    }
    fields.update(overrides)
    return EquiReconConfig(**fields)
