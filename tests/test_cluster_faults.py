"""PostgreSQL restarted under a running pool (a throwaway server: the shared one is not ours to stop).
Meanwhile reads are served from memory, changes are refused with `unavailable` (retry later), the
failure is logged once (not per refusal) and /readyz names the backend; afterwards the pool recovers
by itself: changes are stored again, readiness returns, no lease was lost."""
from __future__ import annotations

import json
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import trio

from galaxynode.gelato.errors import ErrorCode, ProtocolError
from galaxynode.identity import Identity
from galaxynode.nodeclient import connect
from tests.pg import SKIP, ThrowawayServer, can_throwaway, pg_dsn, pg_server  # noqa: F401

sys.path.insert(0, str(Path(__file__).resolve().parent))
from abuse import NETWORK, live_pool, refusal  # noqa: E402

pytestmark = pytest.mark.skipif(not can_throwaway(), reason=SKIP)


@pytest.fixture
def server():
    s = ThrowawayServer()
    try:
        yield s
    finally:
        s.destroy()


def readyz(base: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(base + "/readyz", timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


async def keys(url: str) -> set[bytes]:
    async with connect(url, Identity.generate(), network=NETWORK) as s:
        return {r.key for r in await s.query(limit=1000)}


async def join(url: str, me: Identity) -> None:
    async with connect(url, me, network=NETWORK) as s:
        await s.join(capabilities=["f"], ttl=600)


def test_postgresql_restart_under_a_running_pool(tmp_path, server):
    env = {"GALAXYNODE_REGISTRY_BACKEND": "postgresql", "GALAXYNODE_REGISTRY_DSN": server.dsn,
           "GALAXYNODE_METRICS_LISTEN": "127.0.0.1:0"}
    a, b = Identity.generate(), Identity.generate()
    with live_pool(tmp_path / "data", env=env) as pool:
        metrics = pool.wait_for(r"serving metrics on (http://[^/\s]+)").group(1)
        trio.run(join, pool.url, a)
        deadline = time.monotonic() + 10
        while readyz(metrics)[0] != 200 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert readyz(metrics)[0] == 200

        mark = len(pool.output)
        server.stop()

        async def during():
            assert await keys(pool.url) == {a.public}  # reads: from memory
            async with connect(pool.url, a, network=NETWORK) as s:
                with pytest.raises(ProtocolError) as info:
                    await s.heartbeat()  # the change that finds the database gone
                assert info.value.code == ErrorCode.UNAVAILABLE
            for _ in range(5):  # and every change after it: refused, not made, not visible
                with pytest.raises(ProtocolError) as info:
                    await join(pool.url, b)
                assert info.value.code == ErrorCode.UNAVAILABLE
            assert await keys(pool.url) == {a.public}  # the refused heartbeat cost a nothing
        trio.run(during)
        deadline = time.monotonic() + 10
        while readyz(metrics)[0] == 200 and time.monotonic() < deadline:
            time.sleep(0.1)
        status, body = readyz(metrics)
        assert status == 503 and "backend" in json.dumps(body)
        pool.wait_for("replica lost PostgreSQL", start=mark, timeout=10)
        time.sleep(2)  # more retries of the replica and the refusals above: still one line each
        log = pool.output[mark:]
        # Once per interval (60 s), not per refusal: whoever notices first (a commit, the change log).
        assert log.count("replica lost PostgreSQL") == 1 and log.count("registry cannot store changes") <= 1
        assert log.count("refusing") <= 1 and "still unreachable" not in log

        server.start()

        async def after():
            with trio.fail_after(30):  # recovers by itself: the next change reconnects
                while True:
                    try:
                        await join(pool.url, b)
                        break
                    except ProtocolError as e:
                        assert e.code == ErrorCode.UNAVAILABLE
                        await trio.sleep(0.2)
            assert await keys(pool.url) == {a.public, b.public}
        trio.run(after)
        deadline = time.monotonic() + 10
        while readyz(metrics)[0] != 200 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert readyz(metrics)[0] == 200
        pool.wait_for("replica has PostgreSQL again", start=mark)


def test_a_kick_or_ban_ends_the_node_session_on_whichever_worker_holds_it(tmp_path, pg_dsn):
    """An admin's session and the node's may land on different workers (SO_REUSEPORT spreads them):
    the node's session is ended with kicked / banned either way."""
    admin_key = Identity.generate()
    env = {"GALAXYNODE_REGISTRY_BACKEND": "postgresql", "GALAXYNODE_REGISTRY_DSN": pg_dsn,
           "GALAXYNODE_ADMISSION_ADMINS": admin_key.public_text,
           "GALAXYNODE_SERVER_MAX_CONNECTIONS_PER_ADDRESS": "1000"}
    with live_pool(tmp_path / "data", env=env, args=("--workers", "2")) as pool:
        first = pool.wait_for(r"ready: pool").end()
        pool.wait_for(r"ready: pool", start=first)

        async def main():
            for i in range(8):  # fresh sessions each time: both workers get their turn
                node = Identity.generate()
                action, code = ("kick", ErrorCode.KICKED) if i % 2 else ("ban", ErrorCode.BANNED)
                async with connect(pool.url, node, network=NETWORK) as session:
                    await session.join(ttl=600)
                    async with connect(pool.url, admin_key, network=NETWORK) as admin:
                        await admin.admin(action, key=node.public)
                    with trio.fail_after(10):
                        await session.wait_closed()
                    assert refusal(session.closed_error()) is code
        trio.run(main)
