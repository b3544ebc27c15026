"""Asynchronous FSDP2 checkpoints: training goes on while the model and optimizer shards are written.

On a checkpoint step each rank copies its model and optimizer shards into CPU memory (the staging: the only
part training waits for) and `torch.distributed.checkpoint.async_save` writes the copies from a background
thread while the next steps run. The files are Accelerate's FSDP layout (`save_fsdp_model` /
`save_fsdp_optimizer` with sharded state dicts: `pytorch_model_fsdp_0/` holding {"model": ...} and
`optimizer_0/` holding {"optimizer": ...}), so `Trainer`'s resume reads them unchanged.

Atomicity is kept by `plait.train.checkpointing`: the checkpoint stays under `.staging/` until the write is
complete, then the main process renames it into place. Complete means the main process's saves returned:
`torch.distributed.checkpoint` gathers every rank's write results on rank 0 before rank 0 writes the
`.metadata` file, so by then every rank's shards are on disk. A crash (SIGKILL included) during the
background write leaves the previous checkpoint as the latest; the next start removes `.staging/`.

The background saves run collectives (planning, the gather of write results). A thread must not share a
process group with the training's collectives, nor with the other save's thread, so each of the two saves
gets a gloo group of its own, created once on the first checkpoint (on GPUs too: async saving stages to CPU).
The staging buffers are kept between checkpoints (pinned on CUDA), so later checkpoints allocate nothing.
"""

from __future__ import annotations

import os
from concurrent.futures import Future
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.staging import DefaultStager, StagingOptions
from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

from .errors import RunError

# Accelerate's names for the sharded FSDP checkpoint folders (accelerate.utils.constants), which its loaders
# (called by `Trainer` on resume) look for.
MODEL_DIR, OPTIMIZER_DIR = "pytorch_model_fsdp_0", "optimizer_0"


def applies(trainer) -> bool:
    """The run saves FSDP2 sharded checkpoints, the case written asynchronously."""
    plugin = getattr(trainer.accelerator.state, "fsdp_plugin", None)
    return (
        trainer.is_fsdp_enabled
        and plugin is not None
        and plugin.fsdp_version == 2
        and "SHARDED_STATE_DICT" in str(plugin.state_dict_type)
    )


class AsyncShardedSave:
    """Writes one checkpoint's model and optimizer shards in the background; one checkpoint at a time."""

    def __init__(self, timeout_s: float):
        self.timeout = timedelta(seconds=timeout_s)
        self.groups: dict[str, dist.ProcessGroup] = {}
        self.stagers: dict[str, DefaultStager] = {}
        self.futures: list[Future] = []
        self.checkpoint = ""  # the folder being written, for errors

    @property
    def pending(self) -> bool:
        return bool(self.futures)

    def start(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, checkpoint_dir: str) -> None:
        """Stage this rank's shards (training waits for this copy only) and start writing them."""
        if self.pending:
            raise RuntimeError("the previous asynchronous checkpoint is still being written")
        states = {
            MODEL_DIR: {"model": get_model_state_dict(model)},
            OPTIMIZER_DIR: {"optimizer": get_optimizer_state_dict(model, optimizer)},
        }
        self.checkpoint = checkpoint_dir
        for folder, state in states.items():
            if folder not in self.groups:  # a collective: every rank reaches its first checkpoint together
                self.groups[folder] = dist.new_group(backend="gloo", timeout=self.timeout)
            if folder not in self.stagers:
                options = StagingOptions(
                    use_pinned_memory=torch.cuda.is_available(),
                    use_shared_memory=False,
                    use_async_staging=False,  # the copy completes before training touches the weights again
                    use_non_blocking_copy=False,
                )
                self.stagers[folder] = DefaultStager(options)
            path = os.path.join(checkpoint_dir, folder)
            os.makedirs(path, exist_ok=True)
            self.futures.append(
                dcp.async_save(
                    state,
                    storage_writer=dcp.FileSystemWriter(path),
                    process_group=self.groups[folder],
                    async_stager=self.stagers[folder],
                )
            )

    def done(self) -> bool:
        """This rank's writes finished (on the main process: every rank's, see the module docstring)."""
        return all(f.done() for f in self.futures)

    def wait(self) -> None:
        """Block until this rank's writes finished; a failed write is a RunError."""
        futures, self.futures = self.futures, []
        errors = [f.exception() for f in futures]  # waits for each
        error = next((e for e in errors if e is not None), None)
        if error is not None:
            raise RunError(
                f"writing {self.checkpoint} in the background failed ({_causes(error)}); it was not put in "
                "place, the previous checkpoint is kept"
            ) from error

    def close(self) -> None:
        """Free the staging buffers (after the last checkpoint)."""
        for stager in self.stagers.values():
            stager.close()
        self.stagers.clear()


def _causes(error: BaseException) -> str:
    """One line: each failing rank's own error (a CheckpointException's text is every rank's traceback)."""
    if isinstance(error, CheckpointException):
        return "; ".join(
            f"rank {rank}: {type(cause).__name__}: {cause}"
            for rank, (cause, _) in sorted(error.failures.items())
        )
    return f"{type(error).__name__}: {error}"
