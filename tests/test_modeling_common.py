"""transformers' common model and config checks (`ModelTesterMixin`, `ConfigTester` of transformers' own test suite)
for every EquiRecon class. The installed wheel does not ship transformers' `tests/` package, so the checks are
written here against the public API, with transformers' tolerances; those that cannot apply are skipped with the
reason (`test_not_applicable`)."""

import copy
import inspect
import json
from dataclasses import dataclass, field
from typing import Any
from unittest.mock import patch

import pytest
import torch
from model_helpers import TINY_BACKBONE, tiny_config
from torch import nn
from transformers import (
    AutoModel,
    AutoModelForImageClassification,
    AutoModelForPreTraining,
    AutoModelForSemanticSegmentation,
    PretrainedConfig,
    PreTrainedModel,
    set_seed,
)
from transformers.models.dinov2.modeling_dinov2 import Dinov2PreTrainedModel
from transformers.models.vit.modeling_vit import ViTPreTrainedModel

from equirecon import (
    EquiReconBackbone,
    EquiReconConfig,
    EquiReconForImageClassification,
    EquiReconForPreTraining,
    EquiReconForSemanticSegmentation,
    EquiReconModel,
)

BATCH_SIZE, IMAGE_SIZE, NUM_LABELS = 2, 32, 3
NUM_LAYERS, NUM_HEADS = TINY_BACKBONE["num_hidden_layers"], TINY_BACKBONE["num_attention_heads"]
HIDDEN_SIZE = TINY_BACKBONE["hidden_size"]
SEQ_LENGTH = 1 + (IMAGE_SIZE // TINY_BACKBONE["patch_size"]) ** 2  # CLS + patch tokens


@dataclass(frozen=True)
class Case:
    """One model class and the tiny config and inputs it is checked with."""

    model_class: type[PreTrainedModel]
    auto_class: type
    overrides: dict[str, Any] = field(default_factory=dict)

    def config(self, **extra: Any) -> EquiReconConfig:
        return tiny_config(**{**self.overrides, **extra})

    def model(self, **extra: Any) -> PreTrainedModel:
        torch.manual_seed(0)
        return self.model_class(self.config(**extra))

    @property
    def has_loss(self) -> bool:
        return self.model_class not in (EquiReconModel, EquiReconBackbone)

    def inputs(self, with_labels: bool = False) -> dict[str, torch.Tensor]:
        generator = torch.Generator().manual_seed(0)
        images = torch.randn(BATCH_SIZE, 3, IMAGE_SIZE, IMAGE_SIZE, generator=generator)
        inputs = {"pixel_values": images}
        if self.model_class is EquiReconForPreTraining:
            inputs["transformed_pixel_values"] = images.flip(-1)
            inputs["intermediate_pixel_values"] = torch.randn(
                BATCH_SIZE, 2, 3, IMAGE_SIZE, IMAGE_SIZE, generator=generator
            )
        elif with_labels and self.model_class is EquiReconForImageClassification:
            inputs["labels"] = torch.randint(0, NUM_LABELS, (BATCH_SIZE,), generator=generator)
        elif with_labels and self.model_class is EquiReconForSemanticSegmentation:
            inputs["labels"] = torch.randint(0, NUM_LABELS, (BATCH_SIZE, IMAGE_SIZE, IMAGE_SIZE), generator=generator)
        return inputs


_DINO = {"ssl_objective": "dino", "dino_out_dim": 64, "dino_hidden_dim": 32, "dino_bottleneck_dim": 16}
CASES = {
    "model": Case(EquiReconModel, AutoModel),
    # (`AutoBackbone.from_pretrained` takes Hub ids only in transformers 5.25; the class loads a directory.)
    "backbone": Case(EquiReconBackbone, EquiReconBackbone, {"out_indices": [1, 2]}),
    "pretraining-vicreg": Case(EquiReconForPreTraining, AutoModelForPreTraining),
    "pretraining-dino": Case(EquiReconForPreTraining, AutoModelForPreTraining, _DINO),  # with an EMA teacher
    "classification": Case(
        EquiReconForImageClassification, AutoModelForImageClassification, {"num_labels": NUM_LABELS}
    ),
    "segmentation-linear": Case(
        EquiReconForSemanticSegmentation,
        AutoModelForSemanticSegmentation,
        {"num_labels": NUM_LABELS, "segmentation_head": "linear"},
    ),
    "segmentation-upernet": Case(  # reads hidden states whatever the caller asks for
        EquiReconForSemanticSegmentation,
        AutoModelForSemanticSegmentation,
        {"num_labels": NUM_LABELS, "segmentation_head": "upernet"},
    ),
}
every_class = pytest.mark.parametrize("case", list(CASES.values()), ids=list(CASES))
classes_with_a_loss = pytest.mark.parametrize(
    "case", [c for c in CASES.values() if c.has_loss], ids=[name for name, c in CASES.items() if c.has_loss]
)
classes_with_labels = pytest.mark.parametrize(
    "case",
    [CASES["classification"], CASES["segmentation-upernet"]],
    ids=["classification", "segmentation-upernet"],
)


def _assert_outputs_equal(first: Any, second: Any, atol: float = 1e-5) -> None:
    """transformers' `check_equivalence`: the same nesting of tuples and tensors, equal where not NaN."""
    if isinstance(first, (tuple, list)):
        assert isinstance(second, (tuple, list)) and len(first) == len(second)
        for a, b in zip(first, second, strict=True):
            _assert_outputs_equal(a, b, atol)
    elif first is None:
        assert second is None
    else:
        torch.testing.assert_close(first.nan_to_num(0.0), second.nan_to_num(0.0), rtol=0.0, atol=atol)


# ------------------------------------------------------------------------------------------------- output flags


def _check_hidden_states(hidden_states: tuple[torch.Tensor, ...] | None) -> None:
    assert hidden_states is not None
    assert len(hidden_states) == NUM_LAYERS + 1  # embeddings, then each layer
    assert list(hidden_states[0].shape[-2:]) == [SEQ_LENGTH, HIDDEN_SIZE]


@every_class
def test_hidden_states_output(case):
    """`ModelTesterMixin.test_hidden_states_output`: asked for by keyword or by `config.output_hidden_states`; the
    keyword wins both ways."""
    inputs = case.inputs()
    with torch.no_grad():
        _check_hidden_states(case.model().eval()(**inputs, output_hidden_states=True).hidden_states)
        assert case.model().eval()(**inputs).hidden_states is None
        config = case.config()
        config.output_hidden_states = True
        model = case.model_class(config).eval()
        _check_hidden_states(model(**inputs).hidden_states)
        assert model(**inputs, output_hidden_states=False).hidden_states is None


def _check_attentions(attentions: tuple[torch.Tensor, ...] | None) -> None:
    assert attentions is not None and len(attentions) == NUM_LAYERS
    assert list(attentions[0].shape[-3:]) == [NUM_HEADS, SEQ_LENGTH, SEQ_LENGTH]


@every_class
def test_attention_outputs(case):
    """`test_attention_outputs` (eager attention): by keyword or config, keyword first; attentions are the last
    element of the tuple output, after the hidden states."""
    inputs = case.inputs()
    with torch.no_grad():
        model = case.model(attn_implementation="eager").eval()
        _check_attentions(model(**inputs, output_attentions=True).attentions)
        assert model(**inputs).attentions is None
        config = case.config(attn_implementation="eager")
        config.output_attentions = True
        model = case.model_class(config).eval()
        _check_attentions(model(**inputs).attentions)
        assert model(**inputs, output_attentions=False).attentions is None
        without_hidden = model(**inputs, output_hidden_states=False, return_dict=False)
        with_hidden = model(**inputs, output_hidden_states=True, return_dict=False)
    assert len(with_hidden) == len(without_hidden) + 1
    _check_attentions(with_hidden[-1])


@every_class
def test_return_dict_from_keyword_or_config(case):
    inputs = case.inputs()
    with torch.no_grad():
        assert isinstance(case.model().eval()(**inputs, return_dict=False), tuple)
        config = case.config(return_dict=False)
        model = case.model_class(config).eval()
        assert isinstance(model(**inputs), tuple)
        assert not isinstance(model(**inputs, return_dict=True), tuple)


@every_class
def test_model_outputs_equivalence(case):
    """`test_model_outputs_equivalence`: the tuple is the dict output without its `None` fields, for every
    combination of output flags."""
    model = case.model(attn_implementation="eager").eval()
    inputs = case.inputs()
    for flags in ({}, {"output_hidden_states": True}, {"output_attentions": True}):
        for extra in (flags, {"output_hidden_states": True, "output_attentions": True}):
            with torch.no_grad():
                as_tuple = model(**inputs, **extra, return_dict=False)
                as_dict = model(**inputs, **extra, return_dict=True)
            _assert_outputs_equal(as_tuple, as_dict.to_tuple())


@every_class
def test_determinism(case):
    model, inputs = case.model().eval(), case.inputs()
    with torch.no_grad():
        _assert_outputs_equal(model(**inputs)[0], model(**inputs)[0])


def test_attention_implementations_are_the_encoders():
    """The flags are those of transformers' Dinov2 and ViT encoders, which do the attention."""
    flags = ("_supports_sdpa", "_supports_flash_attn", "_supports_flex_attn", "_supports_attention_backend")
    for encoder in (Dinov2PreTrainedModel, ViTPreTrainedModel):
        assert {flag: getattr(EquiReconModel, flag) for flag in flags} == {
            flag: getattr(encoder, flag) for flag in flags
        }


@every_class
def test_losses_are_batch_means_for_trainer(case):
    """`forward` takes `TransformersKwargs`; Trainer must still scale the loss for gradient accumulation."""
    assert case.model_class.accepts_loss_kwargs is False


@every_class
def test_eager_attention_matches_sdpa(case):
    """`_supports_sdpa` is declared: switching the implementation reaches the encoder and changes no output."""
    model, inputs = case.model().eval(), case.inputs()
    assert model.config.backbone_config._attn_implementation == "sdpa"
    with torch.no_grad():
        sdpa = model(**inputs)[0]
        model.set_attn_implementation("eager")
        assert model.config.backbone_config._attn_implementation == "eager"
        _assert_outputs_equal(model(**inputs)[0], sdpa)


# ----------------------------------------------------------------------------------------- loading, initialisation


@every_class
def test_save_load(case, tmp_path):
    """`test_save_load`, through the Auto class the config maps: same class, nothing missing or left over, the
    same tensors and outputs."""
    model, inputs = case.model().eval(), case.inputs()
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    reloaded, info = case.auto_class.from_pretrained(tmp_path, output_loading_info=True)
    assert type(reloaded) is case.model_class
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    saved, loaded = model.state_dict(), reloaded.state_dict()
    assert saved.keys() == loaded.keys() and all(torch.equal(saved[k], loaded[k]) for k in saved)
    with torch.no_grad():
        # Same weights; oneDNN may pick another convolution algorithm for the new tensors (differences ~1e-10).
        _assert_outputs_equal(model(**inputs, return_dict=False), reloaded.eval()(**inputs, return_dict=False))


@every_class
def test_can_init_all_missing_weights(case):
    """`test_can_init_all_missing_weights`: loaded from an empty checkpoint, every tensor is set by `_init_weights`
    exactly as in a fresh model (the seed is reset before each module), none is left on the meta device."""
    original = PreTrainedModel._initialize_weights

    def seeded(self, module, *args, **kwargs):
        set_seed(0)
        original(self, module, *args, **kwargs)

    config = case.config()
    with patch.object(PreTrainedModel, "_initialize_weights", seeded):
        fresh = case.model_class(copy.deepcopy(config))
        loaded = case.model_class.from_pretrained(None, config=config, state_dict={})
    assert [name for name, p in loaded.named_parameters() if p.device.type == "meta"] == []
    fresh_state, loaded_state = fresh.state_dict(), loaded.state_dict()
    assert sorted(fresh_state) == sorted(loaded_state)
    assert [name for name in fresh_state if not torch.equal(fresh_state[name], loaded_state[name])] == []


def _config_zero_init(config: PretrainedConfig) -> PretrainedConfig:
    """transformers' `_config_zero_init`: every initialisation scale, sub-configs included, set to 1e-10."""
    config = copy.deepcopy(config)
    for key, value in list(config.__dict__.items()):
        if "_range" in key or "_std" in key or "initializer_factor" in key:
            setattr(config, key, 1e-10)
        if isinstance(value, PretrainedConfig):
            setattr(config, key, _config_zero_init(value))
    return config


@every_class
def test_initialization(case):
    """`test_initialization`: with the initialisation scales at 1e-10, every parameter is 0 or 1 on average, except
    the decoder layers that carry an `init_gain`, scaled by fan-in independently of `initializer_range` (see
    `EquiReconDecoder`)."""
    model = case.model_class(_config_zero_init(case.config()))
    fan_in_scaled = {
        f"{name}.weight" for name, module in model.named_modules() if getattr(module, "init_gain", None) is not None
    }
    assert all(name.startswith("decoders.") for name in fan_in_scaled)  # the exemption is theirs alone
    badly_initialised = [
        name
        for name, parameter in model.named_parameters()
        if parameter.requires_grad
        and name not in fan_in_scaled
        and ((parameter.mean() * 1e9).round() / 1e9).item() not in (0.0, 1.0)
    ]
    assert badly_initialised == []


@classes_with_labels
def test_load_with_mismatched_shapes(case, tmp_path):
    """Another number of labels is refused, unless `ignore_mismatched_sizes=True`: then the head is new."""
    case.model().save_pretrained(tmp_path)
    with pytest.raises(RuntimeError, match="ignore_mismatched_sizes"):
        case.model_class.from_pretrained(tmp_path, num_labels=5)
    model, info = case.model_class.from_pretrained(
        tmp_path, num_labels=5, ignore_mismatched_sizes=True, output_loading_info=True
    )
    assert info["mismatched_keys"] and model.config.num_labels == 5
    with torch.no_grad():
        assert model.eval()(**case.inputs()).logits.shape[1] == 5


# ------------------------------------------------------------------------------------------------------ training


@classes_with_a_loss
def test_training_reaches_every_trainable_parameter(case):
    """`test_training`: one backward from the loss gives every trainable parameter a gradient (DDP without
    `find_unused_parameters` raises on one that gets none)."""
    model = case.model().train()
    loss = model(**case.inputs(with_labels=True)).loss
    assert torch.isfinite(loss)
    loss.backward()
    assert [name for name, p in model.named_parameters() if p.requires_grad and p.grad is None] == []


@classes_with_a_loss
@pytest.mark.filterwarnings("ignore:`(gradient_checkpointing_enable|is_gradient_checkpointing)` is deprecated")
def test_training_gradient_checkpointing(case):
    """Gradient checkpointing gives the same loss and gradients. (The names transformers 5.x deprecates for
    `activation_checkpointing_*` are the ones every supported 5.x has.)"""
    inputs = case.inputs(with_labels=True)
    plain, checkpointed = case.model().train(), case.model().train()
    checkpointed.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    assert checkpointed.is_gradient_checkpointing
    losses = []
    for model in (plain, checkpointed):
        loss = model(**inputs).loss
        loss.backward()
        losses.append(loss.detach())
    torch.testing.assert_close(losses[0], losses[1])
    for (name, a), (_, b) in zip(plain.named_parameters(), checkpointed.named_parameters(), strict=True):
        assert (a.grad is None) == (b.grad is None), name
        if a.grad is not None:
            torch.testing.assert_close(a.grad, b.grad, atol=1e-6, rtol=1e-4, msg=name)


@every_class
def test_retain_grad_hidden_states_attentions(case):
    """The returned hidden states and attentions are part of the graph of the first output."""
    model = case.model(attn_implementation="eager").train()
    outputs = model(**case.inputs(with_labels=True), output_hidden_states=True, output_attentions=True)
    hidden_states, attentions = outputs.hidden_states[0], outputs.attentions[0]
    hidden_states.retain_grad()
    attentions.retain_grad()
    first = outputs[0][0] if isinstance(outputs[0], tuple) else outputs[0]  # a backbone's first feature map
    first.flatten()[0].backward()
    assert hidden_states.grad is not None and attentions.grad is not None


# ------------------------------------------------------------------------------------------ signature, embeddings


@every_class
def test_forward_signature_and_input_embeddings(case):
    model = case.model()
    assert list(inspect.signature(model.forward).parameters)[:1] == ["pixel_values"]
    assert model.main_input_name == "pixel_values"
    assert model.get_input_embeddings() is model.base_model.backbone.get_input_embeddings()
    assert isinstance(model.get_input_embeddings(), nn.Module)


# ---------------------------------------------------------------------------------------------------- the config


def test_config_common_properties_and_num_labels():
    """`ConfigTester.create_and_test_config_common_properties` and `..._with_num_labels`."""
    config = tiny_config(num_labels=5)
    assert (config.hidden_size, config.patch_size, config.image_size) == (32, 8, 32)
    assert config.backbone_config.num_hidden_layers == NUM_LAYERS
    assert len(config.id2label) == 5 and len(config.label2id) == 5
    config.num_labels = 3
    assert len(config.id2label) == 3 and len(config.label2id) == 3
    assert isinstance(EquiReconConfig(), EquiReconConfig)  # `check_config_can_be_init_without_params`


def test_config_common_kwargs():
    """`ConfigTester.check_config_arguments_init`: the keyword arguments every transformers config takes."""
    common = {
        "return_dict": False,
        "output_hidden_states": True,
        "dtype": "float16",
        "problem_type": "multi_label_classification",
        "id2label": {0: "cat", 1: "dog"},
        "label2id": {"cat": 0, "dog": 1},
        "architectures": ["EquiReconForImageClassification"],
    }
    config = tiny_config(**common)
    for key, value in common.items():
        actual = getattr(config, key)
        assert (str(actual).removeprefix("torch.") if key == "dtype" else actual) == value, key


def test_config_serialisation_round_trips(tmp_path):
    """`ConfigTester`: to a JSON string, a JSON file, a (sub)folder and a dict, and back, the same config."""
    inputs = {"d_patch": 24, "d_equi": 8, "decoder_kernel_size": 5, "decoder_dilation": 2, "num_intermediates": 3}
    config = tiny_config(**inputs)
    as_json = json.loads(config.to_json_string())
    assert all(as_json[key] == value for key, value in inputs.items())
    assert as_json["backbone_config"]["hidden_size"] == HIDDEN_SIZE
    config.to_json_file(tmp_path / "config.json")
    assert EquiReconConfig.from_json_file(tmp_path / "config.json").to_dict() == config.to_dict()
    config.save_pretrained(tmp_path / "sub")
    assert EquiReconConfig.from_pretrained(tmp_path, subfolder="sub").to_dict() == config.to_dict()
    from_dict = EquiReconConfig.from_dict(config.to_dict())
    assert from_dict.to_dict() == config.to_dict()
    assert type(from_dict.backbone_config) is type(config.backbone_config)


# ----------------------------------------------------------------------------------------------- not applicable

NOT_APPLICABLE = {
    "test_headmasking": "transformers 5 removed `head_mask`: no model forward, EquiRecon's included, takes one",
    "test_head_pruning": "transformers 5 removed head pruning (`prune_heads`)",
    "test_torchscript": "transformers 5 removed the `torchscript` config flag and its tracing tests",
    "test_resize_embeddings": "a vision model: pixel inputs, no token embedding table to resize",
    "test_inputs_embeds": "a vision model: `pixel_values` is the only input, there is no `inputs_embeds`",
    "test_feed_forward_chunking": "transformers 5's Dinov2 has no feed-forward chunking, and EquiRecon adds no feed-forward",
    "test_model_parallelism": "needs several accelerators; these tests run on one CPU",
    "test_problem_types": "covered for the one class with `problem_type`: "
    "test_heads.py::test_classification_loss_follows_problem_type",
}


@pytest.mark.parametrize("check", list(NOT_APPLICABLE))
def test_not_applicable(check):
    pytest.skip(NOT_APPLICABLE[check])
