"""What an operator reaches for: `key show`, `keygen` that refuses a missing directory, `--help`
good enough to stand in for a man page. Real commands in subprocesses."""
from __future__ import annotations

import argparse
import json
import subprocess
import sys

from galaxynode import cli
from galaxynode.identity import Identity, write_key


def gn(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "galaxynode", *args], capture_output=True, text=True, timeout=60)


def test_key_show_prints_the_public_key(tmp_path):
    identity = Identity.generate()
    write_key(identity, tmp_path / "node.key")
    r = gn("key", "show", str(tmp_path / "node.key"))
    assert (r.returncode, r.stdout, r.stderr) == (0, identity.public_text + "\n", "")
    r = gn("key", "show", str(tmp_path / "node.key"), "--json")
    assert json.loads(r.stdout) == {"path": str(tmp_path / "node.key"), "public_key": identity.public_text}
    (tmp_path / "bad.key").write_text("nope")
    (tmp_path / "bad.key").chmod(0o600)
    r = gn("key", "show", str(tmp_path / "bad.key"))
    assert r.returncode == 2 and r.stdout == "" and r.stderr.count("\n") == 1 and "not a PEM private key" in r.stderr


def test_keygen_into_a_missing_directory_is_an_error(tmp_path):
    r = gn("keygen", "--out", str(tmp_path / "typo" / "admin.key"))
    assert r.returncode == 2 and r.stderr == (f"galaxynode: key file: {tmp_path / 'typo' / 'admin.key'}: directory "
                                              f"{tmp_path / 'typo'} does not exist (create it first)\n")
    assert not (tmp_path / "typo").exists()


def _parsers(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _parsers(sub, (*path, name))


def test_every_command_has_a_description_and_an_example():
    found = dict(_parsers(cli.build_parser()))
    assert {("run",), ("config", "check"), ("key", "show"), ("node", "join"), ("devnet",)} <= found.keys()
    for path, parser in found.items():
        assert parser.description, f"galaxynode {' '.join(path)}: no description"
        assert parser.epilog and "galaxynode " in parser.epilog and "example" in parser.epilog, path


def test_help_exits_0_with_the_example():
    r = gn("node", "join", "--help")
    assert r.returncode == 0 and r.stderr == ""
    assert "Join a pool with this key" in r.stdout and "example: galaxynode node join" in r.stdout
    r = gn("--help")
    assert r.returncode == 0 and "galaxynode COMMAND --help" in r.stdout and "  galaxynode devnet " in r.stdout


def test_registry_backup_of_a_running_pool_restores(tmp_path):
    """Backed up while the pool runs and a node is joined; restored as the README says (stop, copy
    into the data dir, start): the node is there again."""
    import shutil
    import stat

    from procutil import Proc
    key = tmp_path / "node.key"
    node = Identity.generate()
    write_key(node, key)
    data = tmp_path / "data"
    backup = tmp_path / "backups"
    backup.mkdir()
    with Proc("run", "--listen", "ws://127.0.0.1:0", "--data-dir", str(data)) as pool:
        url = pool.wait_for(r"serving Gelato on (ws://\S+)").group(1)
        pool.wait_for("ready: pool")
        with Proc("node", "join", url, "--key", str(key), "--ttl", "600", "--capability", "gpu") as joined:
            joined.wait_for("joined ")
            for _ in range(100):  # until the pool has committed the lease (commit_interval)
                r = gn("registry", "backup", str(backup), "--data-dir", str(data), "--force")
                assert r.returncode == 0, r.stderr
                if r.stdout.startswith(f"{backup / 'registry.sqlite'}: 1 nodes, 0 bans"):
                    break
            else:
                raise AssertionError(r.stdout)
            joined.stop()
        assert pool.stop() == 0
    copy = backup / "registry.sqlite"
    assert stat.S_IMODE(copy.stat().st_mode) == 0o600 and not (backup / "registry.sqlite-wal").exists()
    assert [p.name for p in backup.iterdir()] == ["registry.sqlite"]  # no temporary file left
    r = gn("registry", "backup", str(backup), "--data-dir", str(data))
    assert r.returncode == 2 and "already exists" in r.stderr

    restored = tmp_path / "restored"
    restored.mkdir(mode=0o700)
    shutil.copy(data / "node.key", restored / "node.key")
    shutil.copy(copy, restored / "registry.sqlite")
    with Proc("run", "--listen", "ws://127.0.0.1:0", "--data-dir", str(restored)) as pool:
        url = pool.wait_for(r"serving Gelato on (ws://\S+)").group(1)
        pool.wait_for("ready: pool")
        r = gn("query", url, "--capability", "gpu", "--json")
        assert [n["key"] for n in json.loads(r.stdout)] == [node.public_text]


def test_registry_backup_errors_are_one_line(tmp_path):
    r = gn("registry", "backup", str(tmp_path / "out.sqlite"), "--data-dir", str(tmp_path / "nothing"))
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "no registry database here" in r.stderr


def test_watch_lines_show_keys_whole_and_times_as_times():
    from galaxynode.cli.client import event_line
    from galaxynode.gelato import messages as m
    node, pool = Identity.generate(), Identity.generate()
    ev = m.Event(topic="node.joined", event_id=b"\0" * 16, origin=pool.public, ts=0,
                 data={"key": node.public, "capabilities": ["gpu"], "meta": {}, "expires": 61_000})
    assert event_line(ev, pool.public, as_json=False) == (
        f'1970-01-01T00:00:00.000Z node.joined {{"capabilities": ["gpu"], "expires": "1970-01-01T00:01:01.000Z", '
        f'"key": "{node.public_text}", "meta": {{}}}}')
    data = json.loads(event_line(ev, pool.public, as_json=True))["data"]
    assert data == {"key": node.public_text, "capabilities": ["gpu"], "meta": {}, "expires": 61_000}


def test_network_mismatch_is_worded_from_the_clients_side():
    from galaxynode.cli.client import _describe
    from galaxynode.net import RemoteError
    error = RemoteError(m_error(3002, "network_mismatch", "peer is on network 'galaxy-dev', we are on 'galaxy-main'"))
    line = _describe(error, argparse.Namespace(url="ws://h:1", network="galaxy-dev", timeout=10))
    assert line == ("ws://h:1: refused: network_mismatch (3002): the pool is on network 'galaxy-main', "
                    "not 'galaxy-dev' (use --network galaxy-main)")


def m_error(code: int, name: str, message: str):
    from galaxynode.gelato import messages as m
    return m.Error(code=code, name=name, message=message)


def test_a_closed_port_says_connection_refused_and_a_url_without_port_means_7447():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: refused
        r = gn("status", f"ws://127.0.0.1:{port}", "--timeout", "5")
    assert r.returncode == 1
    assert r.stderr == f"galaxynode: ws://127.0.0.1:{port}: cannot connect to 127.0.0.1:{port}: connection refused\n"
    from galaxynode.net.transport import parse_url
    assert parse_url("ws://pool.example.org")[2] == parse_url("wss://pool.example.org/x")[2] == 7447


def test_the_ready_line_says_what_to_run_next(tmp_path):
    from procutil import Proc
    with Proc("run", "--listen", "ws://127.0.0.1:0", "--data-dir", str(tmp_path / "d"), "--network", "op-test") as pool:
        line = pool.wait_for(r"ready: pool .*").group(0)
        url = pool.wait_for(r"serving Gelato on (ws://\S+)").group(1)
        assert line.endswith(f"; next: galaxynode status {url} --network op-test")
        r = gn(*line.partition("next: galaxynode ")[2].split())
        assert r.returncode == 0 and "op-test" in r.stdout
        assert pool.stop() == 0


def test_a_fatal_start_up_error_is_a_json_record_under_log_format_json(tmp_path):
    import socket
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        r = gn("run", "--listen", f"ws://127.0.0.1:{port}", "--data-dir", str(tmp_path / "d"), "--log-format", "json")
    assert r.returncode == 1
    records = [json.loads(line) for line in r.stderr.splitlines()]  # every line is a record
    assert records[-1]["level"] == "critical" and "Address already in use" in records[-1]["msg"]


def test_the_readmes_python_example_runs_and_prints_keys_whole(tmp_path):
    import re
    from pathlib import Path

    from procutil import Proc
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    example = re.search(r"```python\n(.*?)```", readme, re.S).group(1)
    with Proc("run", "--listen", "ws://127.0.0.1:0", "--data-dir", str(tmp_path / "d")) as pool:
        url = pool.wait_for(r"serving Gelato on (ws://\S+)").group(1)
        pool.wait_for("ready: pool")
        r = subprocess.run([sys.executable, "-c", example.replace("ws://127.0.0.1:7447", url)],
                           capture_output=True, text=True, timeout=60)
        assert pool.stop() == 0
    assert r.returncode == 0, r.stderr
    assert re.fullmatch(r"ed25519:[0-9a-f]{64} gpu \{'region': 'eu'\}\n", r.stdout), r.stdout


def test_conformance_takes_ca_too(tmp_path):
    """--ca on every client command: the conformance suite reaches a wss:// pool with a private CA."""
    from procutil import Proc
    from test_tls import issue, make_ca
    ca = make_ca(tmp_path / "ca")
    cert = issue(tmp_path, ca)
    env = {"GALAXYNODE_SERVER_TLS_CERT": str(cert.cert), "GALAXYNODE_SERVER_TLS_KEY": str(cert.key)}
    with Proc("run", "--listen", "wss://127.0.0.1:0", "--data-dir", str(tmp_path / "d"), env=env) as pool:
        url = pool.wait_for(r"serving Gelato on (wss://\S+)").group(1)
        pool.wait_for("ready: pool")
        r = gn("conformance", url, "--cases", "1.1", "--ca", str(ca[0].cert))
        refused = gn("conformance", url, "--cases", "1.1")
        assert pool.stop() == 0
    assert r.returncode == 0, r.stdout + r.stderr
    assert refused.returncode == 1 and "certificate verify failed" in refused.stderr
