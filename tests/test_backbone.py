"""`EquiReconBackbone`: the encoder as a transformers backbone (`AutoBackbone`), and transformers' public
`UperNetForSemanticSegmentation` built on it."""

import pytest
import torch
from model_helpers import tiny_config
from transformers import AutoBackbone, UperNetConfig, UperNetForSemanticSegmentation
from transformers.modeling_outputs import BackboneOutput

from equirecon import EquiReconBackbone, EquiReconForPreTraining

HIDDEN, GRID = 32, 4  # tiny_config: hidden 32, 32² images in 8² patches


def _pixels(batch_size=2):
    return torch.randn(batch_size, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def test_auto_backbone_from_an_equirecon_config_returns_the_named_stages_as_maps():
    backbone = AutoBackbone.from_config(tiny_config(out_features=["stem", "stage2"])).eval()
    assert type(backbone) is EquiReconBackbone
    assert (backbone.out_indices, backbone.channels) == ([0, 2], [HIDDEN, HIDDEN])
    pixel_values = _pixels()
    with torch.no_grad():
        outputs = backbone(pixel_values)
        states = backbone.equirecon(pixel_values, output_hidden_states=True).hidden_states
    assert isinstance(outputs, BackboneOutput) and outputs.hidden_states is None
    assert [tuple(m.shape) for m in outputs.feature_maps] == [(2, HIDDEN, GRID, GRID)] * 2
    norm = backbone.equirecon.backbone.layernorm  # each stage through the final norm, as Dinov2Backbone
    for feature_map, index in zip(outputs.feature_maps, [0, 2], strict=True):
        expected = norm(states[index])[:, 1:].transpose(1, 2).reshape(2, HIDDEN, GRID, GRID)
        torch.testing.assert_close(feature_map, expected)


def test_backbone_output_flags_and_tuples():
    backbone = AutoBackbone.from_config(tiny_config(attn_implementation="eager")).eval()
    with torch.no_grad():
        outputs = backbone(_pixels(), output_hidden_states=True, output_attentions=True)
        as_tuple = backbone(_pixels(), return_dict=False)
    assert len(outputs.hidden_states) == 3 and len(outputs.attentions) == 2  # embeddings + 2 layers
    assert isinstance(as_tuple, tuple) and len(as_tuple) == 1 and len(as_tuple[0]) == len(backbone.out_features)


def test_auto_backbone_loads_the_encoder_of_a_pretraining_checkpoint(tmp_path):
    torch.manual_seed(0)
    pretrained = EquiReconForPreTraining(tiny_config())
    pretrained.save_pretrained(tmp_path)
    # (`AutoBackbone.from_pretrained` takes Hub ids only in transformers 5.25: it asks the Hub whether the repo
    # exists before it looks for a local directory.)
    backbone, info = EquiReconBackbone.from_pretrained(tmp_path, out_indices=[1, 2], output_loading_info=True)
    assert backbone.out_indices == [1, 2]
    assert not info["missing_keys"] and not info["unexpected_keys"]
    student = pretrained.equirecon.backbone.state_dict()
    assert all(torch.equal(tensor, student[name]) for name, tensor in backbone.equirecon.backbone.state_dict().items())


@pytest.mark.parametrize("use_auxiliary_head", [True, False])
def test_upernet_through_the_public_api_on_an_equirecon_backbone(use_auxiliary_head, tmp_path):
    """transformers' `UperNetForSemanticSegmentation` with `backbone_config` an EquiRecon config: it builds the
    backbone through `AutoBackbone`, trains, saves and loads back."""
    config = UperNetConfig(
        backbone_config=tiny_config(out_indices=[0, 1, 2]),
        hidden_size=16,
        auxiliary_channels=8,
        use_auxiliary_head=use_auxiliary_head,
        num_labels=3,
    )
    torch.manual_seed(0)
    model = UperNetForSemanticSegmentation(config).train()
    assert isinstance(model.backbone, EquiReconBackbone)
    labels = torch.randint(0, 3, (2, 32, 32), generator=torch.Generator().manual_seed(1))
    outputs = model(_pixels(), labels=labels)
    assert outputs.logits.shape == (2, 3, 32, 32) and torch.isfinite(outputs.loss)
    outputs.loss.backward()
    assert model.backbone.equirecon.backbone.embeddings.patch_embeddings.projection.weight.grad is not None
    model.eval().save_pretrained(tmp_path)
    reloaded = UperNetForSemanticSegmentation.from_pretrained(str(tmp_path)).eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(_pixels()).logits, model(_pixels()).logits)
