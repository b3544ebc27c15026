"""Restarts under torch's elastic agent: each restart's process group gets a store namespace of its own.

`torchrun` / `accelerate launch` on one node use the static rendezvous: the agent hosts one TCPStore for the
whole job, keeps it across restarts, and each worker's `env://` rendezvous connects to it without any
per-restart prefix (torch assumes a fresh store per restart, true only of the c10d rendezvous). Keys written
by the previous round therefore survive into the restarted one: a restarted rank that reads its peer's
address (gloo) or unique id (NCCL) before the restarted peer has rewritten it gets the dead worker's value,
and the process group fails to connect or hangs before training starts. Whether it happens depends on which
restarted rank gets there first, so it shows up under load. Prefixing the workers' store with
`TORCHELASTIC_RESTART_COUNT` gives each round keys of its own (heartbeats of `plait.train.hangs` included).
"""

from __future__ import annotations

import os

from torch.distributed import PrefixStore

# private: torch has no public way to wrap a registered rendezvous handler (registering a scheme again raises)
from torch.distributed.rendezvous import _rendezvous_handlers


def namespace_by_restart() -> bool:
    """Before the process group is created: wrap the `env://` rendezvous so its store is prefixed with this
    round's restart count. True where it applies (a worker of an elastic agent sharing its store)."""
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != str(True):
        return False
    original = _rendezvous_handlers["env"]
    if getattr(original, "namespaced_by_restart", False):
        return True

    def namespaced(url, **kwargs):
        prefix = f"plait/restart_{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}"
        for store, rank, world_size in original(url, **kwargs):
            yield PrefixStore(prefix, store), rank, world_size

    namespaced.namespaced_by_restart = True
    _rendezvous_handlers["env"] = namespaced
    return True
