"""Two CPU (gloo) training processes through the real launcher, as the distributed tests start them:
`accelerate launch --config_file <config> --num_processes 2 ... -m plait.train <recipe>`."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CPU_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}


def shipped_config(engine: str) -> Path:
    """A launcher config of `launch/accelerate/` by name: ddp, fsdp, zero2, zero3, ..."""
    return ROOT / "launch/accelerate" / f"{engine}.yaml"


def launch_command(config: Path, recipe: Path, *launcher_args: str) -> list[str]:
    """The command that trains `recipe` in two processes with the launcher `config` (`launcher_args` go to
    `accelerate launch`, e.g. `--max_restarts 1`)."""
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config)]
    launcher += ["--num_processes", "2", "--main_process_port", "0", *launcher_args]
    return [*launcher, "-m", "plait.train", str(recipe)]


def launch(
    config: Path, recipe: Path, *launcher_args: str, env: dict | None = None
) -> subprocess.CompletedProcess:
    """Run `launch_command` to its end; it must succeed (its output tails are the failure message)."""
    proc = subprocess.run(
        launch_command(config, recipe, *launcher_args),
        cwd=ROOT,
        env=env or CPU_ENV,
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc
