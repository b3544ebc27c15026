"""Hangs: a rank that stops taking part in the collectives turns into an error within
`train.collective_timeout` seconds, naming the rank that fell behind and what it was doing.

The timeout itself is torch.distributed's: the process group is created with it (`TrainingArguments`'
`ddp_timeout`), so a collective that waits longer raises on the ranks that wait. What they cannot tell is
who they waited for. Each rank therefore posts a heartbeat in the job's c10d store (the rendezvous store
every launcher already runs): a counter that advances at the same points on every rank (step begin, start
and end of each training forward, optimizer step, step end) and a description of that point. When a
collective times out, the waiting rank reads every rank's heartbeat and names those whose counter is behind
the furthest one.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from datetime import timedelta

import torch
from accelerate.state import PartialState
from transformers import TrainerCallback

from .errors import RunError


def set_collective_timeout(seconds: int) -> None:
    """Before `TrainingArguments` is built. On GPU it creates the process group with its `ddp_timeout`; on
    CPU (gloo) it leaves the timeout out, so the group is created here, with it, as `TrainingArguments`
    would create it otherwise (Accelerate's state is a singleton: the later call finds it made)."""
    if not torch.cuda.is_available():
        PartialState(cpu=True, timeout=timedelta(seconds=seconds))


def _store():
    """The default process group's store, or None (one process, or a backend without one)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return None
    with contextlib.suppress(Exception):  # a private accessor: without it, the error names no rank
        return torch.distributed.distributed_c10d._get_default_store()
    return None


class Heartbeat(TrainerCallback):
    """Posts this rank's progress to the store; `behind()` names the ranks that are behind."""

    def __init__(self, timeout_s: int):
        self.timeout_s = timeout_s
        self.count = 0
        self.doing = "starting"
        self.step = 0
        self.store = None
        self.rank, self.world_size = 0, 1

    def beat(self, doing: str) -> None:
        self.count += 1
        self.doing = doing
        if self.store is not None:
            self.store.set(f"plait/heartbeat/{self.rank}", json.dumps([self.count, doing, time.time()]))

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.store = _store()
        self.rank, self.world_size = args.process_index, args.world_size
        if model is not None:
            model.register_forward_pre_hook(self._forward)
            model.register_forward_hook(self._backward)
        self.beat(f"step {state.global_step + 1}: starting")

    def _forward(self, module, inputs):
        if module.training:
            self.beat(f"step {self.step}: forward")

    def _backward(self, module, inputs, output):
        if module.training:
            self.beat(f"step {self.step}: backward")

    def on_step_begin(self, args, state, control, **kwargs):
        self.step = state.global_step + 1
        self.beat(f"step {self.step}: starting")

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        self.beat(f"step {self.step}: optimizer step")

    def on_step_end(self, args, state, control, **kwargs):
        self.beat(f"after step {self.step}: logging, checkpointing or evaluating")

    def behind(self) -> str:
        """Which ranks are behind the furthest one, and what each last reported."""
        if self.store is None:
            return "no rank heartbeats to compare"
        now, beats = time.time(), {}
        for rank in range(self.world_size):
            key = f"plait/heartbeat/{rank}"
            with contextlib.suppress(Exception):
                if self.store.check([key]):
                    beats[rank] = json.loads(self.store.get(key))
        furthest = max((count for count, _, _ in beats.values()), default=0)
        late = [
            f"rank {rank} (last seen {now - at:.0f} s ago at '{doing}')"
            for rank, (count, doing, at) in sorted(beats.items())
            if count < furthest
        ]
        late += [f"rank {rank} (never reported)" for rank in range(self.world_size) if rank not in beats]
        if not late:
            return "every rank reported the same point; one of them is stuck inside it"
        return "behind: " + ", ".join(late)

    @contextlib.contextmanager
    def named_on_timeout(self) -> Iterator[None]:
        """Turns a collective's timeout into a RunError naming the ranks that are behind."""
        try:
            yield
        except RuntimeError as e:  # torch.distributed.DistBackendError is one
            if "timed out" not in str(e).lower():
                raise
            raise RunError(
                f"rank {self.rank} waited more than train.collective_timeout={self.timeout_s} s for the "
                f"other ranks at '{self.doing}'; {self.behind()}"
            ) from e
