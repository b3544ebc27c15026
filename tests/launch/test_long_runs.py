"""Long runs without a person watching, two CPU (gloo) processes under the real launcher: a preempted run
checkpoints its current step and exits with the requeue code, and resuming repeats the uninterrupted run;
a worker killed with SIGKILL is restarted by torch's elastic agent from the last checkpoint; a rank that stops
taking part is named within the collective timeout; FSDP2 checkpoints written in the background while training
goes on are consistent and atomic, even under SIGKILL during the write."""

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import two_processes
import yaml
from tiny_model import tiny_model_config, tiny_text_data
from two_processes import CPU_ENV, shipped_config

from plait.train.preemption import REQUEUE_EXIT_CODE

ROOT = two_processes.ROOT
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


def launch_command(recipe: Path, restarts: int = 0, engine: str = "ddp") -> list[str]:
    return two_processes.launch_command(shipped_config(engine), recipe, "--max_restarts", str(restarts))


ENV = {
    **CPU_ENV,
    "PYTHONUNBUFFERED": "1",
    "TORCH_ELASTIC_SHUTDOWN_TIMEOUT": "60",
}


def write_recipe(tmp_path: Path, name: str) -> tuple[Path, Path]:
    out = tmp_path / name
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(tiny_recipe(out)))
    return path, out


def launch(recipe: Path, restarts: int = 0, engine: str = "ddp") -> subprocess.CompletedProcess:
    return two_processes.launch(shipped_config(engine), recipe, "--max_restarts", str(restarts), env=ENV)


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
            command = (stat.parent / "cmdline").read_text()
            if "plait.train" in command or "with_callback.py" in command:
                found.append(int(stat.parent.name))
    return found


def interrupt(command: list[str], after: str, sig: signal.Signals, count: int, env: dict | None = None):
    """Launch, wait for a line holding `after` in the output, send `sig` to `count` workers; return the
    launcher's exit code and its whole output."""
    launcher = subprocess.Popen(
        command,
        cwd=ROOT,
        env=env or ENV,
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
    code, output = interrupt(launch_command(recipe), "'loss'", signal.SIGTERM, count=2)
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


SLOW_WRITER = """
import os, sys, time
from pathlib import Path
from torch.distributed.checkpoint import filesystem
from transformers import TrainerCallback
from plait.train import cli, trainer

# SLOW_WRITES="<step or *>:<seconds or 'full'>,...": the background write of checkpoint-<step> (of every
# checkpoint: *) first sleeps that long, or fails as on a full disk
SLOW = dict(pair.split(":") for pair in os.environ["SLOW_WRITES"].split(","))
write = filesystem._FileSystemWriter.write_data

def slow_write(self, plan, planner):
    delay = SLOW.get(Path(self.path).parent.name.split("-")[-1], SLOW.get("*", "0"))
    if delay == "full":
        raise OSError(28, "No space left on device")
    time.sleep(float(delay))
    return write(self, plan, planner)

filesystem._FileSystemWriter.write_data = slow_write

class InPlace(TrainerCallback):  # rank 0 prints the checkpoints in place at each step end
    def on_step_end(self, args, state, control, **kwargs):
        if args.process_index == 0:
            found = sorted(p.name for p in Path(args.output_dir).glob("checkpoint-*"))
            print(f"after step {state.global_step}: in place {found}", flush=True)

train = trainer.run
trainer.run = lambda recipe: train(recipe, callbacks=[InPlace()])
sys.exit(cli.main())
"""


def fsdp2_recipe(tmp_path: Path) -> tuple[Path, Path]:
    out = tmp_path / "run"
    recipe = tiny_recipe(out)
    recipe["checkpoint"]["keep_last"] = None
    path = tmp_path / "fsdp2.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path, out


def slow_writes(command: list[str], tmp_path: Path, writes: str) -> tuple[list[str], dict[str, str]]:
    return with_callback(command, tmp_path, SLOW_WRITER), {**ENV, "SLOW_WRITES": writes}


@pytest.fixture(scope="module")
def fsdp2_background(tmp_path_factory) -> tuple[Path, Path, str]:
    """An FSDP2 run whose checkpoint-3 takes 4 s longer to write: (recipe, output dir, output)."""
    tmp_path = tmp_path_factory.mktemp("fsdp2")
    recipe, out = fsdp2_recipe(tmp_path)
    command, env = slow_writes(launch_command(recipe, engine="fsdp"), tmp_path, "3:4")
    proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return recipe, out, proc.stdout


def test_fsdp2_trains_on_while_its_checkpoint_is_written_and_resumes_from_it_exactly(fsdp2_background):
    """Steps 4 and 5 run while checkpoint-3 is still being written (it is not in place yet); it goes in
    place once complete, and holds step 3's weights and optimizer state although training changed them
    during the write: resuming from it repeats the uninterrupted losses."""
    recipe, out, output = fsdp2_background
    assert "checkpoints written in the background" in output
    assert "after step 4: in place []" in output and "after step 5: in place []" in output, output[-3000:]
    assert [p.name for p in sorted(out.glob("checkpoint-*"))] == [
        "checkpoint-3",
        "checkpoint-6",
        "checkpoint-8",
    ]
    assert not (out / ".staging").exists()
    uninterrupted = losses(out)
    assert sorted(uninterrupted) == list(range(1, MAX_STEPS + 1))
    shutil.rmtree(out / "checkpoint-6")
    shutil.rmtree(out / "checkpoint-8")
    proc = launch(recipe, engine="fsdp")
    assert f"resuming from {out / 'checkpoint-3'}" in proc.stdout
    assert losses(out) == uninterrupted


def test_fsdp2_killed_during_a_background_write_keeps_the_previous_checkpoint(fsdp2_background, tmp_path):
    """SIGKILL of both workers while checkpoint-6 is written in the background (training went on to step
    7): checkpoint-3 stays the latest, the partial write is only under .staging/, and the relaunched run
    resumes from checkpoint-3 and repeats the uninterrupted losses."""
    _, reference, _ = fsdp2_background
    recipe, out = fsdp2_recipe(tmp_path)
    command, env = slow_writes(launch_command(recipe, engine="fsdp"), tmp_path, "6:120")
    code, output = interrupt(command, "after step 7: in place ['checkpoint-3']", signal.SIGKILL, 2, env)
    assert code != 0
    assert [p.name for p in out.glob("checkpoint-*")] == ["checkpoint-3"], output[-3000:]
    assert (out / ".staging" / "checkpoint-6").is_dir()
    assert not (out / ".staging" / "checkpoint-6" / "pytorch_model_fsdp_0" / ".metadata").exists()
    proc = launch(recipe, engine="fsdp")
    assert f"resuming from {out / 'checkpoint-3'}" in proc.stdout
    assert losses(out) == losses(reference)


def test_fsdp2_preempted_run_waits_for_its_background_write_and_resumes_exactly(fsdp2_background, tmp_path):
    """SIGTERM under FSDP2, each checkpoint's write slowed by 3 s: the stop checkpoints its step in the
    background and the processes exit with the requeue code only once it is complete and in place; the
    relaunched run repeats the uninterrupted losses."""
    _, reference, _ = fsdp2_background
    recipe, out = fsdp2_recipe(tmp_path)
    command, env = slow_writes(launch_command(recipe, engine="fsdp"), tmp_path, "*:3")
    code, output = interrupt(command, "'loss'", signal.SIGTERM, 2, env)
    assert re.search(rf"exitcode\s*:\s*{REQUEUE_EXIT_CODE}", output), output[-3000:]
    stopped = re.search(r"SIGTERM received: stopped after step (\d+)", output)
    assert stopped, output[-3000:]
    step = int(stopped.group(1))
    assert 1 <= step < MAX_STEPS
    assert (out / f"checkpoint-{step}" / "optimizer_0" / ".metadata").exists()
    assert not (out / ".staging").exists()
    proc = launch(recipe, engine="fsdp")
    assert f"resuming from {out / f'checkpoint-{step}'}" in proc.stdout
    assert losses(out) == losses(reference)


def test_fsdp2_background_write_that_fails_stops_the_run_and_keeps_the_previous_checkpoint(tmp_path):
    recipe, out = fsdp2_recipe(tmp_path)
    command, env = slow_writes(launch_command(recipe, engine="fsdp"), tmp_path, "6:full")
    proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert re.search(
        rf"plait-train: error: writing {re.escape(str(out / '.staging' / 'checkpoint-6'))} in the background "
        r"failed \(rank 0: OSError: \[Errno 28\] No space left on device; rank 1: OSError: \[Errno 28\] No "
        r"space left on device\); it was not put in place, the previous checkpoint is kept",
        output,
    ), output[-4000:]
    assert [p.name for p in out.glob("checkpoint-*")] == ["checkpoint-3"]
