"""Terminal injection (issue 12, item 8): what nodes and peers send is printed escaped by the CLI.

A node joins a live pool with ANSI escapes (clear screen, retitle the window), BEL, CR and newlines
in its capabilities and meta, and a peer pool connects whose signed descriptor carries the same in
its name. `galaxynode query`, `admin nodes` and `admin peers` must show that text as visible
escapes (\\x1b, \\n, ...): no raw ESC/BEL/CR reaches the terminal and no injected newline makes a
fake row. Nothing here loads the pool, so there is no latency or RSS bound to state; the pool
must just still be up.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
import trio

from abuse import NETWORK, alive, live_pool
from galaxynode.cli.client import nodes_table
from galaxynode.cli.common import format_table
from galaxynode.descriptor import DescriptorIssuer
from galaxynode.gelato import messages as m
from galaxynode.identity import Identity, write_key
from galaxynode.logs import printable
from galaxynode.nodeclient import connect

EVIL = "\x1b[2J\x1b]0;pwned\x07"
RAW = ("\x1b", "\x07", "\r")


def run_cli(*argv: str) -> str:
    """`galaxynode ARGV` in a child process: its stdout and stderr together."""
    out = subprocess.run([sys.executable, "-m", "galaxynode", *argv], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout + out.stderr


def assert_escaped(text: str) -> None:
    for c in RAW:
        assert c not in text, f"raw {c!r} printed: {text!r}"
    assert not any(line.startswith("FAKE") for line in text.splitlines()), f"injected row: {text!r}"
    assert "\\x1b[2J\\x1b]0;pwned\\x07" in text  # shown, escaped, not dropped


def test_printable_escapes_what_a_terminal_would_act_on():
    assert printable("gpu é ✓") == "gpu é ✓"
    assert printable(f"{EVIL}\nFAKE\r\t\u202e\x85") == "\\x1b[2J\\x1b]0;pwned\\x07\\nFAKE\\r\\t\\u202e\\x85"
    table = format_table([[EVIL, "a\nFAKE row"]], ["A", "B"])
    assert len(table.splitlines()) == 2
    assert_escaped(table)


async def hostile_peer(url: str, ready: trio.Event, done: trio.Event) -> None:
    """A pool whose (validly signed) descriptor names it EVIL + a fake row; stays connected until done."""
    identity = Identity.generate()
    issuer = DescriptorIssuer(identity, name=EVIL + "\nFAKE PEER", network=NETWORK,
                              endpoints=["ws://127.0.0.1:9"], ttl_ms=600_000)
    async with connect(url, identity, network=NETWORK, role="pool") as pool:
        signed = issuer.current(time.time_ns() // 1_000_000, nodes=0, capabilities=())
        await pool.conn.send(m.Descriptors(descriptors=(signed,)))
        ready.set()
        await done.wait()


def test_cli_prints_hostile_node_and_peer_text_escaped(tmp_path):
    admin = Identity.generate()
    key_file = tmp_path / "admin.key"
    write_key(admin, key_file)
    # The hostile peer is an unlisted key: only accept = "any" serves it as a peer (and files its descriptor).
    env = {"GALAXYNODE_ADMISSION_ADMINS": admin.public_text, "GALAXYNODE_PEERS_ACCEPT": "any"}
    with live_pool(tmp_path / "pool", env=env) as pool:
        common = ("--network", NETWORK)
        admin_args = (*common, "--key", str(key_file))

        async def main() -> dict[str, str]:
            async with connect(pool.url, Identity.generate(), network=NETWORK) as node:
                await node.join(capabilities=[EVIL, "ok\nFAKE CAP ROW", "gpu"],
                                meta={"region": EVIL + "\r\nFAKE META ROW", f"k{EVIL}": "v"})
            ready, done = trio.Event(), trio.Event()
            out = {}
            async with trio.open_nursery() as nursery:
                nursery.start_soon(hostile_peer, pool.url, ready, done)
                with trio.fail_after(10):
                    await ready.wait()
                    await trio.sleep(0.3)  # the pool files the descriptor
                for name, argv in (("query", ("query", pool.url, *common)),
                                   ("nodes", ("admin", pool.url, *admin_args, "nodes")),
                                   ("peers", ("admin", pool.url, *admin_args, "peers"))):
                    out[name] = await trio.to_thread.run_sync(run_cli, *argv)
                done.set()
            return out

        out = trio.run(main)
        assert alive(pool)
    for name in ("query", "nodes"):
        assert_escaped(out[name])
        assert len(out[name].splitlines()) == 2, out[name]  # header + the one node
    assert_escaped(out["peers"])
    assert "FAKE PEER" in out["peers"] and len(out["peers"].splitlines()) == 2, out["peers"]


@pytest.mark.parametrize("as_json", [False, True])
def test_nodes_table_and_json_never_carry_raw_controls(as_json):
    rec = m.NodeRecord(key=b"\x01" * 32, capabilities=(EVIL,), meta={"a": "b\nFAKE"}, expires=0, pool=None)
    if as_json:
        from galaxynode.cli.client import node_json
        from galaxynode.cli.common import json_default
        text = json.dumps(node_json(rec), default=json_default)
        assert json.loads(text)["capabilities"] == [EVIL]  # JSON keeps the value, escaped by the encoding
        for c in RAW + ("\n",):
            assert c not in text
    else:
        assert_escaped(nodes_table([rec], 0))


def test_plain_log_lines_escape_remote_text():
    """Log messages quote remote text (refusal reasons, peer names): a newline in it cannot forge a
    second journal line, an ESC cannot reach the terminal of `journalctl -f`; tracebacks stay."""
    import logging
    from galaxynode.logs import PlainFormatter
    fmt = PlainFormatter("%(levelname)s %(message)s")
    record = logging.LogRecord("t", logging.INFO, __file__, 1, "refused %s", ("x\nINFO forged\x1b[2J",), None)
    line = fmt.format(record)
    assert "\n" not in line and "\x1b" not in line and "x\\nINFO forged\\x1b[2J" in line
    try:
        raise ValueError("boom")
    except ValueError:
        import sys
        record = logging.LogRecord("t", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    assert "Traceback" in fmt.format(record).splitlines()[1]
