"""Restarts of a run and the steps each one lost, from the launchers' own counters.

torch's elastic agent (`torchrun` / `accelerate launch --max_restarts N`) restarts all workers when one dies
and counts in `TORCHELASTIC_RESTART_COUNT`; SLURM counts requeues in `SLURM_RESTART_COUNT`. The steps a
restart lost are those trained after the checkpoint it resumes from: the main process records the last step
it finished in `<output_dir>/progress.json` (atomically replaced each step), which the restarted run
compares with the step it resumed at. The numbers are printed when the run resumes and added to its first
log line, so they reach `log_history.json`, wandb and the progress bar.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

PROGRESS_FILE = "progress.json"


def restart_count() -> int:
    """Restarts of this run by the elastic agent (this job) plus requeues of the SLURM job."""
    counters = ("TORCHELASTIC_RESTART_COUNT", "SLURM_RESTART_COUNT")
    return sum(int(os.environ.get(name) or 0) for name in counters)


class RestartLog(TrainerCallback):
    """Counts restarts and lost steps; `metrics()` hands them to the next log line once."""

    def __init__(self, output_dir: str | Path):
        self.path = Path(output_dir) / PROGRESS_FILE
        self.pending: dict[str, Any] = {}

    def on_train_begin(self, args, state, control, **kwargs):
        if state.global_step == 0:  # a fresh start
            return
        try:
            reached = json.loads(self.path.read_text())["step"]
        except (OSError, ValueError, KeyError):
            reached = state.global_step  # written by a run before this file existed: unknown, count none
        lost = max(0, reached - state.global_step)
        restarts = restart_count()
        if args.should_save:
            print(
                f"plait-train: resumed at step {state.global_step}; restarts so far: {restarts}; "
                f"steps lost (trained after that checkpoint): {lost}",
                flush=True,
            )
        self.pending = {"restarts": restarts, "steps_lost": lost}

    def on_step_end(self, args, state, control, **kwargs):
        if args.should_save:
            staged = self.path.with_suffix(".tmp")
            staged.write_text(json.dumps({"step": state.global_step}))
            os.replace(staged, self.path)

    def metrics(self) -> dict[str, Any]:
        pending, self.pending = self.pending, {}
        return pending
