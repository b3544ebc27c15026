"""Preemption: on SIGTERM or SIGUSR1 every rank finishes its current step, the run checkpoints that step
(atomically, `plait.train.checkpointing`) and the process exits with `REQUEUE_EXIT_CODE`.

SLURM sends SIGTERM to every process of a job it preempts, and `--signal=[B:]USR1@<seconds>` sends SIGUSR1
ahead of the time limit; torch's elastic launcher (behind `torchrun` and `accelerate launch`) passes a SIGTERM
it receives on to its workers and waits `TORCH_ELASTIC_SHUTDOWN_TIMEOUT` seconds for them. The signal may
reach the ranks at different moments (or only some of them), so after each step the ranks agree by an
all-reduce of "a signal arrived": they stop at the same step, and the checkpoint's collectives line up.
Resuming (`checkpoint.resume: auto`, the default) continues from that checkpoint exactly.

A launched worker whose launcher died gets SIGTERM from the kernel (`plait.train.lifecycle`): that is not a
preemption, and the worker ends at once, as before.
"""

from __future__ import annotations

import os
import signal
import threading

import torch
from transformers import TrainerCallback

from .errors import RunError

# EX_TEMPFAIL from sysexits.h: "try again later". launch/slurm.sbatch requeues the job on it.
REQUEUE_EXIT_CODE = 75
SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class Preempted(RunError):
    """The run stopped on a preemption signal after checkpointing `step`; run the same command to resume."""

    def __init__(self, signal_name: str, step: int, output_dir: str):
        self.step = step
        super().__init__(
            f"{signal_name} received: stopped after step {step} with {output_dir}/checkpoint-{step} saved; "
            f"run the same command to resume (exit code {REQUEUE_EXIT_CODE} asks the launcher to requeue)"
        )


class Preemption(TrainerCallback):
    """Turns SIGTERM / SIGUSR1 into "save at the end of this step, then stop" on every rank."""

    def __init__(self, device: torch.device):
        self.device = device
        self.received: int | None = None  # the signal number, once one arrived on this rank
        self.stopped_at: int | None = None  # the step checkpointed, once the ranks agreed to stop
        self._parent = os.getppid()
        self._previous: dict[int, object] = {}

    def _on_signal(self, signum: int, frame) -> None:
        if os.getppid() != self._parent:  # the launcher died (parent-death signal): end now, save nothing
            os._exit(128 + signum)
        self.received = signum

    def on_train_begin(self, args, state, control, **kwargs):
        if threading.current_thread() is threading.main_thread():  # signal handlers live in the main thread
            for sig in SIGNALS:
                self._previous[sig] = signal.signal(sig, self._on_signal)

    def on_train_end(self, args, state, control, **kwargs):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= state.max_steps:  # the run ends here anyway, with its final model
            return control
        flag = torch.tensor([0.0 if self.received is None else float(self.received)], device=self.device)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        if flag.item():
            self.received = int(flag.item())
            self.stopped_at = state.global_step
            control.should_save = True
            control.should_training_stop = True
        return control

    def raise_if_preempted(self, output_dir: str) -> None:
        """After `Trainer.train`: `Preempted` if it stopped on a signal (its checkpoint is written)."""
        if self.stopped_at is not None:
            raise Preempted(signal.Signals(self.received).name, self.stopped_at, output_dir)
