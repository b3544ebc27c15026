"""One output directory holds one run: a lock, the same recipe on resume, a finished run left alone, and a
checkpoint checked whole before it is resumed from.

`prepare(recipe)` runs on the main process before any data or model is built; it raises `RunError` with a
message saying what to do when the directory is in use, holds a different run, or its latest checkpoint is
damaged, and `AlreadyFinished` when the run has nothing left to do.
"""

from __future__ import annotations

import fcntl
import json
import os
import pickle
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from transformers.trainer_utils import get_last_checkpoint

from .errors import RunError
from .recipe import Recipe, RecipeError

RECIPE_FILE = "recipe.json"
LOCK_FILE = ".lock"

# Recipe keys that may change between the start of a run and its resume: where the run lives (a moved
# directory), where and how often it logs, evaluates and checkpoints, and how fast data loads. Every other key
# changes what is trained.
RESUMABLE_CHANGES = (
    "train.output_dir",
    "logging.",
    "checkpoint.every",
    "checkpoint.keep_last",
    "checkpoint.save_final",
    "checkpoint.resume",
    "checkpoint.resume_despite_changes",
    "checkpoint.trust_pickles",
    "checkpoint.async_save",
    "train.dataloader_workers",
    "eval.",
    "data.num_proc",
    "data.cache_dir",
    "data.max_repeats",
)


class AlreadyFinished(RunError):
    """The output directory holds this run, finished: nothing is trained or written."""


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict) and not (prefix == "model." and key == "config"):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def recipe_differences(stored: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """`key: stored -> current` for every run-defining key that differs."""
    old, new = flatten(stored), flatten(current)
    lines = []
    for key in sorted(set(old) | set(new)):
        if key.startswith(RESUMABLE_CHANGES) or old.get(key) == new.get(key):
            continue
        lines.append(f"  {key}: {old.get(key, '(absent)')!r} -> {new.get(key, '(absent)')!r}")
    return lines


def checkpoint_problems(checkpoint: Path) -> list[str]:
    """What is missing or unreadable in a Trainer checkpoint (empty when it can be resumed from)."""
    problems = []
    state = checkpoint / "trainer_state.json"
    try:
        step = json.loads(state.read_text())["global_step"]
        if not isinstance(step, int):
            problems.append(f"{state.name}: global_step={step!r} is not an integer")
    except (OSError, ValueError, KeyError, TypeError) as e:
        problems.append(f"{state.name} is missing or not a trainer state ({type(e).__name__}: {e})")
    if any(checkpoint.glob("global_step*")):  # DeepSpeed: model and optimizer in global_step*/, checked by it
        return problems
    if any(checkpoint.glob("pytorch_model_fsdp*")):  # FSDP: model and optimizer as Accelerate saves them
        for kind, pattern in (("model", "pytorch_model_fsdp*"), ("optimizer", "optimizer*")):
            saved = sorted(checkpoint.glob(pattern))
            if not saved:
                problems.append(f"no FSDP {kind} state ({pattern})")
            problems += [problem for path in saved if path.is_dir() for problem in _sharded_problems(path)]
    else:
        weights = sorted(checkpoint.glob("*.safetensors"))
        if not weights:
            problems.append("no model weights (*.safetensors)")
        for path in weights:
            try:
                with safe_open(path, "pt") as f:
                    f.keys()
            except (SafetensorError, OSError) as e:
                problems.append(f"{path.name} is unreadable ({e})")
        if not (checkpoint / "optimizer.pt").is_file():
            problems.append("optimizer.pt is missing (resuming would restart the optimizer)")
    if not (checkpoint / "scheduler.pt").is_file():
        problems.append("scheduler.pt is missing (resuming would restart the schedule)")
    return problems


def _sharded_problems(directory: Path) -> list[str]:
    """A `torch.distributed.checkpoint` directory: its metadata readable, every shard file it names present
    and long enough for the bytes it should hold."""
    from torch.distributed.checkpoint import FileSystemReader

    try:
        stored = FileSystemReader(directory).read_metadata().storage_data.values()
    except Exception as e:  # noqa: BLE001  (any failure to read it means the checkpoint is unusable)
        return [f"{directory.name}/ is not a readable sharded checkpoint ({type(e).__name__}: {e})"]
    needed: dict[str, int] = {}
    for item in stored:
        needed[item.relative_path] = max(needed.get(item.relative_path, 0), item.offset + item.length)
    problems = []
    for name, size in sorted(needed.items()):
        path = directory / name
        if not path.is_file():
            problems.append(f"{directory.name}/{name} is missing")
        elif path.stat().st_size < size:
            problems.append(f"{directory.name}/{name} is truncated ({path.stat().st_size} of {size} bytes)")
    return problems


# DeepSpeed's own classes in its ZeRO checkpoints: an enum and the loss scaler, plain state objects rebuilt
# from their attributes. Any other global needs `checkpoint.trust_pickles`.
DEEPSPEED_GLOBALS = {
    "deepspeed.runtime.zero.config.ZeroStageEnum",
    "deepspeed.runtime.fp16.loss_scaler.LossScaler",
    "deepspeed.runtime.fp16.loss_scaler.DynamicLossScaler",
}


def _needs_code_execution(path: Path) -> bool:
    try:  # zip-format files: list the globals from the pickle's opcodes, without loading anything
        return bool(set(torch.serialization.get_unsafe_globals_in_checkpoint(path)) - DEEPSPEED_GLOBALS)
    except ValueError:  # the legacy format: a restricted load with DeepSpeed's classes allowed
        import importlib

        classes = []
        for name in DEEPSPEED_GLOBALS:
            module, _, attr = name.rpartition(".")
            classes.append(getattr(importlib.import_module(module), attr))
        try:
            with torch.serialization.safe_globals(classes):
                torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError:
            return True
        return False


def unsafe_pickles(checkpoint: Path) -> list[str]:
    """The `.pt` files of a DeepSpeed checkpoint that hold more than tensors, containers and DeepSpeed's
    own state classes: DeepSpeed loads them with `weights_only=False`, which runs whatever code a crafted
    file holds."""
    return [path.name for path in sorted(checkpoint.glob("global_step*/*.pt")) if _needs_code_execution(path)]


def _step(checkpoint: Path) -> int:
    return int(checkpoint.name.rsplit("-", 1)[-1])


def latest_resumable(output_dir: Path) -> Path | None:
    """The latest checkpoint, after checking it whole; a damaged one is named with the previous good one."""
    latest = get_last_checkpoint(str(output_dir))
    if latest is None:
        return None
    latest = Path(latest)
    problems = checkpoint_problems(latest)
    if not problems:
        return latest
    others = sorted(
        (p for p in output_dir.glob("checkpoint-*") if p != latest and p.name[11:].isdigit()), key=_step
    )
    good = [p for p in others if not checkpoint_problems(p)]
    offer = (
        f"Delete it, or resume from the previous good checkpoint with --set checkpoint.resume={good[-1]}"
        if good
        else "No earlier checkpoint is complete: delete it to start afresh"
    )
    raise RunError(f"cannot resume from {latest}: {'; '.join(problems)}. {offer}")


def finished_step(output_dir: Path, max_steps: int) -> int | None:
    """The step the run in `output_dir` finished at (it saved `final/`, or checkpointed its last step), or
    None while it has steps left."""
    if (output_dir / "final").is_dir():
        try:
            return max(entry["step"] for entry in json.loads((output_dir / "log_history.json").read_text()))
        except (OSError, ValueError, KeyError, TypeError):
            return max_steps
    latest = get_last_checkpoint(str(output_dir))
    return _step(Path(latest)) if latest is not None and _step(Path(latest)) >= max_steps else None


class DirectoryLock:
    """An exclusive `flock` on `<output_dir>/.lock` for the whole run (the OS releases it if the process
    dies)."""

    def __init__(self, output_dir: Path):
        self.path = output_dir / LOCK_FILE
        self.file = None

    def acquire(self) -> None:
        self.file = open(self.path, "a+")
        try:
            fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.file.seek(0)
            holder = self.file.read().strip() or "another process"
            self.file.close()
            raise RunError(
                f"train.output_dir={str(self.path.parent)!r} is in use by another run ({holder}); "
                "wait for it to end or choose another output_dir"
            ) from None
        self.file.seek(0)
        self.file.truncate()
        self.file.write(f"pid {os.getpid()}")
        self.file.flush()

    def release(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None


def prepare(recipe: Recipe, lock: DirectoryLock) -> str | None:
    """Main process: lock the output directory, check it holds this run (then store its recipe) and return
    the checkpoint to resume from (None: a fresh start)."""
    output_dir = Path(recipe.train.output_dir)
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        lock.acquire()
    except OSError as e:
        raise RecipeError(f"train.output_dir={str(output_dir)!r} cannot be written ({e.strerror})") from None
    current = recipe.to_dict()
    stored_path = output_dir / RECIPE_FILE
    if stored_path.is_file():
        try:
            stored = json.loads(stored_path.read_text())
        except ValueError:
            raise RunError(
                f"{stored_path} is not valid JSON: this directory's run cannot be identified"
            ) from None
        differences = recipe_differences(stored, current)
        if differences and not recipe.checkpoint.resume_despite_changes:
            raise RunError(
                f"train.output_dir={str(output_dir)!r} holds a run with a different recipe:\n"
                + "\n".join(differences)
                + "\nUse another output_dir, or resume anyway with "
                "--set checkpoint.resume_despite_changes=true"
            )
    resume = recipe.checkpoint.resume
    if resume == "auto":
        step = finished_step(output_dir, recipe.train.max_steps)
        if step is not None:
            raise AlreadyFinished(
                f"the run in {output_dir} already finished at step {step} "
                f"(its final model is in {output_dir / 'final'})"
            )
        latest = latest_resumable(output_dir)
        resume = str(latest) if latest is not None else None
    elif resume is not None:
        problems = checkpoint_problems(Path(resume)) if Path(resume).is_dir() else ["not a directory"]
        if problems:
            raise RecipeError(f"checkpoint.resume={resume!r} cannot be resumed from: {'; '.join(problems)}")
    if resume is not None and not recipe.checkpoint.trust_pickles:
        unsafe = unsafe_pickles(Path(resume))
        if unsafe:
            raise RunError(
                f"{resume} holds DeepSpeed files that only load with pickle's code execution "
                f"({', '.join(unsafe)}); resume from it only if you wrote it yourself, with "
                "--set checkpoint.trust_pickles=true"
            )
    stored_path.write_text(json.dumps(current, indent=2))
    return resume
