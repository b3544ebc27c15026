"""The engine a run actually gets from its launcher, FSDP2 on CPU included, and the line that names it.

The engine comes from how the process is started (`accelerate launch --config_file launch/accelerate/<x>.yaml`
sets it), and `Trainer` reads it from Accelerate's state. One gap is filled here: Accelerate only knows FSDP
on accelerators. Launched on CPU it drops the FSDP plugin and runs `MULTI_CPU`, which `Trainer` wraps in DDP,
so `fsdp.yaml` would silently train unsharded. torch's FSDP2 (`fully_shard`) itself works on a CPU device
mesh with gloo, so `enable_fsdp2_on_cpu` puts the launcher's FSDP2 plugin back into Accelerate's state. From
there the run takes the very path it takes on GPUs: Accelerate's `fsdp2_prepare_model` shards every
`PlaitBlock` and the root, `Trainer` writes sharded `torch.distributed.checkpoint` checkpoints and restores
them on resume.
"""

from __future__ import annotations

import os

import torch
from accelerate.state import PartialState
from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

from .errors import RunError


def fsdp_requested() -> bool:
    """The launcher's config asked for FSDP (`distributed_type: FSDP` sets this variable)."""
    return os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"


def refuse_fsdp1_on_cpu() -> None:
    """FSDP1 has no CPU path (Accelerate's plugin raises deep inside `Trainer`): a clear error before any
    work."""
    version = os.environ.get("FSDP_VERSION", "1")  # as the launcher sets it from `fsdp_version`
    if fsdp_requested() and not torch.cuda.is_available() and version != "2":
        raise RunError(
            f"fsdp_version={version} cannot shard on CPU (only FSDP2 runs on a CPU device mesh); set "
            "fsdp_version: 2 in the launcher config, as launch/accelerate/fsdp.yaml does"
        )


def enable_fsdp2_on_cpu(accelerator) -> bool:
    """Turn a CPU launch that asked for FSDP2 back into FSDP2 (see the module docstring); True if it did."""
    state = accelerator.state
    if not fsdp_requested() or state.distributed_type != DistributedType.MULTI_CPU:
        return False
    plugin = FullyShardedDataParallelPlugin()  # from the launcher's FSDP_* variables, as Accelerate builds it
    if state.mixed_precision != "no":
        plugin.set_mixed_precision(state.mixed_precision)
    state.distributed_type = DistributedType.FSDP
    state.fsdp_plugin = plugin
    # as Accelerate does at the end of its own set-up: each later `AcceleratorState()` re-reads this
    PartialState._shared_state["distributed_type"] = DistributedType.FSDP
    return True


def describe_engine(accelerator, precision: str) -> str:
    """One line: the engine, world size and precision that actually run (from Accelerate's state). A launcher
    that asked for FSDP and got another engine is an error: the run would not shard."""
    state = accelerator.state
    if fsdp_requested() and state.distributed_type != DistributedType.FSDP:
        raise RunError(
            f"the launcher asked for FSDP but Accelerate runs {state.distributed_type.value} here: the run "
            "would not shard"
        )
    engine = state.distributed_type.value
    if state.deepspeed_plugin is not None:
        engine += f" ZeRO-{state.deepspeed_plugin.zero_stage}"
    if state.distributed_type == DistributedType.FSDP:
        plugin = state.fsdp_plugin
        engine = f"FSDP{plugin.fsdp_version} ({plugin.state_dict_type.name.lower()} checkpoints)"
    return f"engine {engine}, world size {state.num_processes}, precision {precision}"
