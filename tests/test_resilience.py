"""Every background loop survives an exception injected into its step: the loop goes on (next tick or
redial), the failure is logged once per kind and counted per task, and what it serves still works
once the fault is gone (issue 12 item 1: no input-provoked exception stops a task or start-up)."""
from __future__ import annotations

import logging

import pytest
import trio

from galaxynode import mainnet as mainnet_mod
from galaxynode import peering as peering_mod
from galaxynode.container import Container
from galaxynode.descriptor import DescriptorBook, DescriptorIssuer
from galaxynode.mainnet import Announcer
from galaxynode.metrics import DaemonCollector
from galaxynode.peering import PeerManager
from galaxynode.registry import LeaseTable, Registry
from galaxynode.resilience import TaskFailures

NET = "resilience"
FAULTS = 3  # the injected fault strikes this many times, then the step works again


class Fault:
    """Wraps a callable: raises for the first `times` calls, then behaves."""

    def __init__(self, fn=None, times: int = FAULTS, exc: type[Exception] = ValueError):
        self.fn, self.left, self.exc, self.calls = fn, times, exc, 0

    def __call__(self, *a, **kw):
        self.calls += 1
        if self.left:
            self.left -= 1
            raise self.exc("injected")  # one code line: one kind
        return self.fn(*a, **kw) if self.fn else None


def logged(caplog, task: str) -> int:
    return sum(f"background task {task} failed" in r.getMessage() for r in caplog.records
               if r.levelno >= logging.ERROR)


async def wait_for(predicate, timeout: float = 5.0) -> None:
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(0.005)


# --- the helper ---------------------------------------------------------------------------------

def test_guard_counts_every_failure_and_logs_each_kind_once(caplog):
    failures = TaskFailures(logging.getLogger("test.resilience"))
    fault = Fault(times=5)
    for _ in range(5):
        with failures.guard("t"):
            fault()
    with failures.guard("t"):
        raise KeyError("another kind (type and line)")
    assert failures.counts["t"] == 6
    assert logged(caplog, "t") == 2
    with pytest.raises(KeyboardInterrupt), failures.guard("t"):  # BaseExceptions (Cancelled) pass
        raise KeyboardInterrupt


# --- each loop ----------------------------------------------------------------------------------

async def test_expiry_loop_survives_and_still_expires(caplog):
    now = [1_000_000]
    registry = Registry(LeaseTable(min_ttl=1, default_ttl=1), clock=lambda: now[0], expiry_interval=0.01)
    registry.expire = Fault(registry.expire)
    async with trio.open_nursery() as nursery:
        await nursery.start(registry.run)
        await wait_for(lambda: registry.expire.calls > FAULTS)
        await registry.join(b"k" * 32, ttl=1)
        now[0] += 2000
        await wait_for(lambda: len(registry.table) == 0)
        nursery.cancel_scope.cancel()
    assert registry.task_failures.counts["registry.expiry"] == FAULTS and registry.expired == 1
    assert logged(caplog, "registry.expiry") == 1


def _manager(identity, **kw) -> PeerManager:
    registry = Registry(LeaseTable())
    issuer = DescriptorIssuer(identity, name="p", network=NET, endpoints=["ws://127.0.0.1:7000"], ttl_ms=60_000)
    return PeerManager(identity, network=NET, registry=registry, bus=None, pool_handler=lambda: None,
                       issuer=issuer, book=DescriptorBook(), descriptor_interval=0.01, reconnect_min=0.01,
                       reconnect_max=0.02, **kw)


async def test_descriptor_rebuild_failing_at_start_up_and_later_does_not_stop_peering(caplog, identity_a):
    mgr = _manager(identity_a)
    mgr.issuer.current = Fault(mgr.issuer.current)
    async with trio.open_nursery() as nursery:
        await nursery.start(mgr.run)  # the first rebuild (at start-up) fails: started all the same
        await wait_for(lambda: mgr._own is not None)
        nursery.cancel_scope.cancel()
    assert mgr.task_failures.counts["peering.descriptor"] == FAULTS
    assert logged(caplog, "peering.descriptor") == 1


async def test_peer_dial_failure_is_redialled(caplog, monkeypatch, identity_a):
    mgr = _manager(identity_a, static=[("ws://127.0.0.1:9", None)])
    monkeypatch.setattr(peering_mod, "connect", Fault(times=10**6, exc=RuntimeError))
    async with trio.open_nursery() as nursery:
        await nursery.start(mgr.run)
        await wait_for(lambda: mgr.task_failures.counts["peering.dial"] >= FAULTS)
        nursery.cancel_scope.cancel()
    assert mgr.static[0].last_error == "internal error (logged)"
    assert logged(caplog, "peering.dial") == 1


def _announcer(identity, tmp_path, **kw) -> Announcer:
    issuer = DescriptorIssuer(identity, name="p", network=NET, endpoints=["ws://127.0.0.1:7000"], ttl_ms=60_000)
    return Announcer(identity, issuer, mainnet_url="ws://127.0.0.1:9", network=NET, registry=Registry(LeaseTable()),
                     book=DescriptorBook(), book_path=tmp_path / "book", backoff_min=0.01, backoff_max=0.02, **kw)


async def test_announcer_survives_load_session_and_discovery_failures(caplog, monkeypatch, tmp_path, identity_a):
    ann = _announcer(identity_a, tmp_path, on_descriptors=Fault(times=1, exc=RuntimeError))
    monkeypatch.setattr(DescriptorBook, "from_disk", Fault(times=1, exc=RuntimeError))
    monkeypatch.setattr(mainnet_mod, "connect", Fault(times=10**6, exc=KeyError))
    async with trio.open_nursery() as nursery:
        await nursery.start(ann.run)  # loading the saved book failed: started all the same
        await wait_for(lambda: ann.task_failures.counts["mainnet.announce"] >= FAULTS)
        nursery.cancel_scope.cancel()
    ann._hand_over([])
    ann._hand_over([])
    assert ann.state == "backoff" and ann.failures >= FAULTS
    counts = ann.task_failures.counts
    assert counts["mainnet.load"] == 1 and counts["mainnet.discover"] == 1 and counts["mainnet.announce"] >= FAULTS
    assert [logged(caplog, t) for t in ("mainnet.load", "mainnet.announce", "mainnet.discover")] == [1, 1, 1]


def test_failures_are_exported_as_a_metric(identity_a, tmp_path):
    c = Container()
    registry = Registry(LeaseTable())
    registry.task_failures.counts["registry.expiry"] = 2
    ann = _announcer(identity_a, tmp_path)
    ann.task_failures.counts["mainnet.announce"] = 5
    c.register("registry", registry)
    c.register("announcer", ann)
    [family] = [f for f in DaemonCollector(c, network=NET, role="pool", name="p", key="k").collect()
                if f.name == "galaxynode_task_failures"]
    assert {s.labels["task"]: s.value for s in family.samples if s.name.endswith("_total")} == {
        "mainnet.announce": 5, "registry.expiry": 2}
