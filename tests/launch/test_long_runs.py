"""Long runs without a person watching, two CPU (gloo) processes under the real launcher: a preempted run
checkpoints its current step and exits with the requeue code, and resuming repeats the uninterrupted run;
a worker killed with SIGKILL is restarted by torch's elastic agent from the last checkpoint; a rank that stops
taking part is named within the collective timeout."""

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from tiny_model import tiny_model_config, tiny_text_data

from plait.train.preemption import REQUEUE_EXIT_CODE

ROOT = Path(__file__).resolve().parents[2]
MAX_STEPS = 8


def tiny_recipe(output_dir: Path) -> dict:
    return {
        "model": {"config": tiny_model_config()},
        "data": tiny_text_data(),
        "optim": {"lr": 3e-3, "warmup_steps": 1},
        "train": {
            "output_dir": str(output_dir),
            "max_steps": MAX_STEPS,
            "micro_batch_size": 2,
            "precision": "fp32",
        },
        "checkpoint": {"every": 3, "keep_last": 2, "save_final": False},
        "logging": {"every": 1, "progress_bar": False},
    }


def launch_command(recipe: Path, restarts: int = 0) -> list[str]:
    return [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(ROOT / "launch/accelerate/ddp.yaml"),
        "--num_processes",
        "2",
        "--main_process_port",
        "0",
        "--max_restarts",
        str(restarts),
        "-m",
        "plait.train",
        str(recipe),
    ]


ENV = {
    **os.environ,
    "OMP_NUM_THREADS": "1",
    "CUDA_VISIBLE_DEVICES": "",
    "PYTHONUNBUFFERED": "1",
    "TORCH_ELASTIC_SHUTDOWN_TIMEOUT": "60",
}


def write_recipe(tmp_path: Path, name: str) -> tuple[Path, Path]:
    out = tmp_path / name
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(tiny_recipe(out)))
    return path, out


def launch(recipe: Path, restarts: int = 0) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        launch_command(recipe, restarts), cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=400
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc


def losses(out: Path) -> dict[int, float]:
    return {h["step"]: h["loss"] for h in json.loads((out / "log_history.json").read_text()) if "loss" in h}


def workers(launcher_pid: int) -> list[int]:
    """The training processes: the launcher's direct children (their own forked helpers share their command
    line, so deeper descendants are left out)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) != launcher_pid:
                continue
            if "plait.train" in (stat.parent / "cmdline").read_text():
                found.append(int(stat.parent.name))
    return found


def interrupt(recipe: Path, after: str, sig: signal.Signals, count: int, restarts: int):
    """Launch, wait for a line holding `after` in the output, send `sig` to `count` workers; return the
    launcher's exit code and its whole output."""
    launcher = subprocess.Popen(
        launch_command(recipe, restarts),
        cwd=ROOT,
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    lines = []
    try:
        deadline = time.monotonic() + 300
        for line in launcher.stdout:
            lines.append(line)
            if after in line or time.monotonic() > deadline:
                break
        targets = sorted(workers(launcher.pid))[-count:]
        assert targets, "".join(lines)
        for pid in targets:
            os.kill(pid, sig)
        lines.extend(launcher.stdout)
        return launcher.wait(timeout=150), "".join(lines)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(launcher.pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> dict[int, float]:
    recipe, out = write_recipe(tmp_path_factory.mktemp("reference"), "run")
    launch(recipe)
    result = losses(out)
    assert sorted(result) == list(range(1, MAX_STEPS + 1))
    return result


def test_preempted_run_checkpoints_its_step_and_resumes_exactly(uninterrupted, tmp_path):
    """SIGTERM to both workers (what SLURM sends a preempted job): each finishes its step, the ranks agree
    to stop, checkpoint that step and exit with the requeue code; relaunched, the run repeats the
    uninterrupted loss curve."""
    recipe, out = write_recipe(tmp_path, "run")
    code, output = interrupt(recipe, "'loss'", signal.SIGTERM, count=2, restarts=0)
    assert code != 0, output[-3000:]
    assert re.search(rf"exitcode\s*:\s*{REQUEUE_EXIT_CODE}", output), output[-3000:]
    stopped = re.search(r"SIGTERM received: stopped after step (\d+)", output)
    assert stopped, output[-3000:]
    step = int(stopped.group(1))
    assert 1 <= step < MAX_STEPS
    assert (out / f"checkpoint-{step}" / "trainer_state.json").exists()
    assert not (out / ".staging").exists()
    launch(recipe)
    assert losses(out) == uninterrupted


def with_callback(command: list[str], tmp_path: Path, script: str) -> list[str]:
    """`command` with a script that adds a callback to the run instead of `-m plait.train`."""
    path = tmp_path / "with_callback.py"
    path.write_text(script)
    module = command.index("plait.train")
    return command[: module - 1] + [str(path)] + command[module + 1 :]


KILLER = """
import os, signal, sys
from transformers import TrainerCallback
from plait.train import cli, trainer

class KillAfterStep5(TrainerCallback):  # rank 1 crashes after step 5, in the first round only
    def on_step_end(self, args, state, control, **kwargs):
        first_round = os.environ["TORCHELASTIC_RESTART_COUNT"] == "0"
        if first_round and args.process_index == 1 and state.global_step == 5:
            os.kill(os.getpid(), signal.SIGKILL)

train = trainer.run
trainer.run = lambda recipe: train(recipe, callbacks=[KillAfterStep5()])
sys.exit(cli.main())
"""


def test_a_killed_worker_is_restarted_from_the_last_checkpoint(uninterrupted, tmp_path):
    """SIGKILL of one worker after step 5 (a crashed node; it kills itself there, so the checkpoint it
    resumes from does not depend on timing): the elastic agent (--max_restarts 1) restarts both, they build
    their process group again (the agent's store still holds the killed round's keys), resume from
    checkpoint-3 and the finished run has the uninterrupted loss curve; the restart and the steps it lost are
    in the log."""
    recipe, out = write_recipe(tmp_path, "run")
    command = with_callback(launch_command(recipe, restarts=1), tmp_path, KILLER)
    proc = subprocess.run(command, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-4000:]
    assert losses(out) == uninterrupted
    resumed = [h for h in json.loads((out / "log_history.json").read_text()) if "restarts" in h]
    assert len(resumed) == 1 and resumed[0]["restarts"] == 1, resumed
    assert resumed[0]["step"] == 4 and resumed[0]["steps_lost"] >= 2  # trained 4 and 5 after checkpoint-3
    assert "resumed at step 3; restarts so far: 1" in output


SLEEPER = """
import sys, time
from transformers import TrainerCallback
from plait.train import cli, trainer

class SleepInStep2(TrainerCallback):  # rank 1 stops taking part, inside the forward of step 2
    def on_train_begin(self, args, state, control, model=None, **kwargs):
        def sleep(module, inputs):
            if args.process_index == 1 and state.global_step == 1:
                time.sleep(20)  # far beyond the 5 s timeout (longer would only slow the test down)

        model.model.layers[0].register_forward_pre_hook(sleep)

train = trainer.run
trainer.run = lambda recipe: train(recipe, callbacks=[SleepInStep2()])
sys.exit(cli.main())
"""


def test_a_rank_that_stops_is_named_within_the_collective_timeout(tmp_path):
    recipe, _ = write_recipe(tmp_path, "run")
    command = with_callback(launch_command(recipe), tmp_path, SLEEPER)
    command += ["--set", "train.collective_timeout=5"]
    proc = subprocess.run(command, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert re.search(
        r"plait-train: error: rank 0 waited more than train.collective_timeout=5 s for the other ranks at "
        r"'step 2: backward'; "
        r"behind: rank 1 \(last seen \d+ s ago at 'step 2: forward'\)",
        output,
    ), output[-4000:]
