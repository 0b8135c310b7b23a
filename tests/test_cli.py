import os
import stat
import subprocess
import sys

import pytest

from galaxynode import cli

from galaxynode.identity import load_key, parse_public_key


def gn(*args, cwd=None, env=None):
    return subprocess.run([sys.executable, "-m", "galaxynode", *args], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=60)


def test_keygen_writes_0600_and_prints_public_key(tmp_path):
    path = tmp_path / "k.key"
    r = gn("keygen", "--out", str(path))
    assert r.returncode == 0, r.stderr
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert parse_public_key(r.stdout.strip()) == load_key(path).public


def test_keygen_refuses_overwrite_without_force(tmp_path):
    path = tmp_path / "k.key"
    assert gn("keygen", "--out", str(path)).returncode == 0
    before = path.read_bytes()
    r = gn("keygen", "--out", str(path))
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and "already exists" in r.stderr
    assert path.read_bytes() == before
    assert gn("keygen", "--out", str(path), "--force").returncode == 0
    assert path.read_bytes() != before


def test_config_check_reports_one_line(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[limits]\nmax_frame_size = 'huge'\n")
    r = gn("config", "check", str(bad))
    assert r.returncode == 2
    assert "limits.max_frame_size" in r.stderr and r.stderr.count("\n") == 1
    assert "Traceback" not in r.stderr


def test_config_check_unknown_key_and_missing_file(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[server]\nlisten_on = ['ws://127.0.0.1:1']\n")
    r = gn("config", "check", str(bad))
    assert r.returncode == 2 and "server.listen_on" in r.stderr
    r = gn("config", "check", str(tmp_path / "nope.toml"))
    assert r.returncode == 2 and r.stderr.count("\n") == 1


def test_config_show_applies_flags(tmp_path):
    r = gn("config", "show", "--network", "testnet-7", "--data-dir", str(tmp_path / "d"))
    assert r.returncode == 0, r.stderr
    assert 'id = "testnet-7"' in r.stdout


def test_run_with_corrupt_key_is_one_line(tmp_path):
    key = tmp_path / "bad.key"
    key.write_text("not a key")
    key.chmod(0o600)
    r = gn("run", "--data-dir", str(tmp_path / "d"), "--key", str(key))
    assert r.returncode == 2
    assert r.stderr == f"galaxynode: config: node.key_file: {key}: not a PEM private key (corrupt or wrong file?)\n"


def test_topics_may_follow_options():
    args = cli.parse_args(["watch", "ws://127.0.0.1:1", "--json", "node.*", "pool.#"])
    assert args.topics == ["node.*", "pool.#"] and args.json
    with pytest.raises(SystemExit):
        cli.parse_args(["status", "ws://127.0.0.1:1", "--json", "extra"])
    with pytest.raises(SystemExit):
        cli.parse_args(["watch", "ws://127.0.0.1:1", "--json", "node.*", "--bogus"])


def test_output_into_a_closed_pipe_exits_quietly(tmp_path):
    """`galaxynode config show | head -1`: once the reader is gone, no traceback and no noise."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    with os.fdopen(write_end, "wb") as out:
        done = subprocess.run([sys.executable, "-m", "galaxynode", "config", "show"], stdout=out,
                              stderr=subprocess.PIPE, text=True, cwd=tmp_path, timeout=60)
    assert (done.returncode, done.stderr) == (141, "")


@pytest.mark.parametrize("dsn, shown", [
    ("postgresql://galaxy:s3cr%40t@db:5432/galaxy", "postgresql://galaxy:***@db:5432/galaxy"),
    ("host=db user=galaxy password='a b\\'c' dbname=g", "host=db user=galaxy password=*** dbname=g"),
    ("host=db password=pl41n dbname=g", "host=db password=*** dbname=g"),
    ("postgresql://galaxy@db/galaxy", "postgresql://galaxy@db/galaxy"),
])
def test_config_show_masks_secrets(tmp_path, dsn, shown):
    env = {**os.environ, "GALAXYNODE_REGISTRY_BACKEND": "postgresql", "GALAXYNODE_REGISTRY_DSN": dsn,
           "GALAXYNODE_DASHBOARD_TOKEN": "tok-123"}
    out = subprocess.run([sys.executable, "-m", "galaxynode", "config", "show"], env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert f'dsn = "{shown}"' in out.stdout.replace('\\"', '"') or f"dsn = '{shown}'" in out.stdout, out.stdout
    assert "tok-123" not in out.stdout and 's3cr' not in out.stdout and "pl41n" not in out.stdout
