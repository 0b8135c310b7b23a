"""Plugin resolution, supervision (restart, backoff, give-up, finish, cancel) and the audit-log plugin."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import attrs
import pytest
import trio
import trio.testing

from galaxynode.plugins import (PluginContext, PluginError, PluginSupervisor, available_plugins,
                                resolve_plugin)
from galaxynode.plugins_builtin import AuditLogPlugin, jsonable

FIXTURES = Path(__file__).parent / "fixtures"
HERE = __name__  # plugins defined in this module are addressed by dotted path


class FakeBus:
    """Just enough of the event bus: records publishes, fans out to `subscribe` patterns (`*`, `#`)."""

    @attrs.frozen
    class Event:
        topic: str
        data: dict
        id: bytes
        ts: int
        origin: bytes

    def __init__(self):
        self.published: list[tuple[str, dict]] = []
        self._subs: list[tuple[list[str], trio.MemorySendChannel]] = []

    @staticmethod
    def _match(pattern: str, topic: str) -> bool:
        p, t = pattern.split("."), topic.split(".")
        for i, seg in enumerate(p):
            if seg == "#":
                return True
            if i >= len(t) or (seg != "*" and seg != t[i]):
                return False
        return len(p) == len(t)

    def publish(self, topic, data):
        self.published.append((topic, data))
        ev = self.Event(topic, data, bytes(16), 1_700_000_000_000, b"\x01" * 32)
        for patterns, send in self._subs:
            if any(self._match(p, topic) for p in patterns):
                send.send_nowait(ev)

    def subscribe(self, patterns):
        bus = self
        send, recv = trio.open_memory_channel(100)

        class Sub:
            def __enter__(self):
                bus._subs.append((list(patterns), send))
                return self

            def __exit__(self, *exc):
                bus._subs.remove((list(patterns), send))
                send.close()
                recv.close()

            def __aiter__(self):
                return recv.__aiter__()

        return Sub()

    def drop_subscribers(self):
        for _, send in self._subs:
            send.close()

    def topics(self, prefix=""):
        return [t for t, _ in self.published if t.startswith(prefix)]


class FakeSleep:
    def __init__(self):
        self.delays: list[float] = []

    async def __call__(self, delay):
        self.delays.append(delay)
        await trio.lowlevel.checkpoint()


def contexts(bus=None, sections=None, data_dir=None):
    return lambda name: PluginContext(name=name, config=dict((sections or {}).get(name, {})), bus=bus,
                                      data_dir=data_dir)


# -- plugins addressed by dotted path from the tests ------------------------------------------------

CALLS: dict[str, int] = {}


def named(fn):
    """A short name of its own (the default for a dotted path is the module's: test_plugins)."""
    fn.name = fn.__name__
    return fn


def _count(key: str) -> int:
    CALLS[key] = CALLS.get(key, 0) + 1
    return CALLS[key]


@pytest.fixture(autouse=True)
def _reset_calls():
    CALLS.clear()
    BLOCKERS.clear()


@named
async def always_crashes(ctx):
    _count("always_crashes")
    raise RuntimeError("boom")


@named
async def crashes_twice_then_finishes(ctx):
    if _count("twice") <= 2:
        raise ValueError(f"attempt {CALLS['twice']}")


@named
async def finishes(ctx):
    _count("finishes")


@named
async def stable_then_crash(ctx):
    """Crash, crash, run 100 s then crash, crash, crash."""
    if _count("stable") == 3:
        await trio.sleep(100)
    raise RuntimeError("flaky")


@named
async def bad_config(ctx):
    _count("bad_config")
    raise PluginError("bad_config: `x` must be a number")


@named
async def group_crash(ctx):
    _count("group")

    async def fail():
        raise KeyError("inner")

    async with trio.open_nursery() as n:
        n.start_soon(fail)
        n.start_soon(trio.sleep_forever)


BLOCKERS: dict[str, str] = {}


@named
async def blocks(ctx):
    BLOCKERS[ctx.name] = "running"
    try:
        await trio.sleep_forever()
    finally:
        BLOCKERS[ctx.name] = "cancelled"


class BlockingPlugin:
    name = "blocking"

    def __init__(self, ctx):
        self.ctx = ctx

    async def run(self):
        await blocks(self.ctx)


class NoRun:
    def __init__(self, ctx):
        pass


class Empty:
    pass


class SyncRun:
    def run(self):
        pass


def sync_function(ctx):
    pass


# -- resolution ------------------------------------------------------------------------------------

def test_resolve_entry_point_and_dotted_paths():
    assert "audit-log" in available_plugins()
    assert resolve_plugin("audit-log") is AuditLogPlugin
    assert resolve_plugin("galaxynode.plugins_builtin:AuditLogPlugin") is AuditLogPlugin
    assert resolve_plugin("galaxynode.plugins_builtin.AuditLogPlugin") is AuditLogPlugin
    assert resolve_plugin(f"{HERE}:finishes") is finishes
    assert resolve_plugin(f"{HERE}:BlockingPlugin") is BlockingPlugin


@pytest.mark.parametrize("spec, message", [
    ("no-such-plugin", "unknown plugin 'no-such-plugin' (installed: "),
    ("", "unknown plugin ''"),
    ("nonexistent_pkg.mod:thing", "unknown plugin 'nonexistent_pkg.mod:thing'"),
    ("galaxynode.plugins_builtin:Nope", "has no attribute 'Nope'"),
    (f"{HERE}:Empty", "is not a plugin (it has no `async def run(self)`"),
    (f"{HERE}:SyncRun", "SyncRun.run must be `async def run(self)`"),
    (f"{HERE}:sync_function", "not a plugin"),
    (f"{HERE}:CALLS", "not a plugin"),
])
def test_resolve_errors_are_one_line(spec, message):
    with pytest.raises(PluginError) as info:
        resolve_plugin(spec)
    text = str(info.value)
    assert message in text and "\n" not in text
    if message.startswith("unknown plugin"):
        assert "audit-log" in text  # lists what is installed


def test_resolve_reports_a_broken_module(tmp_path, monkeypatch):
    (tmp_path / "gnode_broken_plugin.py").write_text("import gnode_missing_dependency\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(PluginError, match=r"cannot import gnode_broken_plugin: ModuleNotFoundError: "
                                          r".*gnode_missing_dependency"):
        resolve_plugin("gnode_broken_plugin:plugin")


def test_supervisor_reports_every_bad_spec_at_once():
    with pytest.raises(PluginError) as info:
        PluginSupervisor(["audit-log", "nope", "audit-log", f"{HERE}:Empty"], contexts())
    text = str(info.value)
    assert "unknown plugin 'nope'" in text and "'audit-log' listed twice" in text and "Empty" in text
    assert "\n" not in text


@pytest.mark.parametrize("kw", [{"max_restarts": -1}, {"backoff_base": 2.0, "backoff_max": 1.0},
                                {"backoff_base": -1.0}, {"jitter": 1.0}, {"stable_after": 0}])
def test_supervisor_rejects_bad_limits(kw):
    with pytest.raises(ValueError):
        PluginSupervisor([], contexts(), **kw)


async def test_installed_distribution_is_found_by_entry_point_and_runs(monkeypatch):
    monkeypatch.syspath_prepend(str(FIXTURES / "plugindist"))
    assert "fixture-greeter" in available_plugins()
    plugin = resolve_plugin("fixture-greeter")
    assert plugin.__module__ == "gnode_fixture_plugin"
    bus = FakeBus()
    sup = PluginSupervisor(["fixture-greeter"], contexts(bus, {"fixture-greeter": {"greeting": "hi"}}), bus=bus)
    await sup.run()
    assert bus.published == [("fixture.greeted", {"name": "fixture-greeter", "greeting": "hi"})]
    assert sup.stats["fixture-greeter"].state == "finished"


# -- supervision -----------------------------------------------------------------------------------

async def test_crashing_plugin_restarts_with_backoff_then_fails_while_sibling_runs(caplog):
    bus, sleep = FakeBus(), FakeSleep()
    crasher, healthy = f"{HERE}:always_crashes", f"{HERE}:BlockingPlugin"
    sup = PluginSupervisor([crasher, healthy], contexts(bus), max_restarts=4, backoff_base=0.5,
                           backoff_max=3.0, jitter=0.0, bus=bus, sleep=sleep)
    with caplog.at_level(logging.INFO, logger="galaxynode.plugins"):
        async with trio.open_nursery() as nursery:
            await nursery.start(sup.run)
            await trio.testing.wait_all_tasks_blocked()
            st = sup.stats["always_crashes"]
            assert (st.state, st.crashes, st.restarts, st.failures) == ("failed", 5, 4, 5)
            assert st.last_error == "RuntimeError: boom"
            assert sleep.delays == [0.5, 1.0, 2.0, 3.0]  # doubled, capped at backoff_max
            assert CALLS["always_crashes"] == 5
            # the supervisor and the sibling are untouched
            assert sup.stats["blocking"].state == "running" and BLOCKERS["blocking"] == "running"
            nursery.cancel_scope.cancel()
    assert BLOCKERS["blocking"] == "cancelled" and sup.stats["blocking"].state == "stopped"
    assert bus.topics("plugin.") == ["plugin.crashed"] * 4 + ["plugin.failed"]
    crashed = [d for t, d in bus.published if t == "plugin.crashed"]
    assert [d["retry_in"] for d in crashed] == [0.5, 1.0, 2.0, 3.0]
    assert bus.published[-1][1] == {"name": "always_crashes", "error": "RuntimeError: boom", "crashes": 5}
    tracebacks = [r for r in caplog.records if r.exc_info and r.exc_info[0] is RuntimeError]
    assert len(tracebacks) == 5  # every crash is logged with its traceback


async def test_jitter_shortens_delays_within_bounds():
    sup = PluginSupervisor([], contexts(), backoff_base=1.0, backoff_max=8.0, jitter=0.25)
    for n, full in [(1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (10, 8.0), (10_000, 8.0)]:
        for _ in range(50):
            assert full * 0.75 <= sup.backoff(n) <= full


async def test_plugin_that_recovers_is_restarted_then_finished():
    sleep = FakeSleep()
    spec = f"{HERE}:crashes_twice_then_finishes"
    sup = PluginSupervisor([spec], contexts(), jitter=0.0, sleep=sleep)
    await sup.run()  # returns: nothing left to supervise
    st = sup.stats["crashes_twice_then_finishes"]
    assert (st.state, st.crashes, st.restarts) == ("finished", 2, 2)
    assert st.last_error == "ValueError: attempt 2"
    assert sleep.delays == [0.5, 1.0] and CALLS["twice"] == 3


async def test_finished_plugin_is_not_restarted():
    sleep, bus = FakeSleep(), FakeBus()
    spec = f"{HERE}:finishes"
    sup = PluginSupervisor([spec], contexts(bus), sleep=sleep, bus=bus)
    await sup.run()
    assert sup.stats["finishes"].state == "finished" and CALLS["finishes"] == 1
    assert sleep.delays == [] and bus.published == []


async def test_stable_run_resets_the_failure_count(autojump_clock):
    sleep = FakeSleep()
    spec = f"{HERE}:stable_then_crash"
    sup = PluginSupervisor([spec], contexts(), max_restarts=2, jitter=0.0, stable_after=60.0, sleep=sleep)
    await sup.run()
    st = sup.stats["stable_then_crash"]
    # failures: 1, 2, (100 s of running) 1, 2, 3 > max_restarts -> failed
    assert sleep.delays == [0.5, 1.0, 0.5, 1.0]
    assert (st.state, st.crashes, st.restarts, st.failures) == ("failed", 5, 4, 3)


async def test_plugin_error_fails_at_once_without_restart():
    sleep, bus = FakeSleep(), FakeBus()
    spec = f"{HERE}:bad_config"
    sup = PluginSupervisor([spec], contexts(bus), sleep=sleep, bus=bus)
    await sup.run()
    st = sup.stats["bad_config"]
    assert (st.state, st.crashes, st.restarts) == ("failed", 0, 0) and CALLS["bad_config"] == 1
    assert st.last_error == "bad_config: `x` must be a number" and sleep.delays == []
    assert bus.topics() == ["plugin.failed"]


async def test_exception_group_from_a_plugins_own_nursery_is_a_crash():
    spec = f"{HERE}:group_crash"
    sup = PluginSupervisor([spec], contexts(), max_restarts=1, sleep=FakeSleep())
    await sup.run()
    st = sup.stats["group_crash"]
    # the plugin's own group of one is unwrapped: the log names the real error
    assert (st.state, st.crashes) == ("failed", 2) and st.last_error == "KeyError: 'inner'"


async def test_broken_context_factory_is_a_crash_not_a_daemon_failure():
    def make_context(name):
        raise LookupError("no service 'bus'")

    spec = f"{HERE}:finishes"
    sup = PluginSupervisor([spec], make_context, max_restarts=1, sleep=FakeSleep())
    await sup.run()
    st = sup.stats["finishes"]
    assert st.state == "failed" and st.crashes == 2 and "finishes" not in CALLS


async def test_cancellation_stops_all_plugins_cleanly():
    specs = [f"{HERE}:blocks", f"{HERE}:BlockingPlugin", f"{HERE}:always_crashes"]
    # the crasher is cancelled in its (real, long) backoff sleep
    sup = PluginSupervisor(specs, contexts(), backoff_base=3600.0, backoff_max=3600.0)
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        await trio.testing.wait_all_tasks_blocked()
        assert sup.stats["always_crashes"].state == "backoff"
        assert BLOCKERS == {"blocks": "running", "blocking": "running"}
        nursery.cancel_scope.cancel()
    assert BLOCKERS == {"blocks": "cancelled", "blocking": "cancelled"}
    assert [s.state for s in sup.stats.values()] == ["stopped"] * 3


async def test_empty_supervisor_returns():
    sup = PluginSupervisor([], contexts())
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
    assert sup.stats == {}


# -- audit log -------------------------------------------------------------------------------------

async def test_audit_log_writes_one_json_line_per_matching_event(tmp_path):
    bus = FakeBus()
    sup = PluginSupervisor(["audit-log"], contexts(bus, data_dir=tmp_path), bus=bus)
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        await trio.testing.wait_all_tasks_blocked()  # subscribed
        bus.publish("node.joined", {"key": b"\xab" * 32, "caps": ("a", "b"), "meta": {b"\x01": b"\x02"}})
        bus.publish("pool.announced", {"seq": 1})  # not audited by default
        bus.publish("peer.connected", {"addr": "127.0.0.1:1", "note": "line\nbreak \u2028"})
        await trio.testing.wait_all_tasks_blocked()
        lines = (tmp_path / "audit.log").read_text().splitlines()  # flushed per line: visible while open
        nursery.cancel_scope.cancel()
    assert sup.stats["audit-log"].state == "stopped"
    records = [json.loads(line) for line in lines]
    assert [r["topic"] for r in records] == ["node.joined", "peer.connected"]
    assert records[0] == {"ts": 1_700_000_000_000, "topic": "node.joined", "origin": "01" * 32, "id": "00" * 16,
                          "data": {"key": "ab" * 32, "caps": ["a", "b"], "meta": {"01": "02"}}}
    assert records[1]["data"]["note"] == "line\nbreak \u2028"


async def test_audit_log_appends_to_configured_path_and_topics(tmp_path):
    bus, path = FakeBus(), tmp_path / "custom.jsonl"
    path.write_text('{"earlier": true}\n')
    cfg = {"audit-log": {"path": str(path), "topics": ["pool.*"]}}
    sup = PluginSupervisor(["audit-log"], contexts(bus, cfg, data_dir=Path("/nonexistent")), bus=bus)
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        await trio.testing.wait_all_tasks_blocked()
        bus.publish("node.joined", {})
        bus.publish("pool.announced", {"seq": 7})
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    lines = path.read_text().splitlines()
    assert len(lines) == 2 and json.loads(lines[1])["data"] == {"seq": 7}


async def test_audit_log_resubscribes_after_being_dropped(tmp_path):
    bus, sleep = FakeBus(), FakeSleep()
    sup = PluginSupervisor(["audit-log"], contexts(bus, data_dir=tmp_path), bus=bus, sleep=sleep)
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        await trio.testing.wait_all_tasks_blocked()
        bus.publish("node.joined", {"n": 1})
        bus.drop_subscribers()
        await trio.testing.wait_all_tasks_blocked()
        bus.publish("node.joined", {"n": 2})
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    st = sup.stats["audit-log"]
    assert (st.crashes, st.restarts) == (1, 1) and "subscription ended" in st.last_error
    lines = (tmp_path / "audit.log").read_text().splitlines()
    assert [json.loads(line)["data"]["n"] for line in lines] == [1, 2]


@pytest.mark.parametrize("section, message", [
    ({"topics": "node.#"}, "plugins.audit-log.topics: must be a list of strings"),
    ({}, "set `path`"),
    ({"path": 5}, "plugins.audit-log.path: must be a string"),
    ({"pth": "x"}, "plugins.audit-log.pth: unknown key; did you mean plugins.audit-log.path?"),
])
async def test_audit_log_bad_config_fails_without_restarts(section, message):
    bus = FakeBus()
    sup = PluginSupervisor(["audit-log"], contexts(bus, {"audit-log": section}), bus=bus, sleep=FakeSleep())
    await sup.run()
    st = sup.stats["audit-log"]
    assert st.state == "failed" and st.restarts == 0 and message in st.last_error


async def test_audit_log_unwritable_path_is_a_crash(tmp_path):
    bus = FakeBus()
    cfg = {"audit-log": {"path": str(tmp_path / "missing-dir" / "audit.log")}}
    sup = PluginSupervisor(["audit-log"], contexts(bus, cfg), max_restarts=2, bus=bus, sleep=FakeSleep())
    await sup.run()
    st = sup.stats["audit-log"]
    assert (st.state, st.crashes) == ("failed", 3) and st.last_error.startswith("FileNotFoundError")


def test_jsonable():
    assert jsonable({1: (b"\x00", {b"\xff": [1.5, None, True]}), "x": float("nan"), "y": memoryview(b"a")}) \
        == {"1": ["00", {"ff": [1.5, None, True]}], "x": "nan", "y": "61"}
    assert jsonable(Path("/a")) == "/a"
