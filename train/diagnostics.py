"""Stability diagnostics: what to watch in a long run, per block, every `logging.diagnostics_every` steps.

On a diagnostics step (every `logging.every` steps unless `logging.diagnostics_every` is set; 0 turns them
off) the log line gets, for each `PlaitBlock` i:

- `grad_norm/block_i`: the L2 norm of the block's gradients as the optimizer receives them (after clipping);
- `update_ratio/block_i`: ‖ΔW‖ / ‖W‖ of the block's weights over the optimizer step (the update-to-weight
  ratio; ~1e-3 is healthy for Adam, far larger means the step size is out of hand);
- `output_rms/block_i`: the root mean square of the block's output in the step's (last) forward;

plus `pararnn/residual_max`, the largest last Newton residual max|h − f(h_prev)| of the ParaRNN mixers, next
to the hyper-connection composite gain that every log line already has (`plait.train.metrics`), and, when
the model has LSSAR attention (`attention: lssar`):

- `lssar/degenerate_rows`: the share of attention rows, over all LSSAR layers, heads, the step's forwards and
  the ranks, whose re-weighting had no key to select: no key more than 0.1% above the row mean, as for a
  collapsed (zero) query or identical keys (`plait.kernels.lssa.Rows`). A rising share is an instability
  signal;
- `lssar/degenerate_rows_max`: the worst layer's share.

Sharded weights and gradients (FSDP2) are reduced over the ranks; DeepSpeed steps inside its engine, out of
reach of the callbacks, so there only the output RMS, the residual and the degenerate rows are logged; with
`train.compile` the output RMS and the degenerate rows are left out (the hooks would break the compiled
graph, switching the counting would recompile it). The update ratio needs a copy of the weights for the
step (one model-sized buffer), the degenerate rows two counters per layer, kept as device tensors and read
once at the step's end: on diagnostics steps only, other steps cost nothing.

`plot(log_history, path)` draws `diagnostics.png` at the end of the run: the loss with skipped steps
(`plait.train.stability`) marked, the gradient norm, the per-block curves and, when logged, the degenerate
rows' shares.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from accelerate.state import AcceleratorState
from accelerate.utils import DistributedType
from transformers import TrainerCallback

from plait.modeling.block import PlaitBlock
from plait.modeling.softplus_attention import degenerate_row_counters


def _local(t: torch.Tensor) -> torch.Tensor:
    return t.to_local() if hasattr(t, "to_local") else t


def _reduce_device() -> torch.device:
    """Where a tensor goes for a collective: the rank's GPU when there is one (NCCL), else the CPU (gloo)."""
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _norms(tensors_per_block: list[list[torch.Tensor]], sharded: bool) -> list[float]:
    """The L2 norm of each block's tensors (this rank's shards summed over the ranks when `sharded`)."""
    squares = [
        sum((_local(t).float().square().sum() for t in tensors), torch.zeros(()))
        for tensors in tensors_per_block
    ]
    squares = torch.stack([torch.as_tensor(s, dtype=torch.float32).cpu() for s in squares])
    if sharded and torch.distributed.is_initialized():
        squares = squares.to(_reduce_device())
        torch.distributed.all_reduce(squares)
    return squares.sqrt().tolist()


LSSAR_KEYS = ("lssar/degenerate_rows", "lssar/degenerate_rows_max")


def _degenerate_shares(counters: list) -> dict[str, float]:
    """`lssar/degenerate_rows` over all LSSAR layers and `lssar/degenerate_rows_max`, the worst layer's share,
    from the counters' sums of this step, summed over the ranks; empty when no row was counted."""
    device = _reduce_device()
    sums = [counter.take() for counter in counters]
    table = torch.stack(  # [layers, 2]: degenerate rows, rows
        [
            torch.zeros(2, dtype=torch.int64, device=device) if s is None else torch.stack(s).to(device)
            for s in sums
        ]
    )
    if torch.distributed.is_initialized():
        torch.distributed.all_reduce(table)
    per_layer = table.tolist()
    degenerate, rows = (sum(column) for column in zip(*per_layer, strict=True))
    if not rows:
        return {}
    return dict(zip(LSSAR_KEYS, (degenerate / rows, max(d / r for d, r in per_layer if r)), strict=True))


class Diagnostics(TrainerCallback):
    """Collects the per-block diagnostics of every `every`-th step; `metrics()` hands them to its log line."""

    def __init__(self, every: int):
        self.every = every
        self.blocks: list[torch.nn.Module] = []
        self.pararnn: list[torch.nn.Module] = []
        self.lssar: list = []  # each LSSAR module's DegenerateRowCounter (plait.modeling.softplus_attention)
        self.active = False
        self.in_engine = False  # DeepSpeed: gradients and the optimizer step live inside its engine
        self.sharded = False  # FSDP2: parameters and gradients are DTensor shards
        self.before: list[list[torch.Tensor]] = []
        self.rms: dict[int, float] = {}
        self.pending: dict[str, float] = {}

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.blocks = [m for m in model.modules() if isinstance(m, PlaitBlock)]
        self.pararnn = [m for m in model.modules() if hasattr(m, "last_residual")]
        if not args.torch_compile:  # a hook with host reads would break the compiled graph at every block
            for i, block in enumerate(self.blocks):
                block.register_forward_hook(self._output_rms(i))
            self.lssar = degenerate_row_counters(model)
        self.in_engine = AcceleratorState().distributed_type == DistributedType.DEEPSPEED
        self.sharded = any(hasattr(p, "to_local") for p in model.parameters())

    def _output_rms(self, index: int):
        def hook(module, inputs, output):
            if self.active and module.training:
                out = output[0] if isinstance(output, tuple) else output
                self.rms[index] = float(out.detach().float().square().mean().sqrt())

        return hook

    def _params(self) -> list[list[torch.Tensor]]:
        return [[p for p in block.parameters() if p.requires_grad] for block in self.blocks]

    def on_step_begin(self, args, state, control, **kwargs):
        self.active = bool(self.blocks) and (state.global_step + 1) % self.every == 0
        for counter in self.lssar:
            counter.recording = self.active

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        if not self.active or self.in_engine:
            return
        params = self._params()
        grads = [[p.grad for p in block if p.grad is not None] for block in params]
        for i, norm in enumerate(_norms(grads, self.sharded)):
            self.pending[f"grad_norm/block_{i}"] = norm
        self.before = [[_local(p).detach().clone() for p in block] for block in params]

    def on_optimizer_step(self, args, state, control, **kwargs):
        if not self.active or self.in_engine:
            return
        params = self._params()
        weights = _norms(params, self.sharded)
        deltas = [
            [_local(p).detach() - b for p, b in zip(block, before, strict=True)]
            for block, before in zip(params, self.before, strict=True)
        ]
        deltas = _norms(deltas, self.sharded)
        self.before = []
        for i, (delta, weight) in enumerate(zip(deltas, weights, strict=True)):
            self.pending[f"update_ratio/block_{i}"] = delta / weight if weight else 0.0

    def on_step_end(self, args, state, control, **kwargs):
        if not self.active:
            return control
        self.active = False
        for i, rms in sorted(self.rms.items()):
            self.pending[f"output_rms/block_{i}"] = rms
        residuals = [float(m.last_residual) for m in self.pararnn if m.last_residual is not None]
        if residuals:
            self.pending["pararnn/residual_max"] = max(residuals)
        if self.lssar:
            for counter in self.lssar:
                counter.recording = False
            self.pending.update(_degenerate_shares(self.lssar))
        self.rms = {}
        control.should_log = True  # the diagnostics go out with this step's log line
        return control

    def metrics(self) -> dict[str, float]:
        pending, self.pending = self.pending, {}
        return pending


def plot(log_history: list[dict[str, Any]], path: str | Path) -> None:
    """diagnostics.png: loss (skipped steps marked), gradient norm, each per-block series and LSSAR's
    degenerate rows."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    logged = [e for e in log_history if "loss" in e]
    per_block = sorted({k.split("/")[0] for e in logged for k in e if "/block_" in k})
    panels = [("loss", "run"), ("grad_norm", "run"), *((name, "block") for name in per_block)]
    if any(LSSAR_KEYS[0] in e for e in logged):
        panels.append(("lssar", "share"))
    fig, axes = plt.subplots(len(panels), 1, figsize=(8, 2.4 * len(panels)), sharex=True, squeeze=False)
    for ax, (panel, kind) in zip(axes[:, 0], panels, strict=True):
        if kind == "run":
            points = [(e["step"], e[panel]) for e in logged if panel in e and math.isfinite(e[panel])]
            if points:
                ax.plot(*_xy(points), label=panel)
            skipped = [(e["step"], e[panel]) for e in logged if e.get("skipped") and panel in e]
            if skipped:
                ax.scatter(*_xy(skipped), color="red", marker="x", zorder=3, label="skipped step")
        elif kind == "share":  # shares in [0, 1]: a linear axis
            for key in LSSAR_KEYS:
                ax.plot(*_xy([(e["step"], e[key]) for e in logged if key in e]), label=key.split("/")[1])
            ax.set_ylim(bottom=0)
        else:
            keys = sorted({k for e in logged for k in e if k.startswith(panel + "/block_")}, key=_block_index)
            for key in keys:
                points = [(e["step"], e[key]) for e in logged if key in e]
                ax.plot(*_xy(points), label=key.split("/")[1])
            ax.set_yscale("log")
        ax.set_ylabel({"block": f"{panel} per block", "share": "LSSAR rows"}.get(kind, panel))
        ax.legend(fontsize="x-small", ncol=4)
    axes[-1, 0].set_xlabel("step")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _xy(points: list[tuple[int, float]]) -> tuple[list[int], list[float]]:
    return [x for x, _ in points], [y for _, y in points]


def _block_index(key: str) -> int:
    return int(key.rsplit("_", 1)[1])
