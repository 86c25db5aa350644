"""Run by tests/test_fsdp.py under `torch.distributed.run --nproc_per_node=2`: a tiny iBOT + reconstruction host
sharded with FSDP2 on CPU (gloo) with the plugin that `accelerate launch --config_file CONFIG` gives its processes.

First by accelerate's own `fsdp2_prepare_model`, then two optimizer steps through `EquiReconTrainer.compute_loss` and
the `TeacherCallback` events; then by `Trainer.train()` itself. Trainer alone would not shard on CPU: accelerate turns
FSDP on only for accelerator devices (`AcceleratorState` keeps a CPU run `MULTI_CPU`, i.e. DDP), so the second run
switches the accelerator's state to FSDP after the Trainer is built. Each rank records what it saw in
`fsdp-rank{rank}.json`."""

import json
import os
import sys
import types
from pathlib import Path

import torch
import torch.distributed as dist
from accelerate.commands.launch import _validate_launch_command, launch_command_parser
from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin
from accelerate.utils.fsdp_utils import fsdp2_prepare_model
from accelerate.utils.launch import prepare_multi_gpu_env
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.fsdp import FSDPModule, FullyShardedDataParallel
from trainer_helpers import dino_config, dino_trainer, pair_stream
from transformers import TrainerCallback, TrainerControl, TrainerState

from equirecon import EquiReconForPreTraining
from equirecon.modeling.teacher import teacher_momentum_schedule
from equirecon.training.data import collate_transform_pairs
from equirecon.training.masking import BlockMaskGenerator
from equirecon.training.teacher import TeacherCallback

#: Student state-dict prefixes and the teacher's copies of them (`EquiReconForPreTraining._student_parts`).
MIRRORED = {"equirecon.": "teacher.equirecon.", "ssl_objective.heads.": "teacher.heads."}
STEPS = 2
MOMENTUM = 0.5  # low, so that every update shows


def launcher_plugin(config_file: str) -> tuple[FullyShardedDataParallelPlugin, str]:
    """The FSDP plugin and mixed precision of `accelerate launch --config_file config_file`, which hands them to its
    processes as environment variables."""
    arguments = launch_command_parser().parse_args(["--config_file", config_file, "--num_processes", "2", "x.py"])
    environment = prepare_multi_gpu_env(_validate_launch_command(arguments)[0])
    os.environ.update({key: value for key, value in environment.items() if key.startswith("FSDP_")})
    assert environment["ACCELERATE_USE_FSDP"] == "true"
    plugin = FullyShardedDataParallelPlugin()
    mixed_precision = environment["ACCELERATE_MIXED_PRECISION"]
    plugin.set_mixed_precision(mixed_precision)  # as AcceleratorState does
    return plugin, mixed_precision


def shard(model, plugin, mixed_precision):
    accelerator = types.SimpleNamespace(
        state=types.SimpleNamespace(fsdp_plugin=plugin),
        torch_device_mesh=None,
        mixed_precision=mixed_precision,
        is_main_process=dist.get_rank() == 0,
        device=torch.device("cpu"),
    )
    return fsdp2_prepare_model(accelerator, model)


def gathered_full(model) -> dict[str, torch.Tensor]:
    """The full (unsharded) state dict, on every rank."""
    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True))


def student_and_teacher(state: dict[str, torch.Tensor]) -> tuple[dict, dict]:
    student, teacher = {}, {}
    for key, value in state.items():
        for student_prefix, teacher_prefix in MIRRORED.items():
            if key.startswith(teacher_prefix):
                teacher[student_prefix + key[len(teacher_prefix) :]] = value
            elif key.startswith(student_prefix):
                student[key] = value
    return student, teacher


class GatheredStates(TrainerCallback):
    """The gathered student and teacher when training begins (after `TeacherCallback`, added before this one) and
    after each optimizer step."""

    def __init__(self):
        self.students, self.teachers, self.sharded = [], [], None

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.sharded = isinstance(model, FSDPModule)
        self.on_step_end(args, state, control, model=model)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        student, teacher = student_and_teacher(gathered_full(model))
        self.students.append(student)
        self.teachers.append(teacher)


def ema(teacher: dict, students: list[dict]) -> dict:
    """The teacher after one EMA update per optimizer step from the given students."""
    teacher = {key: value.clone() for key, value in teacher.items()}
    for step, student in enumerate(students):
        momentum = teacher_momentum_schedule(step, STEPS, MOMENTUM)
        for key, value in teacher.items():
            if value.is_floating_point():
                teacher[key] = momentum * value + (1 - momentum) * student[key]
    return teacher


def max_difference(left: dict, right: dict) -> float:
    assert left.keys() == right.keys(), sorted(set(left) ^ set(right))
    return max(float((left[k].float() - right[k].float()).abs().max()) for k in left if left[k].is_floating_point())


def main(output_dir: str, config_file: str) -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    plugin, mixed_precision = launcher_plugin(config_file)
    trainer = dino_trainer(output_dir, "ibot", {"teacher_momentum": MOMENTUM}, max_steps=STEPS)
    config = trainer.model.config
    model = shard(trainer.model, plugin, mixed_precision)
    units = sorted(name for name, module in model.named_modules() if isinstance(module, FSDPModule))
    layer = "backbone.encoder.layer.0.attention.q_proj.weight"
    student_shard = model.get_parameter(f"equirecon.{layer}")
    teacher_shard = model.get_parameter(f"teacher.equirecon.{layer}")

    stream = iter(pair_stream(mask_generator=BlockMaskGenerator.from_config(config), num_local_crops=2, local_size=16))
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-3)
    callback, state, control = TeacherCallback(), TrainerState(max_steps=STEPS), TrainerControl()
    events = {"model": model}

    callback.on_train_begin(trainer.args, state, control, **events)
    student, teacher = student_and_teacher(gathered_full(model))
    copied = max_difference(student, teacher)
    initial_teacher, students, losses = teacher, [], []
    for step in range(STEPS):
        state.global_step = step
        callback.on_step_begin(trainer.args, state, control, **events)
        batch = collate_transform_pairs([next(stream) for _ in range(4)])
        loss = trainer.compute_loss(model, batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 3.0)
        callback.on_pre_optimizer_step(trainer.args, state, control, **events)
        optimizer.step()
        optimizer.zero_grad()
        state.global_step = step + 1
        callback.on_step_end(trainer.args, state, control, **events)
        losses.append(float(loss))
        students.append(student_and_teacher(gathered_full(model))[0])
    expected = ema(initial_teacher, students)
    final_state = gathered_full(model)
    student, teacher = student_and_teacher(final_state)

    # Evaluation on the sharded model: the controls call the decoders outside the forward.
    model.eval()
    with torch.no_grad():
        trainer.compute_loss(model, collate_transform_pairs([next(stream) for _ in range(4)]))
    evaluation = trainer._pop_component_means("eval")
    model.train()

    # What Trainer.save_model does under FSDP with FULL_STATE_DICT: accelerate gathers to rank 0, which saves.
    saved = get_model_state_dict(
        model, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True, cpu_offload=True)
    )
    reload_difference = None
    if rank == 0:
        model.save_pretrained(Path(output_dir, "saved"), state_dict=saved)
        reloaded = EquiReconForPreTraining.from_pretrained(Path(output_dir, "saved"))
        reload_difference = max_difference(dict(reloaded.state_dict()), dict(final_state))

    # A model sharded before its teacher was copied refuses to copy inside the forward.
    fresh = shard(EquiReconForPreTraining(dino_config("ibot")), plugin, mixed_precision)
    try:
        trainer.compute_loss(fresh, collate_transform_pairs([next(stream) for _ in range(4)]))
        refusal = None
    except RuntimeError as error:
        refusal = str(error)

    # FSDP1 is refused before training starts.
    fsdp1 = FullyShardedDataParallel(
        EquiReconForPreTraining(dino_config("ibot")), device_id=torch.device("cpu"), use_orig_params=True
    )
    try:
        callback.on_train_begin(trainer.args, TrainerState(max_steps=STEPS), control, model=fsdp1)
        fsdp1_refusal = None
    except ValueError as error:
        fsdp1_refusal = str(error)

    # Trainer's own loop (callback order, gradient accumulation, accelerate's clipping) on the same sharding.
    trainer = dino_trainer(
        output_dir,
        "ibot",
        {"teacher_momentum": MOMENTUM},
        max_steps=STEPS,
        gradient_accumulation_steps=2,
        save_strategy="no",
    )
    trainer.accelerator.state.fsdp_plugin = plugin
    trainer.accelerator.state.distributed_type = DistributedType.FSDP
    trainer.is_fsdp_enabled = True
    states = GatheredStates()
    trainer.add_callback(states)
    trainer.train()
    trainer_losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]

    record = {
        "world_size": dist.get_world_size(),
        "units": units,
        "shard_rows": [student_shard.to_local().shape[0], teacher_shard.to_local().shape[0], student_shard.shape[0]],
        "shard_placements": [str(student_shard.placements), str(teacher_shard.placements)],
        "teacher_frozen": not any(p.requires_grad for p in model.teacher.parameters()),
        "losses": losses,
        "copied_difference": copied,
        "ema_difference": max_difference(expected, teacher),
        "student_teacher_difference": max_difference(student, teacher),
        "reload_difference": reload_difference,
        "fingerprint": {key: round(float(value.float().sum()), 5) for key, value in final_state.items()},
        "evaluation": evaluation,
        "refusal": refusal,
        "fsdp1_refusal": fsdp1_refusal,
        "trainer_sharded": states.sharded,
        "trainer_losses": trainer_losses,
        "trainer_copied_difference": max_difference(states.students[0], states.teachers[0]),
        "trainer_ema_difference": max_difference(ema(states.teachers[0], states.students[1:]), states.teachers[-1]),
        "trainer_student_teacher_difference": max_difference(states.students[-1], states.teachers[-1]),
    }
    Path(output_dir, f"fsdp-rank{rank}.json").write_text(json.dumps(record))
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
