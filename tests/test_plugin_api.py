"""The plugin API (galaxynode.plugin) in a real daemon runtime (kernel and modules in this process, nodes
over loopback): admission (refusal, metadata, deadline and default, order), messages in a plugin's
namespace (schema checked, errors, unknown namespaces), the durable store, periodic tasks, metrics;
and the pieces on their own: options, config check, loading errors, the registry's snapshot and
change stream, signed records."""
from __future__ import annotations

import gc
import os
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio
import trio.testing

from galaxynode import plugin
from galaxynode.config import ConfigError, load_config
from galaxynode.daemon import POOL_MODULES, Runtime
from galaxynode.gelato.errors import ErrorCode
from galaxynode.identity import Identity
from galaxynode.modules import Kernel, StartupError
from galaxynode.net import RemoteError
from galaxynode.nodeclient import connect
from galaxynode.plugin import Admit, Field, MessageError, Option, Refuse
from galaxynode.plugins import PluginError, check_config, load_plugin, plugin_config, verify_plugin_record
from galaxynode.registry.leases import LeaseTable
from galaxynode.registry.service import ChangesLost, Registry
from galaxynode.registry.store import SqliteStore, StoreError

NET = "plugin-api-test"
POOL = Identity.from_seed(b"\x51" * 32)
HERE = __name__


@pytest.fixture(autouse=True)
def collect_garbage():
    yield
    gc.collect()  # a leaked socket shows up as a ResourceWarning (an error) here


# --- plugins addressed by dotted path --------------------------------------------------------------------

class Gate:
    """Refuses names listed in `deny`, attaches a tier, answers echo/count/boom, counts echoes."""

    name = "gate"
    options = {
        "deny": Option(list, [], max=16, help="node meta names to refuse"),
        "mode": Option(str, "ok", choices=("ok", "slow", "raise", "bogus")),
        "tick": Option(float, 3600.0, min=0.01, max=3600),
    }
    instances = 0

    def __init__(self, ctx: plugin.PluginContext):
        Gate.instances += 1
        self.ctx = ctx
        self.echoes = ctx.metrics.counter("echoes", "Echo requests answered.")
        self.ticks = ctx.metrics.gauge("ticks", "Periodic calls.")
        ctx.messages.register("echo", self.echo, body={"text": Field("str", max_len=16),
                                                       "n": Field("uint", max=10, default=1)})
        ctx.messages.register("count", self.count)
        ctx.messages.register("boom", self.boom, body={"how": Field("str", max_len=16, choices=("missing", "crash"))})
        ctx.every(ctx.config["tick"], self.tick)

    async def admit(self, request: plugin.AdmissionRequest):
        mode = self.ctx.config["mode"]
        if mode == "slow":
            await trio.sleep(3600)
        if mode == "raise":
            raise RuntimeError("gate is broken")
        if mode == "bogus":
            return "yes"
        if request.meta.get("name") in self.ctx.config["deny"]:
            return Refuse(f"{request.meta['name']} is not welcome here")
        return Admit(meta={"tier": "gold"})

    async def echo(self, request: plugin.Request):
        self.echoes.inc()
        return {"text": request.body["text"] * request.body["n"], "key": request.key}

    async def count(self, request: plugin.Request):
        n = int(await self.ctx.store.get("n") or b"0") + 1
        await self.ctx.store.write({"n": str(n).encode(), f"by/{request.key.hex()}": b"1"})
        return {"n": n, "keys": len(await self.ctx.store.scan("by/"))}

    async def boom(self, request: plugin.Request):
        if request.body["how"] == "missing":
            raise MessageError("not_found", "no such thing")
        raise ZeroDivisionError("oops")

    async def tick(self):
        self.ticks.inc()


class Second:
    """A second admission hook: refuses what the first admitted when the name is 'second'."""

    name = "second"

    async def admit(self, request):
        if request.meta.get("name") == "second":
            return Refuse("second says no", code="forbidden")
        return Admit(meta={"seen": "yes"})


@asynccontextmanager
async def pool(tmp_path: Path, enabled=(f"{HERE}:Gate",), sections=None, identity=POOL, **overrides):
    """One daemon runtime in this process with the plugins `enabled`; yields (url, container)."""
    (tmp_path / "data").mkdir(parents=True, exist_ok=True)
    cfg = tmp_path / "galaxynode.toml"
    lines = []
    for name, table in (sections or {}).items():
        lines.append(f"[plugins.{name}]")
        lines += [f"{k} = {v!r}".replace("'", '"') for k, v in table.items()]
    cfg.write_text("\n".join(lines) + "\n")
    config = load_config(cfg, env={}, overrides={
        "network.id": NET, "data.dir": str(tmp_path / "data"), "server.listen": ["ws://127.0.0.1:0"],
        "metrics.listen": "", "daemon.watchdog": False, "plugins.enabled": list(enabled),
        "plugins.admission_timeout": 0.2, **overrides})
    kernel = Kernel([mod() for mod in POOL_MODULES], config=Runtime(config, identity), stop_timeout=2)
    async with kernel.run() as container:
        yield container.get("server").bound_urls[0], container


async def join(url: str, name: str, identity: Identity | None = None):
    async with connect(url, identity or Identity.generate(), network=NET) as client:
        return await client.join(meta={"name": name, "x.gate.tier": "forged"})


# --- admission ---------------------------------------------------------------------------------------------

async def test_admission_refuses_with_the_plugins_reason_and_attaches_metadata(tmp_path):
    async with pool(tmp_path, sections={"gate": {"deny": ["mallory"]}}) as (url, c):
        node = Identity.generate()
        await join(url, "alice", node)
        entry = c.get("registry").get(node.public)
        # the node's own x.* key is dropped: only the plugin may set it
        assert entry.meta == {"name": "alice", "x.gate.tier": "gold"}
        with pytest.raises(RemoteError) as info:
            await join(url, "mallory")
        assert info.value.code == ErrorCode.NOT_ADMITTED and info.value.message == "mallory is not welcome here"
        assert len(c.get("registry").table) == 1
        st = c.get("plugins").stats["gate"]
        assert (st.admitted, st.refused, st.admission_failed) == (1, 1, 0)


async def test_hooks_run_in_enabled_order_and_the_first_refusal_wins(tmp_path):
    async with pool(tmp_path, enabled=(f"{HERE}:Second", f"{HERE}:Gate"),
                    sections={"gate": {"deny": ["second", "mallory"]}}) as (url, c):
        with pytest.raises(RemoteError) as info:
            await join(url, "second")
        assert info.value.code == ErrorCode.FORBIDDEN and info.value.message == "second says no"
        assert c.get("plugins").stats["gate"].refused == 0  # never asked
        with pytest.raises(RemoteError, match="mallory is not welcome"):
            await join(url, "mallory")
        node = Identity.generate()
        await join(url, "bob", node)
        assert c.get("registry").get(node.public).meta == {"name": "bob", "x.second.seen": "yes",
                                                           "x.gate.tier": "gold"}


@pytest.mark.parametrize("mode", ["slow", "raise", "bogus"])
@pytest.mark.parametrize("default", ["closed", "open"])
async def test_a_failing_hook_gets_the_configured_default(tmp_path, mode, default):
    async with pool(tmp_path, sections={"gate": {"mode": mode}},
                    **{"plugins.admission_default": default}) as (url, c):
        if default == "closed":
            with pytest.raises(RemoteError) as info:
                await join(url, "alice")
            assert info.value.code == ErrorCode.UNAVAILABLE
        else:
            await join(url, "alice")
        st = c.get("plugins").stats["gate"]
        assert st.admission_failed == 1 and st.state == "running"  # the plugin itself is not restarted
        assert len(c.get("registry").table) == (default == "open")


class PeerGate:
    """Admits nodes; as a peer, only the key in `peer` (hex)."""

    name = "peergate"
    options = {"peer": Option(str, "")}

    async def admit(self, request):
        if request.is_peer and request.key.hex() != self.ctx.config["peer"]:
            return Refuse("not one of our peers")
        return Admit()


@pytest.mark.parametrize("admitted", [False, True])
async def test_peer_acceptance_asks_the_hooks(tmp_path, admitted):
    other = Identity.from_seed(b"\x52" * 32)
    sections = {"peergate": {"peer": other.public.hex() if admitted else ""}}
    async with pool(tmp_path / "a", enabled=(f"{HERE}:PeerGate",), sections=sections,
                    **{"peers.accept": "any"}) as (url, a):
        async with pool(tmp_path / "b", enabled=(), identity=other, **{"peers.static": [{"url": url}]}):
            peers = a.get("peers")
            with trio.fail_after(10):
                while not peers.describe():
                    await trio.sleep(0.02)
            [row] = peers.describe()
            assert row["key"] == other.public
            assert row["state"] == ("connected" if admitted else "not accepted")
            st = a.get("plugins").stats["peergate"]
            assert (st.admitted, st.refused) == ((1, 0) if admitted else (0, 1))


# --- messages ----------------------------------------------------------------------------------------------

async def test_messages_are_validated_answered_and_errors_are_typed(tmp_path):
    async with pool(tmp_path) as (url, c):
        node = Identity.generate()
        async with connect(url, node, network=NET) as client:
            assert await plugin.call(client, "gate", "echo", {"text": "ab", "n": 3}) == \
                {"text": "ababab", "key": node.public}
            assert await plugin.call(client, "gate", "echo", {"text": "x", "extra": [1]}) == \
                {"text": "x", "key": node.public}  # unknown keys are ignored, the default applies
            for body, what in (({"n": 2}, "required field missing"), ({"text": "x" * 17}, "length 17"),
                               ({"text": "x", "n": 11}, "expected integer"), ({"text": b"x"}, "expected str")):
                with pytest.raises(RemoteError, match=what) as info:
                    await plugin.call(client, "gate", "echo", body)
                assert info.value.code == ErrorCode.INVALID_BODY
            with pytest.raises(RemoteError) as info:
                await plugin.call(client, "gate", "boom", {"how": "missing"})
            assert info.value.code == ErrorCode.NOT_FOUND and info.value.message == "no such thing"
            with pytest.raises(RemoteError) as info:
                await plugin.call(client, "gate", "boom", {"how": "crash"})
            assert info.value.code == ErrorCode.INTERNAL and "oops" not in info.value.message
            for plugin_name, name in (("nobody", "echo"), ("gate", "nothing")):
                with pytest.raises(RemoteError) as info:
                    await plugin.call(client, plugin_name, name, {})
                assert info.value.code == ErrorCode.UNKNOWN_TYPE
            # the session survives all of it
            assert (await plugin.call(client, "gate", "count"))["n"] == 1
        st = c.get("plugins").stats["gate"]
        assert st.state == "running" and st.crashes == 0


async def test_without_plugins_an_extension_type_is_unknown(tmp_path):
    async with pool(tmp_path, enabled=()) as (url, c):
        async with connect(url, Identity.generate(), network=NET) as client:
            with pytest.raises(RemoteError) as info:
                await plugin.call(client, "gate", "echo", {"text": "a"})
            assert info.value.code == ErrorCode.UNKNOWN_TYPE
            await client.status()  # not fatal


# --- state -------------------------------------------------------------------------------------------------

async def test_store_survives_a_restart_and_is_per_plugin(tmp_path):
    async with pool(tmp_path) as (url, c):
        async with connect(url, Identity.generate(), network=NET) as client:
            assert (await plugin.call(client, "gate", "count"))["n"] == 1
            assert await plugin.call(client, "gate", "count") == {"n": 2, "keys": 1}
        c.get("registry").kv.setdefault("other", {})["n"] = b"99"  # another plugin's space
    async with pool(tmp_path) as (url, c):
        async with connect(url, Identity.generate(), network=NET) as client:
            assert await plugin.call(client, "gate", "count") == {"n": 3, "keys": 2}


async def test_store_write_that_the_disk_refuses_is_not_kept(tmp_path):
    class Failing(SqliteStore):
        fail = False

        def apply(self, ops):
            if self.fail:
                raise StoreError("disk full")
            super().apply(ops)

    store = Failing(tmp_path / "r.sqlite")
    reg = Registry(LeaseTable(), store, retry_delay=0.01, owns_store=True)
    async with trio.open_nursery() as n:
        await n.start(reg.run)
        await reg.kv_write("p", {"a": b"1"})
        store.fail = True
        with pytest.raises(Exception) as info:
            await reg.kv_write("p", {"a": b"2", "b": b"3"}, ["a"])
        assert getattr(info.value, "code", None) == ErrorCode.UNAVAILABLE
        assert reg.kv["p"] == {"a": b"1"}  # memory put back to what is stored
        store.fail = False
        n.cancel_scope.cancel()
    again = await Registry.open(tmp_path / "r.sqlite")
    try:
        assert again.kv == {"p": {"a": b"1"}}
    finally:
        again.close()


async def test_periodic_tasks_and_metrics(tmp_path):
    async with pool(tmp_path, sections={"gate": {"tick": 0.01}}) as (url, c):
        sup = c.get("plugins")
        async with connect(url, Identity.generate(), network=NET) as client:
            await plugin.call(client, "gate", "echo", {"text": "a"})
        with trio.fail_after(5):
            while sup.metrics.metrics["galaxynode_plugin_gate_ticks"].series[()].value < 3:
                await trio.sleep(0.01)
        families = {f.name: f for f in sup.metrics.collect()}
        assert families["galaxynode_plugin_gate_echoes"].samples[0].value == 1


# --- the registry's snapshot and change stream ----------------------------------------------------------------

async def test_snapshot_and_changes_miss_nothing_and_double_nothing(tmp_path):
    """Joins and leaves race the snapshot (commits are batched, so memory runs ahead of the events):
    the snapshot plus the stream always rebuilds exactly the registry."""
    reg = await Registry.open(tmp_path / "r.sqlite", commit_interval=0.005)
    keys = [bytes([i]) * 32 for i in range(1, 41)]
    async with trio.open_nursery() as n:
        await n.start(reg.run)

        async def churn(key):
            for i in range(5):
                await reg.join(key, ttl=60)
                await trio.sleep(0.001 * (key[0] % 3))
                if i % 2:
                    await reg.leave(key)

        views = []
        async with trio.open_nursery() as churners:
            for k in keys:
                churners.start_soon(churn, k)
            for _ in range(5):
                await trio.sleep(0.004)
                entries, watch = reg.watch()
                views.append(({e.key for e in entries}, watch))
        await reg.flush()
        await trio.testing.wait_all_tasks_blocked()
        final = {e.key for e in reg.table._entries.values()}
        for have, watch in views:
            while True:
                try:
                    with trio.move_on_after(0.05):
                        ev = await watch.__anext__()
                        (have.add if ev.topic == "node.joined" else have.discard)(ev.data["key"])
                        continue
                except ChangesLost:
                    raise
                break
            assert have == final
            watch.close()
        n.cancel_scope.cancel()


async def test_a_consumer_that_falls_behind_is_told(tmp_path):
    reg = Registry(LeaseTable())
    _, watch = reg.watch(queue_size=2)
    for i in range(3):
        await reg.join(bytes([i + 1]) * 32)
    assert [(await watch.__anext__()).topic for _ in range(2)] == ["node.joined"] * 2
    with pytest.raises(ChangesLost, match="behind"):
        await watch.__anext__()


# --- options, config check, loading ----------------------------------------------------------------------------

def test_options_convert_and_describe():
    assert Option(int, 3, min=1, max=5).convert(5) == 5
    assert Option(float, 1.0).convert(2) == 2.0
    assert Option(list, []).convert(("a",)) == ["a"]
    for opt, bad, why in ((Option(int, 1, min=1, max=5), 6, "an integer between 1 and 5"),
                          (Option(int, 1), True, "an integer"), (Option(str, "a", choices=("a", "b")), "c", "one of"),
                          (Option(list, []), [1], "a list of strings"), (Option(float, 1.0), float("nan"), "a number"),
                          (Option(str, "", max=3), "abcd", "at most 3 characters")):
        with pytest.raises(plugin.OptionError, match=why):
            opt.convert(bad)
    with pytest.raises(plugin.OptionError):
        Option(int, 0, min=1)  # a default that fails its own option


def test_plugin_config_fills_defaults_and_names_the_key():
    loaded = load_plugin(f"{HERE}:Gate")
    assert plugin_config(loaded, {"deny": ["x"]}) == {"deny": ["x"], "mode": "ok", "tick": 3600.0}
    with pytest.raises(ConfigError, match=r"config: plugins\.gate\.mod: unknown key; did you mean plugins\.gate\.mode"):
        plugin_config(loaded, {"mod": "x"})
    with pytest.raises(ConfigError, match=r"plugins\.gate\.mode: must be one of 'ok'"):
        plugin_config(loaded, {"mode": "x"})


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "galaxynode.toml"
    path.write_text(text)
    return path


def test_config_check_finds_what_the_issue_named(tmp_path):
    """A plugin beside the config file is found without PYTHONPATH; its section is its short name; a
    section named after the spec, a bad option and a missing attribute are each one clear line."""
    (tmp_path / "capcount_demo.py").write_text(
        "from galaxynode.plugin import Option\n"
        "class CapCounter:\n    options = {'limit': Option(int, 10, min=1, max=100)}\n"
        "    async def run(self):\n        pass\n")
    ok = load_config(write(tmp_path, '[plugins]\nenabled = ["capcount_demo:CapCounter"]\n'
                                     '[plugins.capcount_demo]\nlimit = 5\n'), env={})
    assert check_config(ok) == []
    bad = load_config(write(tmp_path, '[plugins]\nenabled = ["capcount_demo:CapCounter", "capcount_demo:Nope", '
                                      '"nowhere_mod:X"]\n[plugins.capcount_demo]\nlimit = 500\n'
                                      '[plugins."capcount_demo:CapCounter"]\nlimit = 1\n'), env={})
    errors = [str(e) for e in check_config(bad)]
    assert "\n" not in "".join(errors)
    assert any("module capcount_demo has no attribute 'Nope'" in e for e in errors)
    assert any("no module named 'nowhere_mod'" in e and str(tmp_path) in e for e in errors)
    assert "config: plugins.capcount_demo.limit: must be an integer between 1 and 100 (got 500)" in errors
    assert any(e.startswith("config: plugins.capcount_demo:CapCounter: no enabled plugin has this name; sections "
                            "are named after the short name: [plugins.capcount_demo]") for e in errors)


def test_config_check_plugins_path_relative_to_the_config_file(tmp_path):
    (tmp_path / "extra").mkdir()
    (tmp_path / "extra" / "pathplug_demo.py").write_text("async def plugin(ctx):\n    pass\n")
    config = load_config(write(tmp_path, '[plugins]\nenabled = ["pathplug_demo:plugin"]\npath = ["extra"]\n'
                                         '[plugins.stray]\nx = 1\n'), env={})
    assert [str(e) for e in check_config(config)] == [
        "config: plugins.stray: no enabled plugin has this name; enabled plugins: pathplug_demo"]


def test_two_plugins_with_one_short_name_are_refused():
    with pytest.raises(PluginError, match="have the same short name 'test_plugin_api'"):
        from galaxynode.plugins import load_all
        load_all([f"{HERE}:unnamed_one", f"{HERE}:unnamed_two"])


async def unnamed_one(ctx):
    pass


async def unnamed_two(ctx):
    pass


async def test_daemon_refuses_to_start_on_a_bad_section(tmp_path):
    with pytest.raises(StartupError, match=r"plugins\.gate\.mode: must be one of"):
        async with pool(tmp_path, sections={"gate": {"mode": "nope"}}):
            pass


# --- signed records --------------------------------------------------------------------------------------------

def test_signed_records_verify_only_for_their_plugin_and_kind():
    from galaxynode.plugins import sign_plugin_record
    signed = sign_plugin_record(POOL, NET, "rewards", "epoch", {"epoch": 3, "shares": {"a": 1}})
    fields = verify_plugin_record(signed, plugin="rewards", kind="epoch", origin=POOL.public)
    assert fields["epoch"] == 3 and fields["origin"] == POOL.public and fields["network"] == NET
    assert plugin.verify_record(signed.to_body(), plugin="rewards", kind="epoch")["kind"] == "epoch"
    for kw in ({"plugin": "other", "kind": "epoch"}, {"plugin": "rewards", "kind": "other"},
               {"plugin": "rewards", "kind": "epoch", "origin": os.urandom(32)}):
        with pytest.raises(ValueError):
            verify_plugin_record(signed, **kw)
    tampered = type(signed)(record=signed.record[:-1] + b"\x04", sig=signed.sig)
    with pytest.raises(ValueError):
        verify_plugin_record(tampered, plugin="rewards", kind="epoch")
    with pytest.raises(ValueError, match="set by the pool"):
        sign_plugin_record(POOL, NET, "rewards", "epoch", {"origin": b"x"})


async def test_watch_is_lost_when_the_store_refuses_what_the_snapshot_showed(tmp_path):
    class Failing(SqliteStore):
        gate: trio.Event | None = None

        def apply(self, ops):
            if self.gate is not None:
                raise StoreError("disk full")
            super().apply(ops)

    store = Failing(tmp_path / "r.sqlite")
    reg = Registry(LeaseTable(), store, retry_delay=0.01, owns_store=True, commit_interval=0.05)
    async with trio.open_nursery() as n:
        await n.start(reg.run)
        await reg.join(b"\x01" * 32)
        store.gate = trio.Event()
        failed = []

        async def doomed():
            try:
                await reg.join(b"\x02" * 32)
            except Exception as e:
                failed.append(e)

        n.start_soon(doomed)
        await trio.testing.wait_all_tasks_blocked()
        entries, watch = reg.watch()  # the pending join is in the snapshot, its commit not done
        assert {e.key for e in entries} == {b"\x01" * 32, b"\x02" * 32}
        with trio.fail_after(5):
            with pytest.raises(ChangesLost, match="refused changes the snapshot held"):
                await watch.__anext__()
        with trio.fail_after(5):
            while not failed:  # the refused caller hears it just after the watch does
                await trio.sleep(0.001)
        assert reg.get(b"\x02" * 32) is None
        watch.close()
        n.cancel_scope.cancel()


class Flaky:
    """Its periodic task crashes once; while it waits to restart, its messages answer unavailable."""

    name = "flaky"
    crashed = 0

    def __init__(self, ctx):
        ctx.messages.register("ping", self.ping)
        ctx.every(0.01, self.tick)

    async def ping(self, request):
        return {"pong": True}

    async def tick(self):
        if Flaky.crashed == 0:
            Flaky.crashed = 1
            raise RuntimeError("tick failed")


async def test_a_periodic_task_that_raises_restarts_the_plugin(tmp_path):
    async with pool(tmp_path, enabled=(f"{HERE}:Flaky",), **{"plugins.backoff_base": 0.3,
                                                              "plugins.backoff_max": 0.3}) as (url, c):
        sup = c.get("plugins")
        with trio.fail_after(5):
            while sup.stats["flaky"].state != "backoff":
                await trio.sleep(0.005)
        async with connect(url, Identity.generate(), network=NET) as client:
            with pytest.raises(RemoteError) as info:
                await plugin.call(client, "flaky", "ping")
            assert info.value.code == ErrorCode.UNAVAILABLE
            with trio.fail_after(5):
                while sup.stats["flaky"].state != "running":
                    await trio.sleep(0.01)
            assert await plugin.call(client, "flaky", "ping") == {"pong": True}
        st = sup.stats["flaky"]
        assert (st.crashes, st.restarts) == (1, 1) and st.last_error == "RuntimeError: tick failed"


def test_metrics_kinds_labels_and_bounds():
    from galaxynode.plugins import PluginMetrics
    registry = PluginMetrics()
    m = registry.for_plugin("my-plug")
    hits = m.counter("hits", "Hits.", labels=["kind"])
    hits.labels("a").inc()
    hits.labels("a").inc(2)
    assert m.counter("hits", "Hits.", labels=["kind"]) is hits  # the same metric, e.g. after a restart
    with pytest.raises(ValueError):
        m.gauge("hits", "Hits.")
    with pytest.raises(ValueError):
        hits.labels("a").inc(-1)
    with pytest.raises(TypeError):
        hits.inc()  # labelled: .labels(...) first
    size = m.histogram("size", "Sizes.", buckets=(1, 10))
    for v in (0.5, 5, 50):
        size.observe(v)
    depth = m.gauge("depth", "Depth.")
    depth.set(3)
    depth.dec()
    families = {f.name: f for f in registry.collect()}
    assert set(families) == {"galaxynode_plugin_my_plug_hits", "galaxynode_plugin_my_plug_size",
                             "galaxynode_plugin_my_plug_depth"}
    assert [(s.name, s.labels, s.value) for s in families["galaxynode_plugin_my_plug_hits"].samples] == [
        ("galaxynode_plugin_my_plug_hits_total", {"kind": "a"}, 3)]
    buckets = {s.labels.get("le"): s.value for s in families["galaxynode_plugin_my_plug_size"].samples
               if s.name.endswith("_bucket")}
    assert buckets == {"1.0": 1, "10.0": 2, "+Inf": 3}
    assert families["galaxynode_plugin_my_plug_depth"].samples[0].value == 2
    for bad in ("Bad", "with-dash", "x" * 40):
        with pytest.raises(ValueError):
            m.counter(bad, "x")


async def test_store_checks_keys_and_values():
    reg = Registry(LeaseTable())  # memory only: nothing to wait for
    from galaxynode.plugins import _Store
    store = _Store(reg, "p")
    await store.write({"b/2": b"2", "a/1": b"1", "b/1": b"x"})
    await store.delete("a/1")
    assert await store.scan("b/") == [("b/1", b"x"), ("b/2", b"2")]
    assert await store.get("a/1") is None and reg.kv == {"p": {"b/2": b"2", "b/1": b"x"}}
    for key, value in (("", b""), ("k" * 257, b""), ("k", "text"), ("k", b"x" * (plugin.MAX_STORE_VALUE + 1))):
        with pytest.raises(ValueError):
            await store.put(key, value)
