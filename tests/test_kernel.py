"""Service container, module framework and event bus."""
import pytest
import trio
import trio.testing

from galaxynode.container import Container, ContainerError, MissingService
from galaxynode.events import EventBus
from galaxynode.modules import Kernel, Module, StartupError


def make(name, requires=(), log=None, fail=False, task=None, provides=()):
    class M(Module):
        async def start(self, ctx):
            log.append(f"start {name}")
            if fail:
                raise RuntimeError(f"{name} broke")
            for p in provides:
                ctx.container.register(p, name)
            for r in requires:
                assert r in ctx.container or not provides
            if task:
                ctx.nursery.start_soon(task)

        async def stop(self):
            log.append(f"stop {name}")
    M.name, M.requires, M.provides = name, tuple(requires), tuple(provides)
    return M()


def test_container():
    c = Container()
    c.register("bus", 1)
    assert c.get("bus") == 1 and "bus" in c and c.names() == ["bus"]
    with pytest.raises(ContainerError):
        c.register("bus", 2)
    with pytest.raises(MissingService, match="registered: bus"):
        c.get("nope")


async def test_diamond_order_and_reverse_stop():
    log = []
    mods = [make("d", ["b", "c"], log), make("b", ["a"], log), make("c", ["a"], log), make("a", [], log)]
    kernel = Kernel(mods)
    async with kernel.run():
        assert log == ["start a", "start b", "start c", "start d"]
        assert kernel.started == ["a", "b", "c", "d"]
    assert log[4:] == ["stop d", "stop c", "stop b", "stop a"]
    assert kernel.started == []


async def test_services_visible_to_dependents():
    seen = []

    class A(Module):
        name, provides = "a", ("svc",)

        async def start(self, ctx):
            ctx.container.register("svc", 42)

    class B(Module):
        name, requires = "b", ("a",)

        async def start(self, ctx):
            seen.append(ctx.container.get("svc"))

    async with Kernel([B(), A()]).run() as container:
        assert container.get("svc") == 42
    assert seen == [42]


@pytest.mark.parametrize("mods, match", [
    (lambda log: [make("a", ["b"], log), make("b", ["a"], log)], r"cycle: a -> b -> a"),
    (lambda log: [make("a", ["zz"], log)], r"'a' requires 'zz'"),
    (lambda log: [make("a", [], log), make("a", [], log)], r"two modules are named 'a'"),
])
async def test_graph_errors(mods, match):
    with pytest.raises(StartupError, match=match):
        async with Kernel(mods([])).run():
            pass


async def test_failure_during_start_stops_started_modules():
    log = []
    mods = [make("a", [], log), make("b", ["a"], log), make("c", ["b"], log, fail=True), make("d", ["c"], log)]
    with pytest.raises(StartupError, match="'c' failed to start: c broke"):
        async with Kernel(mods).run():
            pytest.fail("body must not run")
    assert log == ["start a", "start b", "start c", "stop b", "stop a"]


async def test_cancellation_stops_everything_in_reverse():
    log = []
    running = []

    async def forever():
        running.append(1)
        try:
            await trio.sleep_forever()
        finally:
            log.append("task cancelled")
    with trio.move_on_after(0.05):
        async with Kernel([make("a", [], log, task=forever), make("b", ["a"], log)]).run():
            await trio.sleep_forever()
    assert running == [1]
    # an outer cancel reaches every task at once; the modules still stop in reverse order
    assert [x for x in log if x != "task cancelled"] == ["start a", "start b", "stop b", "stop a"]
    assert "task cancelled" in log


async def test_task_crash_after_start_tears_down_cleanly():
    log = []

    async def crash():
        await trio.sleep(0.01)
        raise ValueError("boom")
    with pytest.raises(ValueError, match="boom"):
        async with Kernel([make("a", [], log), make("b", ["a"], log, task=crash), make("c", ["b"], log)]).run():
            await trio.sleep_forever()
    assert log[3:] == ["stop c", "stop b", "stop a"]


async def test_a_stuck_stop_is_abandoned_reported_and_the_rest_still_stop(autojump_clock, caplog):
    """A module whose stop() never returns is cancelled after stop_timeout (virtual time: the clock jumps),
    the abandonment is logged, and the modules started before it are still stopped."""
    log = []

    class Stuck(Module):
        name = "stuck"

        async def stop(self):
            log.append("stop stuck")
            await trio.sleep_forever()
    kernel = Kernel([make("a", log=log), Stuck()], stop_timeout=7.5)
    with trio.fail_after(60):  # virtual seconds: a stop that is never abandoned fails here, not hangs
        async with kernel.run():
            start = trio.current_time()
    assert trio.current_time() - start == pytest.approx(7.5)
    assert log == ["start a", "stop stuck", "stop a"] and kernel.started == []
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warnings == ["module stuck did not stop within 7.5s; cancelling it"]


# --- event bus ---------------------------------------------------------------------------------

@pytest.mark.parametrize("pattern, topic, hit", [
    ("node.joined", "node.joined", True),
    ("node.joined", "node.left", False),
    ("node.*", "node.joined", True),
    ("node.*", "node.joined.extra", False),
    ("node.*", "node", False),
    ("*.joined", "node.joined", True),
    ("node.#", "node", True),
    ("node.#", "node.a.b.c", True),
    ("node.**", "node.a", True),
    ("#", "anything.at.all", True),
    ("peer.#", "node.joined", False),
])
def test_pattern_matching(pattern, topic, hit):
    bus = EventBus()
    sub = bus.subscribe([pattern])
    bus.publish(topic, {})
    assert (len(sub._queue) == 1) is hit
    sub.close()


@pytest.mark.parametrize("bad", ["", "Node.x", "node..x", "node.#.x", "a b", "x" * 200])
def test_bad_patterns_rejected(bad):
    with pytest.raises(ValueError):
        EventBus().subscribe([bad])


def test_bad_topic_rejected():
    with pytest.raises(ValueError):
        EventBus().publish("node.*", {})


async def test_slow_subscriber_does_not_block_fast_one():
    bus = EventBus(queue_size=8)
    slow = bus.subscribe(["node.#"])             # never reads
    fast = bus.subscribe(["node.#"], queue_size=1000)
    got = []
    async with trio.open_nursery() as nursery:
        async def reader():
            async for ev in fast:
                got.append(ev.data["i"])
        nursery.start_soon(reader)
        for i in range(500):
            bus.publish("node.joined", {"i": i})   # sync: cannot block
            if i % 50 == 0:
                await trio.sleep(0)
        await trio.testing.wait_all_tasks_blocked()
        fast.close()
    assert got == list(range(500))
    assert slow.dropped == 492 and len(slow._queue) == 8
    assert [e.data["i"] for e in slow._queue] == list(range(492, 500))   # oldest dropped
    assert bus.dropped == 492
    slow.close()


async def test_disconnect_policy_ends_iteration():
    bus = EventBus()
    sub = bus.subscribe(["a"], queue_size=2, overflow="disconnect")
    for _ in range(3):
        bus.publish("a", {})
    assert sub.disconnected and sub.dropped == 1
    assert [e async for e in sub] != None  # drains what was queued, then ends
    bus.publish("a", {})
    assert bus.subscribers == 0


async def test_unsubscribe_and_close_end_iteration():
    bus = EventBus()
    with bus.subscribe(["x.*"]) as sub:
        bus.publish("x.y", {"n": 1})
        assert (await sub.receive()).data == {"n": 1}
    bus.publish("x.y", {})
    assert sub.delivered == 1 and bus.subscribers == 0
    async with trio.open_nursery() as nursery:
        sub2 = bus.subscribe(["x.*"])
        done = []

        async def it():
            async for _ in sub2:
                pass
            done.append(True)
        nursery.start_soon(it)
        await trio.testing.wait_all_tasks_blocked()
        sub2.close()
    assert done == [True]


def test_relayed_event_keeps_identity():
    bus = EventBus()
    sub = bus.subscribe(["node.#"])
    ev = bus.publish("node.joined", {"k": 1}, event_id=b"i" * 16, origin=b"o" * 32, ts=5, hops=2)
    assert (ev.id, ev.origin, ev.ts, ev.hops) == (b"i" * 16, b"o" * 32, 5, 2)
    assert sub._queue[0] is ev
    sub.close()


def test_many_subscribers_publish():
    bus = EventBus(queue_size=4)
    subs = [bus.subscribe([f"t.s{i}"]) for i in range(1000)] + [bus.subscribe(["t.*"]) for _ in range(10)]
    for i in range(1000):
        bus.publish(f"t.s{i}", {})
    assert all(s.dropped == 0 and len(s._queue) == 1 for s in subs[:1000])
    assert all(s.dropped == 996 for s in subs[1000:])
    for s in subs:
        s.close()
    assert bus.subscribers == 0
