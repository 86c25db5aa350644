"""Every command: one-line errors (exit 2) before anything is loaded or written, the output-directory rules, Ctrl-C
(exit 130, resumable), a plain image folder without a validation split, help that puts the command first, and
`python -m equirecon`."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from trainer_helpers import FAST_PRETRAIN

from equirecon.commands import main as cli_main


def _run(argv, capsys):
    status = cli_main([str(a) for a in argv])
    return status, capsys.readouterr().err


def _photo_folder(path: Path, count: int = 4) -> Path:
    path.mkdir()
    rng = np.random.default_rng(0)
    for index in range(count):
        Image.fromarray(rng.integers(0, 255, (72, 80, 3), dtype=np.uint8)).save(path / f"photo_{index}.png")
    return path


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["pretrain", "--max_steps", "0"], "--max_steps must be >= 1"),
        (["pretrain", "--max_steps", "-3"], "--max_steps must be >= 1"),
        (["pretrain", "--resume_from_checkpoint", "last"], "no checkpoint-* in"),
        (["finetune", "classification", "--model", "{tmp}/missing", "--max_steps", "-5"], "--max_steps must be"),
        (["finetune", "classification", "--model", "{tmp}/missing"], "--model {tmp}/missing: no such directory"),
        (["finetune", "classification", "--model", "no/such/dir"], "--model no/such/dir: no such directory"),
        (["evaluate", "knn", "--model", "{tmp}/missing"], "--model {tmp}/missing: no such directory"),
        (["pretrain", "--config_overrides", "d_pach=64"], "--config_overrides sets d_pach, which is neither"),
        (["model-card"], "name the model directory"),
        (["model-card", "{tmp}"], "has no EquiRecon config.json"),
    ],
)
def test_bad_arguments_are_one_line_and_exit_2_before_anything_is_written(argv, message, tmp_path, capsys):
    output = tmp_path / "out"
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    if argv[0] in ("pretrain", "finetune"):
        argv += ["--output_dir", str(output)]
    status, err = _run(argv, capsys)
    assert status == 2, err
    assert message.replace("{tmp}", str(tmp_path)) in err and err.count("\n") == 1, err
    assert "Traceback" not in err and not output.exists()


def test_validation_split_none_is_no_evaluation():
    from equirecon.commands.pretrain import parse_arguments

    _, data_args, _, _ = parse_arguments(["--validation_split", "None"])
    assert data_args.validation_split is None


def test_an_existing_run_is_refused_unless_resumed_or_overwritten(tmp_path, capsys):
    output = tmp_path / "out"
    output.mkdir()
    (output / "model.safetensors").write_text("an earlier run")
    (output / "equivariance_results.json").write_text("{}")
    status, err = _run(["pretrain", "--output_dir", output, *FAST_PRETRAIN], capsys)
    assert status == 2 and "is not empty" in err and "--overwrite_output_dir" in err, err
    assert (output / "model.safetensors").read_text() == "an earlier run"
    status, err = _run(["pretrain", "--output_dir", output, "--resume_from_checkpoint", "last"], capsys)
    assert status == 2 and "no checkpoint-* in" in err, err
    (output / "checkpoint-3").mkdir()
    (output / "checkpoint-3" / "trainer_state.json").write_text("{}")
    (output / ".equirecon-run.json").write_text(json.dumps({"command": "finetune"}))
    status, err = _run(["pretrain", "--output_dir", output, "--resume_from_checkpoint", "last"], capsys)
    assert status == 2 and "holds a run of `equirecon finetune`" in err, err


def test_a_plain_image_folder_without_validation_split_trains_and_writes_its_card(tmp_path, capsys):
    folder = _photo_folder(tmp_path / "photos")
    output = tmp_path / "out"
    (output / "checkpoint-100").mkdir(parents=True)  # an earlier run's leftovers, replaced on request
    (output / "equivariance_results.json").write_text(json.dumps({"r2": {"rotation": 0.9}}))
    (output / "reconstructions.png").write_bytes(b"an earlier run's picture")
    argv = ["pretrain", "--dataset", folder, "--output_dir", output, "--overwrite_output_dir", "True"]
    status, err = _run([*argv, *FAST_PRETRAIN], capsys)
    assert status == 0, err
    card = (output / "README.md").read_text()
    assert "2 optimizer steps" in card and "Not evaluated" in card
    assert not (output / "equivariance_results.json").exists()  # nothing of the earlier run in this card
    assert "No reconstruction picture: it is drawn from held-out pairs" in card
    assert "](reconstructions.png)" not in card and not (output / "reconstructions.png").exists()
    assert "![Loss curves](loss_curves.png)" in card and (output / "loss_curves.png").is_file()
    assert not list(output.glob("checkpoint-*"))  # a finished run keeps the model, not the optimizer state
    run = json.loads((output / "equirecon_run.json").read_text())
    assert run["data_arguments"]["validation_split"] is None


def test_ctrl_c_exits_130_with_the_resume_command_and_the_run_resumes(tmp_path):
    output = tmp_path / "out"
    argv = ["pretrain", "--output_dir", str(output), "--max_steps", "500", "--save_steps", "1"]
    argv += ["--per_device_train_batch_size", "2", "--equivariance_benchmark", "False", "--max_eval_samples", "4"]
    code = "import sys; from equirecon.commands import main; sys.exit(main(sys.argv[1:]))"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(
        [sys.executable, "-c", code, *argv],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # A non-interactive shell starts background jobs (CI's, for one) with SIGINT ignored, and a child inherits
        # that, so Python would not even install its Ctrl-C handler: give the run the disposition a terminal gives.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.time() + 300
    # Any complete checkpoint will do: with --save_steps 1 older ones are rotated away faster than a fixed name
    # can be polled on a quiet machine.
    while not any(output.glob("checkpoint-*/trainer_state.json")) and time.time() < deadline:
        assert process.poll() is None, "the run ended before its first checkpoint could be interrupted"
        time.sleep(0.1)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err[-3000:]
    assert "Traceback" not in err and "Resume with:" in err, err[-3000:]
    resume = err.split("Resume with:")[1].strip().splitlines()[0].split()
    assert resume[:2] == ["equirecon", "pretrain"] and resume[-2:] == ["--resume_from_checkpoint", "last"]
    last = err.split("Last checkpoint: ")[1].split(". Resume")[0]
    assert (Path(last) / "trainer_state.json").is_file()  # a complete one, even if Ctrl-C came mid-save
    step = int(last.rsplit("-", 1)[1])
    assert cli_main([*resume[1:], "--max_steps", str(step + 1), "--disable_tqdm", "True"]) == 0
    state = json.loads((output / "trainer_state.json").read_text())
    assert state["global_step"] == step + 1 and (output / "model.safetensors").is_file()


def test_help_puts_the_command_first_and_the_console_script_stays_light(tmp_path, capsys):
    with pytest.raises(SystemExit):
        from equirecon.commands.pretrain import parse_arguments

        parse_arguments(["--help"])
    text = capsys.readouterr().out
    assert text.startswith("usage: equirecon pretrain")
    assert "--config RECIPE" in text and "`last`" in text and "example:" in text
    assert text.index("--preset") < text.index("Trainer options") < text.index("--adam_beta1")
    script = tmp_path / "equirecon"  # what the console script does
    script.write_text(
        "import sys\nfrom equirecon.commands import main\nmain(['--help'])\nprint('torch' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert result.stdout.strip().endswith("False"), result.stdout + result.stderr


def test_python_dash_m_equirecon_runs_the_same_commands():
    # `accelerate launch -m equirecon pretrain ...` and `torchrun -m equirecon ...` (recipes/README.md) run this.
    command = [sys.executable, "-m", "equirecon", "model-card", "--help"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.startswith("usage: equirecon model-card DIR")
