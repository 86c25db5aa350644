"""The paths a GPU run takes, checked on the CPU: bf16 autocast, `torch.compile`, SDPA against eager attention,
channels-last decoders, the DataLoader defaults, a training step with no host sync in the forward, a clean exit from
the process group, and `benchmarks/gpu_check.sh --smoke`."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from model_helpers import tiny_config
from trainer_helpers import dino_config

from equirecon import EquiReconForPreTraining, process_group
from equirecon.modeling.dino_losses import masked_token_index
from equirecon.modeling.teacher import TeacherCentering
from equirecon.training import arguments as training_arguments

REPOSITORY = Path(__file__).parents[1]
needs_dynamo = pytest.mark.skipif(
    not torch._dynamo.is_dynamo_supported(), reason="torch.compile (TorchDynamo) is not supported on this Python"
)


def model_and_batch(objective: str, batch_size: int = 4) -> tuple[EquiReconForPreTraining, dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    config = tiny_config() if objective == "vicreg" else dino_config(objective)
    model = EquiReconForPreTraining(config).train()
    if model.teacher is not None:
        model.ensure_teacher_initialized()
    generator = torch.Generator().manual_seed(0)
    batch = {
        "pixel_values": torch.randn(batch_size, 3, 32, 32, generator=generator),
        "transformed_pixel_values": torch.randn(batch_size, 3, 32, 32, generator=generator),
        "intermediate_pixel_values": torch.randn(batch_size, 2, 3, 32, 32, generator=generator),
        "intermediate_mask": torch.ones(batch_size, 2, 1, 32, 32),
    }
    if config.uses_masks:
        masks = torch.rand(batch_size, 2, 16, generator=generator) < 0.3
        masks[batch_size // 2 :] = False  # as iBOT's mask probability 0.5: half the pairs unmasked
        masks[0, 0, 0] = True
        batch["bool_masked_pos"] = masks
    return model, batch


def loss_and_gradients(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, list]:
    model.zero_grad(set_to_none=True)
    loss = model(**batch).loss
    loss.backward()
    parameters = [p for p in model.parameters() if p.requires_grad]
    return loss.detach(), [p.grad.clone() if p.grad is not None else None for p in parameters]


def assert_gradients_close(actual: list, expected: list, atol: float) -> None:
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected, strict=True):
        assert (a is None) == (e is None)
        if a is not None:
            torch.testing.assert_close(a, e, atol=atol, rtol=atol)


# ------------------------------------------------------------------------------------------- precision, kernels


@pytest.mark.parametrize("objective", ["vicreg", "ibot"])
def test_a_bf16_autocast_step_gives_a_finite_loss_close_to_fp32(objective):
    model, batch = model_and_batch(objective)
    fp32, _ = loss_and_gradients(model, batch)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(**batch).loss
    assert loss.dtype == torch.float32  # the losses are computed in float32 whatever the autocast
    loss.backward()
    assert torch.isfinite(loss)
    assert loss.item() == pytest.approx(fp32.item(), rel=2e-2)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_eager_and_sdpa_attention_give_the_same_training_loss_and_gradients():
    model, batch = model_and_batch("vicreg")
    assert model.config.backbone_config._attn_implementation == "sdpa"  # the default
    sdpa_loss, sdpa_gradients = loss_and_gradients(model, batch)
    model.set_attn_implementation("eager")
    assert model.config.backbone_config._attn_implementation == "eager"
    eager_loss, eager_gradients = loss_and_gradients(model, batch)
    torch.testing.assert_close(eager_loss, sdpa_loss, atol=1e-5, rtol=1e-5)
    assert_gradients_close(eager_gradients, sdpa_gradients, atol=1e-5)


def test_channels_last_decoders_train_alike_and_save_as_usual(tmp_path):
    model, batch = model_and_batch("vicreg")
    loss, gradients = loss_and_gradients(model, batch)
    model.decoders.to(memory_format=torch.channels_last)
    convolution = model.decoders[0].convs[0].weight
    assert convolution.is_contiguous(memory_format=torch.channels_last) and not convolution.is_contiguous()
    channels_last_loss, channels_last_gradients = loss_and_gradients(model, batch)
    torch.testing.assert_close(channels_last_loss, loss, atol=1e-6, rtol=1e-6)
    assert_gradients_close(channels_last_gradients, gradients, atol=1e-6)
    model.save_pretrained(tmp_path)
    reloaded = EquiReconForPreTraining.from_pretrained(tmp_path)
    assert torch.equal(reloaded.decoders[0].convs[0].weight, convolution)


# ----------------------------------------------------------------------------------------------- torch.compile


@needs_dynamo
@pytest.mark.parametrize("objective", ["vicreg", "ibot"])
def test_a_training_step_compiles_as_one_graph(objective):
    """`fullgraph=True` fails on any graph break. The DINO family's one data-dependent step (the masked tokens'
    gather) is captured once dynamic output shapes are."""
    model, batch = model_and_batch(objective)
    eager_loss, eager_gradients = loss_and_gradients(model, batch)
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    with torch._dynamo.config.patch(capture_dynamic_output_shape_ops=objective != "vicreg"):
        compiled_loss, compiled_gradients = loss_and_gradients(compiled, batch)
    torch._dynamo.reset()
    torch.testing.assert_close(compiled_loss, eager_loss, atol=1e-5, rtol=1e-5)
    assert_gradients_close(compiled_gradients, eager_gradients, atol=1e-5)


@needs_dynamo
def test_by_default_the_only_graph_break_is_the_masked_token_gather():
    model, batch = model_and_batch("ibot")
    explanation = torch._dynamo.explain(lambda **inputs: model(**inputs).loss)(**batch)
    torch._dynamo.reset()
    assert explanation.graph_break_count > 0
    for reason in explanation.break_reasons:
        assert any(frame.name == "masked_token_index" for frame in reason.user_stack), reason.reason


# ------------------------------------------------------------------------------------ no host sync in the step


def test_masked_token_index_gathers_what_boolean_indexing_does():
    tokens = torch.randn(2, 3, 5, 7)[:, :, 1:]  # a non-contiguous slice, as the patch tokens after the prefix
    masks = torch.rand(2, 3, 4) < 0.5
    torch.testing.assert_close(tokens[masked_token_index(masks)], tokens[masks], atol=0, rtol=0)


def test_the_centre_moves_only_when_scores_were_collected():
    centering = TeacherCentering(dim=3, momentum=0.5)
    centering.step()  # nothing pending
    assert torch.equal(centering.center, torch.zeros(1, 3))
    centering.accumulate(torch.zeros(0, 3))  # a step whose micro-batches masked no token
    centering.step()
    assert torch.equal(centering.center, torch.zeros(1, 3))
    centering.accumulate(torch.tensor([[2.0, 4.0, 6.0]]))
    centering.step()
    assert torch.equal(centering.center, torch.tensor([[1.0, 2.0, 3.0]]))


def test_a_loaded_uncopied_teacher_is_copied_before_its_next_use():
    """The teacher's `initialized` flag is read from the device once, then remembered; loading a state dict must
    make the model read it again."""
    model, batch = model_and_batch("ibot")
    assert model.teacher.is_copied()
    state = {key: value.clone() for key, value in model.state_dict().items()}
    state["teacher.initialized"] = torch.tensor(False)
    state["teacher.heads.cls.last_layer.weight"] += 1.0  # a teacher that is not the student's copy
    model.load_state_dict(state)
    assert not model.teacher.is_copied()
    model(**batch)  # the forward copies the student first
    assert model.teacher.is_copied()
    assert torch.equal(model.teacher.heads.cls.last_layer.weight, model.ssl_objective.heads.cls.last_layer.weight)


# ---------------------------------------------------------------------------------------- data loading, processes


def test_the_default_dataloader_workers_follow_the_device_and_the_cores(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert training_arguments.default_dataloader_workers() == 0
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    assert training_arguments.default_dataloader_workers() == 15  # one core stays with the training process
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert training_arguments.default_dataloader_workers() == 3
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "32")
    assert training_arguments.default_dataloader_workers() == 1
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(64)), raising=False)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    assert training_arguments.default_dataloader_workers() == 16
    monkeypatch.undo()
    args = training_arguments.EquiReconTrainingArguments(output_dir=str(tmp_path), use_cpu=True)
    if not torch.cuda.is_available():
        assert args.dataloader_num_workers == 0 and not args.dataloader_pin_memory


def test_a_finished_run_leaves_the_process_group_at_exit(monkeypatch, tmp_path):
    registered = []
    monkeypatch.setattr(process_group.atexit, "register", registered.append)
    monkeypatch.setattr(process_group, "_registered", False)

    class Trainer:  # what the exit handler touches of a transformers Trainer
        model = torch.nn.Linear(2, 2)
        model_wrapped = torch.nn.Sequential(model)
        accelerator = type("Accelerator", (), {"free_memory": lambda self: None})()

    trainer = Trainer()
    process_group.leave_process_group_at_exit(trainer)
    assert registered == []  # no group, nothing to leave
    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        process_group.leave_process_group_at_exit(trainer)
        process_group.leave_process_group_at_exit(trainer)
        assert registered == [process_group._leave_process_group]  # once per process
        registered[0]()
        assert not dist.is_initialized()
        assert trainer.model_wrapped is trainer.model  # the wrapper's hold on the group was released
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


# ------------------------------------------------------------------------------------------------- gpu_check


def test_gpu_check_smoke_runs_every_section_on_the_cpu():
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPOSITORY / "src")}
    result = subprocess.run(
        ["bash", str(REPOSITORY / "benchmarks" / "gpu_check.sh"), "--smoke"],
        env={**env, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = {line.split("|")[1].strip(): line for line in result.stdout.splitlines() if line.startswith("| ")}
    for preset in ("vicreg-vit-s16", "ibot-vit-s16", "dinov2-vit-l16"):
        assert preset in rows and "**" in rows[preset]  # a ratio for every preset
    assert {"decoders channels-last", "torch.compile(aot_eager)", "EquiReconTrainer"} <= set(rows)
    assert "pairs/s against the step's need" in result.stdout
