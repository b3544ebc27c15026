"""Loss spikes: skip the update of a step whose loss or gradient norm is far above its recent values.

The rule (`optim.skip_step`, as OLMo-core's skip-step optimizer and Levanter do): keep the last
`optim.skip_step_window` accepted steps' loss and gradient norm; once half the window is filled, a step whose
loss or pre-clipping gradient norm exceeds the window's mean by more than `optim.skip_step_sigmas` standard
deviations is skipped. Skipping drops the step's gradients before the optimizer runs: torch's optimizers
leave a parameter without a gradient untouched (weights, moments and step count), so the weights are exactly
those before the step, while the learning-rate schedule and the data move on. Skipped steps are counted
(`skipped_steps` in every log line), each forces a log line of its own marked `skipped: 1`, and more than
`optim.skip_step_max_in_row` in a row stop the run with an error (the loss has moved, not spiked).

The loss is the mean over ranks (every rank decides alike); the window is saved in each checkpoint (the
`stateful_callbacks` of `trainer_state.json`), so a resumed run decides as the uninterrupted one would.
Non-finite values are not spikes: they stop the run as before (`PlaitTrainer`). DeepSpeed steps its
optimizer inside its engine, out of reach: the rule is refused there.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any

import torch
from transformers import TrainerCallback
from transformers.trainer_callback import ExportableState

from .errors import RunError


class SpikeRule(TrainerCallback, ExportableState):
    """The window of accepted (loss, grad norm) pairs and the skip decision; a callback only to be saved and
    restored with the checkpoints."""

    def __init__(self, sigmas: float = 6.0, window: int = 128, max_in_row: int = 16):
        self.sigmas, self.window, self.max_in_row = sigmas, window, max_in_row
        self.history: deque[tuple[float, float]] = deque(maxlen=window)
        self.skipped = 0  # skipped steps of the whole run
        self.in_row = 0  # skipped steps since the last accepted one
        self.pending_skip = False  # the step being logged was skipped

    def check(self, step: int, loss: float, grad_norm: float) -> bool:
        """True: skip this step's update. Raises RunError after too many skipped steps in a row."""
        if not (math.isfinite(loss) and math.isfinite(grad_norm)):
            return False  # the divergence check stops the run
        spike = self._spike(loss, grad_norm)
        if spike is None:
            self.history.append((loss, grad_norm))
            self.in_row = 0
            return False
        self.skipped += 1
        self.in_row += 1
        self.pending_skip = True
        if self.in_row > self.max_in_row:
            raise RunError(
                f"{self.in_row} steps in a row skipped as loss spikes (up to step {step}; last: {spike}) "
                f"exceeds optim.skip_step_max_in_row={self.max_in_row}: the loss moved for good. Lower "
                "optim.lr or resume from an earlier checkpoint"
            )
        return True

    def _spike(self, loss: float, grad_norm: float) -> str | None:
        """What exceeded its bound, or None."""
        if len(self.history) < max(2, self.window // 2):
            return None
        for name, value, column in (("loss", loss, 0), ("gradient norm", grad_norm, 1)):
            values = [entry[column] for entry in self.history]
            mean = sum(values) / len(values)
            std = math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))
            if value > mean + self.sigmas * std:
                return f"{name} {value:.4g} > mean {mean:.4g} + {self.sigmas:g} x std {std:.3g}"
        return None

    def metrics(self) -> dict[str, Any]:
        logs: dict[str, Any] = {"skipped_steps": self.skipped}
        if self.pending_skip:
            logs["skipped"] = 1
            self.pending_skip = False
        return logs

    def state(self) -> dict[str, Any]:
        return {
            "args": {"sigmas": self.sigmas, "window": self.window, "max_in_row": self.max_in_row},
            "attributes": {"history": list(self.history), "skipped": self.skipped, "in_row": self.in_row},
        }

    def on_train_begin(self, args, state, control, **kwargs):
        saved = state.stateful_callbacks.get(type(self).__name__)
        if saved:  # resuming: the window as the checkpoint left it
            attributes = saved["attributes"]
            self.history = deque((tuple(entry) for entry in attributes["history"]), maxlen=self.window)
            self.skipped, self.in_row = attributes["skipped"], attributes["in_row"]


class SkipSteps:
    """`Trainer` mixin: applies `spike_rule` (None: off) between the backward and the optimizer step."""

    spike_rule: SpikeRule | None = None

    def train(self, *args, **kwargs):
        if self.spike_rule is not None and self.is_deepspeed_enabled:
            raise RunError(
                "optim.skip_step=true does not work under DeepSpeed, which steps the optimizer inside its "
                "engine; use DDP or FSDP, or set optim.skip_step=false"
            )
        return super().train(*args, **kwargs)

    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        if self.spike_rule is not None:
            self._step_loss = getattr(self, "_step_loss", 0.0) + loss.detach().float()
        return loss

    def _get_grad_norm(self, model, grad_norm=None):
        grad_norm = super()._get_grad_norm(model, grad_norm=grad_norm)
        if self.spike_rule is None:
            return grad_norm
        loss = self.accelerator.reduce(
            torch.as_tensor(self._step_loss).reshape(1).to(self.args.device), "mean"
        )
        self._step_loss = 0.0
        norm = grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm
        if self.spike_rule.check(self.state.global_step + 1, float(loss), float(norm)):
            for p in model.parameters():
                p.grad = None
            self.control.should_log = True  # each skipped step gets a log line, marked `skipped`
        return grad_norm
