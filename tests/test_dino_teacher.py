"""The EMA teacher of the DINO family: centring, Sinkhorn-Knopp and the schedules against their definitions, and the
teacher in training (gradients, EMA, accumulation, resume), saving, exporting and under DDP."""

import json
import math

import pytest
import torch
import torch.nn.functional as F
from dino_helpers import pretraining_batch
from distributed_helpers import run_two_processes
from model_helpers import tiny_config
from trainer_helpers import StopAt, dino_config, dino_trainer
from transformers import TrainerCallback, set_seed

from equirecon import EquiReconForPreTraining, EquiReconModel
from equirecon.modeling.teacher import (
    TeacherCentering,
    TeacherSchedules,
    resolve_steps,
    sinkhorn_knopp,
    teacher_momentum_schedule,
    teacher_temperature_schedule,
)

# ---------------------------------------------------------------------------------------------- centres and schedules


def test_centering_follows_its_definition():
    centering = TeacherCentering(3, momentum=0.9)
    centering.accumulate(torch.tensor([[1.0, 2.0, 3.0], [3.0, 2.0, 1.0]]))
    assert torch.count_nonzero(centering.center) == 0  # nothing moves before the step
    centering.step()
    assert torch.allclose(centering.center, torch.tensor([[0.2, 0.2, 0.2]]))
    centering.accumulate(torch.tensor([[0.0, 0.0, 10.0]]))
    centering.step()
    assert torch.allclose(centering.center, torch.tensor([[0.18, 0.18, 1.18]]))
    centering.step()  # a step without scores leaves the centre alone
    assert torch.allclose(centering.center, torch.tensor([[0.18, 0.18, 1.18]]))
    logits = torch.tensor([[1.0, 0.0, 2.0]])
    expected = F.softmax((logits - centering.center) / 0.04, dim=-1)
    assert torch.allclose(centering(logits, 0.04), expected)


def test_a_step_of_micro_batches_moves_the_centre_as_its_whole_batch_would():
    scores = torch.randn(10, 4, generator=torch.Generator().manual_seed(0))
    whole, micro = TeacherCentering(4, momentum=0.9), TeacherCentering(4, momentum=0.9)
    whole.accumulate(scores)
    for part in scores.split([3, 3, 4]):  # unequal micro-batches weigh by their sizes
        micro.accumulate(part)
    whole.step(), micro.step()
    assert torch.allclose(micro.center, whole.center, atol=1e-6)
    assert torch.allclose(whole.center, 0.1 * scores.mean(dim=0, keepdim=True), atol=1e-6)


def test_centres_collect_in_training_only_and_move_with_the_teacher_update():
    model = EquiReconForPreTraining(dino_config())
    center = model.ssl_objective.cls_centering.center
    model.eval()
    with torch.no_grad():
        model(**pretraining_batch())
    model.update_teacher(model.config.teacher_momentum)
    assert torch.count_nonzero(center) == 0
    model.train()
    model(**pretraining_batch())
    assert torch.count_nonzero(center) == 0  # collected, not applied: every micro-batch of a step sees one centre
    model.update_teacher(model.config.teacher_momentum)
    assert torch.count_nonzero(center) > 0


def test_gradient_accumulation_centres_as_one_batch(tmp_path):
    """Two micro-batches of 2 then one optimizer step move iBOT's CLS and patch centres exactly as one batch of 4."""
    set_seed(0)
    whole = EquiReconForPreTraining(dino_config("ibot"))
    micro = EquiReconForPreTraining(dino_config("ibot"))
    micro.load_state_dict(whole.state_dict())
    inputs = pretraining_batch(masked=True)
    with torch.no_grad():
        whole(**inputs)
        for half in (slice(0, 2), slice(2, 4)):
            micro(**{key: value[half] for key, value in inputs.items()})
    whole.update_teacher(whole.config.teacher_momentum), micro.update_teacher(micro.config.teacher_momentum)
    for name in ("cls_centering", "patch_centering"):
        expected = getattr(whole.ssl_objective, name).center
        assert torch.count_nonzero(expected) > 0
        assert torch.allclose(getattr(micro.ssl_objective, name).center, expected, atol=1e-6), name


def test_trainer_under_accumulation_centres_as_one_batch(tmp_path):
    """Through Trainer: one optimizer step over two micro-batches of 2 gives iBOT's centres of one batch of 4."""
    centres = []
    for batch_size, accumulation in ((4, 1), (2, 2)):
        trainer = dino_trainer(
            tmp_path / str(accumulation),
            "ibot",
            max_steps=1,
            per_device_train_batch_size=batch_size,
            gradient_accumulation_steps=accumulation,
            save_strategy="no",
        )
        trainer.train()
        objective = trainer.model.ssl_objective
        centres.append([objective.cls_centering.center.clone(), objective.patch_centering.center.clone()])
    for whole, micro in zip(*centres, strict=True):
        assert torch.count_nonzero(whole) > 0
        assert torch.allclose(micro, whole, atol=1e-6)


def _sinkhorn_reference(logits, temperature, iterations):
    """The algorithm written out: alternately give every prototype and every sample equal total weight."""
    q = torch.exp(logits.double() / temperature).t()
    num_prototypes, num_samples = q.shape
    q = q / q.sum()
    for _ in range(iterations):
        q = q / q.sum(dim=1, keepdim=True) / num_prototypes
        q = q / q.sum(dim=0, keepdim=True) / num_samples
    return (q * num_samples).t()


def test_sinkhorn_knopp_normalises_rows_and_equalises_prototypes():
    logits = torch.randn(64, 16, generator=torch.Generator().manual_seed(2)) * 3
    assignments = sinkhorn_knopp(logits, temperature=0.5, num_iterations=3)
    assert torch.allclose(assignments.double(), _sinkhorn_reference(logits, 0.5, 3), atol=1e-6)
    assert torch.allclose(assignments.sum(dim=1), torch.ones(64), atol=1e-5)  # each sample: a distribution
    # Prototype totals move towards N/K = 4 with the iterations, from softmax's uneven use.
    softmax_spread = (F.softmax(logits / 0.5, dim=1).sum(dim=0) - 4).abs().max()
    spread = (assignments.sum(dim=0) - 4).abs().max()
    converged = (sinkhorn_knopp(logits, 0.5, num_iterations=200).sum(dim=0) - 4).abs().max()
    assert converged < 1e-3 < spread < softmax_spread


def test_sinkhorn_knopp_survives_scores_whose_exponential_overflows():
    logits = torch.tensor([[100.0, 0.0], [0.0, 100.0]])
    assignments = sinkhorn_knopp(logits, temperature=0.04)
    assert torch.isfinite(assignments).all()
    assert torch.allclose(assignments, torch.eye(2), atol=1e-6)


def test_schedules_follow_their_definitions():
    assert teacher_momentum_schedule(0, 100, 0.996) == pytest.approx(0.996)
    assert teacher_momentum_schedule(50, 100, 0.996) == pytest.approx(0.998)
    assert teacher_momentum_schedule(25, 100, 0.996) == pytest.approx(1 - 0.004 * (1 + math.cos(math.pi / 4)) / 2)
    assert teacher_momentum_schedule(100, 100, 0.996) == 1.0
    values = [teacher_momentum_schedule(step, 100, 0.996) for step in range(100)]
    assert values == sorted(values)
    # Teacher temperature: linear over the warm-up, both ends included, then constant (DINOv2's linspace).
    assert [round(teacher_temperature_schedule(s, 4, 0.04, 0.07), 6) for s in range(6)] == [
        0.04,
        0.05,
        0.06,
        0.07,
        0.07,
        0.07,
    ]
    assert teacher_temperature_schedule(0, 0, 0.04, 0.07) == 0.07
    assert (resolve_steps(0.3, 100), resolve_steps(0.3, 7), resolve_steps(5, 100)) == (30, 3, 5)


def test_the_objective_uses_the_scheduled_teacher_temperature():
    """The training loop computes the schedules from the config (`TeacherSchedules`) and hands the model their
    values, as dinov2's does; before it sets one, a warm-up given as a fraction of the run is over."""
    model = EquiReconForPreTraining(dino_config(dino_warmup_teacher_temperature_steps=0.5, teacher_momentum=0.9))
    assert model.ssl_objective.teacher_temperature() == pytest.approx(0.07)
    schedules = TeacherSchedules.from_config(model.config, total_steps=10)
    for step, temperature in ((0, 0.04), (2, 0.055), (7, 0.07)):
        model.set_teacher_temperature(schedules.temperature(step))
        assert model.ssl_objective.teacher_temperature() == pytest.approx(temperature)
    assert schedules.momentum(0) == pytest.approx(0.9) and schedules.momentum(10) == 1.0
    assert schedules.freezes_last_layer(0) and not schedules.freezes_last_layer(1)  # 0.01 of 10 steps: one step


# ---------------------------------------------------------------------------------------------- training


class StudentSnapshots(TrainerCallback):
    """The student's weights before training and after every optimizer step, and the EMA updates seen."""

    def __init__(self, model):
        self.model = model
        self.snapshots = []
        self.updates = 0
        update = model.update_teacher

        def counted(*args, **kwargs):
            self.updates += 1
            return update(*args, **kwargs)

        model.update_teacher = counted

    def _student(self):
        parts = self.model._student_parts()
        return [{k: v.detach().clone() for k, v in part.state_dict().items()} for part in parts]

    def on_train_begin(self, args, state, control, **kwargs):
        self.snapshots.append(self._student())

    def on_step_end(self, args, state, control, **kwargs):
        self.snapshots.append(self._student())
        teacher = self.model.teacher
        assert not any(p.requires_grad or p.grad is not None for p in teacher.parameters())


def _expected_teacher(snapshots, total_steps, base_momentum):
    teacher = [{k: v.clone() for k, v in part.items()} for part in snapshots[0]]
    for step, student in enumerate(snapshots[1:]):
        m = teacher_momentum_schedule(step, total_steps, base_momentum)
        for teacher_part, student_part in zip(teacher, student, strict=True):
            for name, value in teacher_part.items():
                if value.is_floating_point():
                    teacher_part[name] = m * value + (1 - m) * student_part[name]
    return teacher


@pytest.mark.parametrize("accumulation", [1, 2])
def test_the_teacher_is_the_ema_of_the_student_once_per_optimizer_step(tmp_path, accumulation):
    # A low base momentum makes every update visible.
    trainer = dino_trainer(
        tmp_path, model_overrides={"teacher_momentum": 0.5}, max_steps=3, gradient_accumulation_steps=accumulation
    )
    model = trainer.model
    snapshots = StudentSnapshots(model)
    trainer.add_callback(snapshots)
    trainer.train()
    assert snapshots.updates == 3
    assert all(
        id(p) not in {id(q) for g in trainer.optimizer.param_groups for q in g["params"]}
        for p in model.teacher.parameters()
    )
    expected = _expected_teacher(snapshots.snapshots, 3, 0.5)
    for teacher_part, expected_part in zip(model._teacher_parts(), expected, strict=True):
        for name, value in teacher_part.state_dict().items():
            assert torch.allclose(value, expected_part[name], atol=1e-6), name
    # The student moved, and the teacher lags behind it.
    student = dict(model.equirecon.named_parameters())
    teacher = dict(model.teacher.equirecon.named_parameters())
    name = "projection.weight"
    assert not torch.allclose(snapshots.snapshots[0][0][name], student[name])
    assert not torch.allclose(teacher[name], student[name])


def test_the_last_layers_are_frozen_at_the_start(tmp_path):
    model = EquiReconForPreTraining(dino_config(dino_freeze_last_layer_steps=2, dino_norm_last_layer=False))
    model(**pretraining_batch()).loss.backward()
    last = model.ssl_objective.heads.cls.last_layer
    assert last.weight.grad is not None and last.weight_g.grad is not None
    schedules = TeacherSchedules.from_config(model.config, total_steps=10)
    assert schedules.freezes_last_layer(1) and not schedules.freezes_last_layer(2)
    model.cancel_last_layer_gradients()
    assert last.weight.grad is None and last.weight_g.grad is None
    assert model.ssl_objective.heads.cls.mlp[0].weight.grad is not None


@pytest.mark.parametrize("accumulation", [1, 2])
def test_resuming_mid_schedule_gives_the_same_teacher_and_losses(tmp_path, accumulation):
    overrides = {"teacher_momentum": 0.9, "dino_warmup_teacher_temperature_steps": 4}
    arguments = {"max_steps": 6, "gradient_accumulation_steps": accumulation}
    uninterrupted = dino_trainer(tmp_path / "a", "ibot", overrides, **arguments)
    uninterrupted.train()

    interrupted = dino_trainer(tmp_path / "b", "ibot", overrides, save_steps=3, **arguments)
    interrupted.add_callback(StopAt(3))
    interrupted.train()
    assert interrupted.state.global_step == 3
    resumed = dino_trainer(tmp_path / "b", "ibot", overrides, save_steps=3, **arguments)
    resumed.train(resume_from_checkpoint=str(tmp_path / "b" / "checkpoint-3"))

    expected = {entry["step"]: entry for entry in uninterrupted.state.log_history if "loss" in entry}
    actual = {entry["step"]: entry for entry in resumed.state.log_history if "loss" in entry}
    for step in (4, 5, 6):
        # A step whose pairs are all masked has no reconstruction loss to log: both runs must agree on that too.
        keys = [key for key in ("loss", "ssl_loss", "reconstruction_loss") if key in expected[step]]
        assert keys == [key for key in ("loss", "ssl_loss", "reconstruction_loss") if key in actual[step]]
        for key in keys:
            assert actual[step][key] == pytest.approx(expected[step][key], rel=1e-4), (step, key)
    reference = uninterrupted.model.teacher.state_dict()
    for name, value in resumed.model.teacher.state_dict().items():
        assert torch.allclose(value.float(), reference[name].float(), atol=1e-5), name
    for name in ("cls_centering.center", "patch_centering.center"):
        assert torch.allclose(
            resumed.model.ssl_objective.state_dict()[name], uninterrupted.model.ssl_objective.state_dict()[name]
        )


# ---------------------------------------------------------------------------------------------- saving


def _trained_model(objective="ibot"):
    model = EquiReconForPreTraining(dino_config(objective, teacher_momentum=0.5))
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    for step in range(2):
        model(**pretraining_batch(masked=objective != "dino", seed=step)).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        model.update_teacher(teacher_momentum_schedule(step, 10, 0.5))
    return model


def test_a_fresh_teacher_starts_as_a_copy_of_the_student():
    model = EquiReconForPreTraining(dino_config())
    assert not model.teacher.initialized
    model(**pretraining_batch())
    assert model.teacher.initialized
    student = model.equirecon.state_dict()
    for name, value in model.teacher.equirecon.state_dict().items():
        assert torch.equal(value, student[name]), name


def test_save_and_load_round_trip_keeps_student_teacher_and_centres(tmp_path):
    model = _trained_model().eval()
    model.save_pretrained(tmp_path)
    loaded = EquiReconForPreTraining.from_pretrained(tmp_path).eval()
    reference = model.state_dict()
    for name, value in loaded.state_dict().items():
        assert torch.equal(value, reference[name]), name
    assert loaded.teacher.initialized
    assert not any(p.requires_grad for p in loaded.teacher.parameters())
    assert torch.count_nonzero(loaded.ssl_objective.patch_centering.center) > 0
    with torch.no_grad():
        assert loaded(**pretraining_batch(masked=True)).loss.item() == pytest.approx(
            model(**pretraining_batch(masked=True)).loss.item()
        )
    # The encoder loaded from the pretraining directory is the student's.
    encoder = EquiReconModel.from_pretrained(tmp_path)
    for name, value in encoder.state_dict().items():
        assert torch.equal(value, model.equirecon.state_dict()[name]), name


def test_export_teacher_gives_the_teacher_as_an_equirecon_model(tmp_path):
    model = _trained_model("dino").eval()
    teacher = model.export_teacher()
    assert isinstance(teacher, EquiReconModel) and not teacher.training
    pixels = pretraining_batch()["pixel_values"]
    with torch.no_grad():
        expected = model.teacher.equirecon(pixels).invariant_embeds
        assert torch.equal(teacher(pixels).invariant_embeds, expected)
        assert not torch.allclose(model.equirecon(pixels).invariant_embeds, expected)
    teacher.save_pretrained(tmp_path)
    reloaded = EquiReconModel.from_pretrained(tmp_path)
    with torch.no_grad():
        assert torch.allclose(reloaded(pixels).invariant_embeds, expected)
    with pytest.raises(ValueError, match="has no EMA teacher"):
        EquiReconForPreTraining(tiny_config()).export_teacher()


def test_two_processes_keep_one_teacher_without_syncing_its_gradients(tmp_path):
    # DDP: the student is synchronised, the teacher (no gradients) is left out of the reducer yet stays identical on
    # every rank, and the centres average over both ranks' batches.
    run_two_processes("distributed_dino.py", tmp_path, port_base=29700)
    ranks = [json.loads((tmp_path / f"dino-rank{rank}.json").read_text()) for rank in range(2)]
    assert ranks[0]["world_size"] == 2
    assert not ranks[0]["teacher_requires_grad"]
    for key in ("student", "teacher", "centres"):
        assert ranks[0][key] == pytest.approx(ranks[1][key], rel=1e-5), key
    assert any(value != 0 for value in ranks[0]["centres"].values())


def test_pretrain_command_trains_an_ibot_host_and_saves_the_student(tmp_path):
    from transformers import AutoModel, AutoModelForPreTraining

    from equirecon.commands import main as cli_main

    arguments = ["pretrain", "--output_dir", str(tmp_path), "--preset", "tiny-ibot", "--max_steps", "2"]
    arguments += ["--per_device_train_batch_size", "4", "--logging_steps", "1", "--max_eval_samples", "4"]
    arguments += ["--local_crops_number", "2"]  # multi-crop: 24² local crops of the 64² tiny views
    assert cli_main([*arguments, "--equivariance_benchmark", "False", "--disable_tqdm", "True"]) == 0
    log = json.loads((tmp_path / "training_log.json").read_text())
    assert [entry["step"] for entry in log if "ssl_loss" in entry] == [1, 2]
    pretraining = AutoModelForPreTraining.from_pretrained(tmp_path, trust_remote_code=True)
    assert pretraining.teacher.initialized and pretraining.config.ssl_objective == "ibot"
    student = AutoModel.from_pretrained(tmp_path, trust_remote_code=True)
    assert isinstance(student, EquiReconModel)
    reference = pretraining.equirecon.state_dict()
    assert all(torch.equal(value, reference[name]) for name, value in student.state_dict().items())
    assert "the CLS and masked patch tokens" in (tmp_path / "README.md").read_text()
