"""A restarted round of an elastic job never sees the keys of the round before it: the agent's store outlives
restarts (static rendezvous), so the workers' `env://` store is namespaced by `TORCHELASTIC_RESTART_COUNT`."""

from datetime import timedelta

from torch.distributed import TCPStore
from torch.distributed.rendezvous import _rendezvous_handlers, rendezvous

from plait.train.restart_store import namespace_by_restart


def worker_store(monkeypatch, restart: int):
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", str(restart))
    store, _, _ = next(rendezvous("env://", rank=0, world_size=1, timeout=timedelta(seconds=10)))
    return store


def test_each_restart_has_its_own_keys(monkeypatch):
    agent = TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False)  # the agent's store
    monkeypatch.setitem(_rendezvous_handlers, "env", _rendezvous_handlers["env"])  # restored afterwards
    monkeypatch.setenv("TORCHELASTIC_USE_AGENT_STORE", "True")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(agent.port))
    assert namespace_by_restart()
    assert namespace_by_restart()  # twice in one process wraps once
    worker_store(monkeypatch, 0).set("rank_1_address", "the killed worker's")
    assert not worker_store(monkeypatch, 1).check(["rank_1_address"])
    assert worker_store(monkeypatch, 0).get("rank_1_address") == b"the killed worker's"


def test_left_alone_outside_an_elastic_agent(monkeypatch):
    monkeypatch.delenv("TORCHELASTIC_USE_AGENT_STORE", raising=False)
    handler = _rendezvous_handlers["env"]
    assert not namespace_by_restart()
    assert _rendezvous_handlers["env"] is handler
