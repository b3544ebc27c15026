"""Atomic checkpoints for `Trainer`: each checkpoint is written under `<output_dir>/.staging/` and renamed to
`<output_dir>/checkpoint-<step>` only once every rank has finished writing, so a crash during a save never
leaves a partial `checkpoint-*` behind (the previous one stays the latest); then keep-last-K rotation. FSDP2
shards may be written in the background (`plait.train.async_checkpoint`): that checkpoint is renamed into
place once the write is complete."""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

import torch
from transformers.trainer import SCHEDULER_NAME

from .async_checkpoint import AsyncShardedSave

STAGING_DIR = ".staging"


class AtomicCheckpoints:
    """`Trainer` mixin: staged, atomically renamed checkpoints and rotation to the last `keep_last`.

    With `background` set (FSDP2 sharded checkpoints, `plait.train.async_checkpoint`) the model and optimizer
    shards are written while training goes on: the checkpoint is renamed into place by the main process at
    the first step end that finds the write complete, before the next checkpoint starts, or at the end of
    training, whichever comes first."""

    keep_last: int | None = None
    background: AsyncShardedSave | None = None
    _in_background: tuple[str, str] | None = None  # (run_dir, name) being written, not in place yet

    def _get_output_dir(self, trial) -> str:
        run_dir = super()._get_output_dir(trial)
        return os.path.join(run_dir, STAGING_DIR) if getattr(self, "_staging", False) else run_dir

    def _save_checkpoint(self, model, trial) -> None:
        """Write the checkpoint under `.staging/`, then (all ranks done) rename it into place and rotate."""
        self.finish_checkpoint()  # one background write at a time, and checkpoints go in place in order
        run_dir = self._get_output_dir(trial)
        name = f"checkpoint-{self.state.global_step}"
        self._staging = True
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self._staging = False
        self.accelerator.wait_for_everyone()  # every rank wrote its synchronous files (RNG state, ...)
        if self.background is not None and self.background.pending:
            self._in_background = (run_dir, name)
            return
        if self.args.should_save:
            _put_in_place(run_dir, name, self.keep_last)
        self.accelerator.wait_for_everyone()

    def _save_optimizer_and_scheduler(self, output_dir: str) -> None:
        if self.background is None:
            return super()._save_optimizer_and_scheduler(output_dir)
        self.background.start(self.model, self.optimizer, output_dir)  # the model's and optimizer's shards
        if self.args.should_save:
            torch.save(self.lr_scheduler.state_dict(), os.path.join(output_dir, SCHEDULER_NAME))

    def _maybe_log_save_evaluate(self, *args, **kwargs):
        if self._in_background is not None and self.background.done():
            self.finish_checkpoint()
        super()._maybe_log_save_evaluate(*args, **kwargs)

    def finish_checkpoint(self) -> None:
        """Wait for the checkpoint being written in the background, if any, and (main process) put it in
        place. No collective: the main process's write completes only after every rank's."""
        if self._in_background is None:
            return
        (run_dir, name), self._in_background = self._in_background, None
        self.background.wait()
        if self.args.should_save:
            _put_in_place(run_dir, name, self.keep_last)

    def train(self, *args, **kwargs):
        """`Trainer.train`, then the last background checkpoint completed and in place on every rank. If
        training fails, a background write still in flight (an earlier, good step) is completed if it can
        be, and otherwise left under `.staging/`."""
        try:
            result = super().train(*args, **kwargs)
        except BaseException:
            try:
                self.finish_checkpoint()
            except Exception as e:
                print(f"plait-train: the checkpoint written in the background was not kept: {e}", flush=True)
            raise
        self.finish_checkpoint()
        if self.background is not None:
            self.background.close()
        self.accelerator.wait_for_everyone()
        return result


def _put_in_place(run_dir: str, name: str, keep_last: int | None) -> None:
    """Rename the complete `.staging/<name>` to `<name>` (durably), then rotate to the last `keep_last`."""
    staged, final = os.path.join(run_dir, STAGING_DIR, name), os.path.join(run_dir, name)
    _fsync_tree(staged)
    if os.path.exists(final):  # an older run's checkpoint of the same step: move it aside, then replace
        replaced = os.path.join(run_dir, STAGING_DIR, f"replaced-{name}")
        shutil.rmtree(replaced, ignore_errors=True)
        os.rename(final, replaced)
        os.rename(staged, final)
        shutil.rmtree(replaced)
    else:
        os.rename(staged, final)
    _fsync_dir(run_dir)
    rotate(run_dir, keep_last)
    with contextlib.suppress(OSError):  # leave no empty staging directory behind
        os.rmdir(os.path.join(run_dir, STAGING_DIR))


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
