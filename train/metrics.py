"""Training metrics logged with every loss: throughput (tokens/s, samples/s), achieved TFLOPs per device and
MFU (FLOPs per token: `plait.train.flops`), plus the hyper-connection composite gain when the model has
one."""

from __future__ import annotations

import time

import torch
from torch import nn
from transformers import TrainerCallback

from plait.modeling.diagnostics import residual_mixing

from .flops import flops_per_token  # noqa: F401  (re-exported: the trainer's and the benchmarks' import)

# Dense (no sparsity) peak TFLOPs per device by precision; the first name contained in the device name wins.
PEAK_TFLOPS: list[tuple[str, dict[str, float]]] = [
    ("H200", {"bf16": 989.4, "fp16": 989.4, "fp32": 67.0}),
    ("H100 PCIe", {"bf16": 756.0, "fp16": 756.0, "fp32": 51.0}),
    ("H100", {"bf16": 989.4, "fp16": 989.4, "fp32": 67.0}),
    ("B200", {"bf16": 2250.0, "fp16": 2250.0, "fp32": 80.0}),
    ("A100", {"bf16": 312.0, "fp16": 312.0, "fp32": 19.5}),
    ("L40S", {"bf16": 362.0, "fp16": 362.0, "fp32": 91.6}),
    ("A10G", {"bf16": 70.0, "fp16": 70.0, "fp32": 35.0}),
    ("RTX 4090", {"bf16": 165.2, "fp16": 165.2, "fp32": 82.6}),
]


def device_name() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    import platform

    return f"cpu ({platform.processor() or platform.machine()})"


def peak_tflops(precision: str, override: float | None = None) -> float | None:
    """Per-device peak for MFU: the recipe's override, else the table entry for this device, else None."""
    if override is not None:
        return override
    name = device_name()
    for key, peaks in PEAK_TFLOPS:
        if key in name:
            return peaks[precision]
    return None


def composite_gain(model: nn.Module, probe: torch.Tensor | None) -> dict[str, float]:
    """mHC's composite gain of the residual mixing on one training example (`probe`, the model's main input,
    `plait.modeling.diagnostics`): the max absolute row (forward) and column (backward) sums of the product of
    H_res over depth. Empty for a plain residual. Every rank runs it (a ZeRO-3 forward needs all ranks)."""
    if probe is None or getattr(model.config, "residual", "plain") == "plain":
        return {}
    gain = residual_mixing(model, **{model.main_input_name: probe}).composite_gain
    return {f"hc/composite_gain_{name}": value for name, value in gain.items()}


class Clock(TrainerCallback):
    """Marks when the first step starts so the first log's throughput excludes set-up time, and counts the
    tokens this rank fed since the last mark (`count`): text batches padded to their longest sequence hold
    fewer than `seq_len` tokens per sample."""

    def __init__(self):
        self.mark: float | None = None
        self.step = 0
        self.counted = 0

    def on_step_begin(self, args, state, control, **kwargs):
        if self.mark is None:
            self.mark, self.step = time.perf_counter(), state.global_step

    def count(self, tokens: int) -> None:
        if self.mark is not None:
            self.counted += tokens

    def throughput(
        self, global_step: int, tokens_per_step: int, tokens_per_sample: int, world_size: int = 1
    ) -> dict[str, float]:
        """Tokens and samples per second since the last call (empty before the first step), then re-mark.
        Tokens are the counted ones (this rank's times `world_size`) when any were, else `tokens_per_step`
        per step."""
        if self.mark is None:
            return {}
        now = time.perf_counter()
        steps = global_step - self.step
        out = {}
        if steps > 0:
            tokens = self.counted * world_size if self.counted else steps * tokens_per_step
            samples = steps * tokens_per_step / tokens_per_sample
            out = {"tokens_per_s": tokens / (now - self.mark), "samples_per_s": samples / (now - self.mark)}
        self.mark, self.step, self.counted = now, global_step, 0
        return out
