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
