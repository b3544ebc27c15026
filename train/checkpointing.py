"""Atomic checkpoints for `Trainer`: each checkpoint is written under `<output_dir>/.staging/` and renamed to
`<output_dir>/checkpoint-<step>` only once every rank has finished writing, so a crash during a save never
leaves a partial `checkpoint-*` behind (the previous one stays the latest); then keep-last-K rotation."""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

STAGING_DIR = ".staging"


class AtomicCheckpoints:
    """`Trainer` mixin: staged, atomically renamed checkpoints and rotation to the last `keep_last`."""

    keep_last: int | None = None

    def _get_output_dir(self, trial) -> str:
        run_dir = super()._get_output_dir(trial)
        return os.path.join(run_dir, STAGING_DIR) if getattr(self, "_staging", False) else run_dir

    def _save_checkpoint(self, model, trial) -> None:
        """Write the checkpoint under `.staging/`, then (all ranks done) rename it into place and rotate."""
        run_dir = self._get_output_dir(trial)
        name = f"checkpoint-{self.state.global_step}"
        staged, final = os.path.join(run_dir, STAGING_DIR, name), os.path.join(run_dir, name)
        self._staging = True
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self._staging = False
        self.accelerator.wait_for_everyone()
        if self.args.should_save:
            _fsync_tree(staged)
            if os.path.exists(
                final
            ):  # an older run's checkpoint of the same step: move it aside, then replace
                replaced = os.path.join(run_dir, STAGING_DIR, f"replaced-{name}")
                shutil.rmtree(replaced, ignore_errors=True)
                os.rename(final, replaced)
                os.rename(staged, final)
                shutil.rmtree(replaced)
            else:
                os.rename(staged, final)
            _fsync_dir(run_dir)
            rotate(run_dir, self.keep_last)
            with contextlib.suppress(OSError):  # leave no empty staging directory behind
                os.rmdir(os.path.join(run_dir, STAGING_DIR))
        self.accelerator.wait_for_everyone()


def _fsync_tree(path: str) -> None:
    for root, _, files in os.walk(path):
        for f in files:
            fd = os.open(os.path.join(root, f), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def checkpoints(run_dir: str | Path) -> list[Path]:
    """The complete checkpoints in `run_dir`, oldest step first."""
    run_dir = Path(run_dir)
    found = [p for p in run_dir.glob("checkpoint-*") if p.is_dir() and p.name.split("-")[-1].isdigit()]
    return sorted(found, key=lambda p: int(p.name.split("-")[-1]))


def rotate(run_dir: str | Path, keep_last: int | None) -> None:
    if keep_last is None:
        return
    for old in checkpoints(run_dir)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
