"""`galaxynode config check` checks what `run` checks (galaxynode.preflight): every key, the plugins,
the TLS files, a configured key file; every problem in one pass, one line each, exit 2, and `run`
stops with the same lines. Real commands in subprocesses."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from test_tls import issue

BAD = """
[server]
listen = ["wss://127.0.0.1:0"]
tls_cert = "{cert}"
tls_key = "{key}"
max_connections = "many"

[limits]
max_frame_size = "huge"

[plugins]
enabled = ["nosuchplugin"]

[plugins.stray]
x = 1
"""


def gn(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "galaxynode", *args], capture_output=True, text=True, timeout=60,
                          env={**os.environ, **(env or {})})


def bad_config(tmp_path) -> str:
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    path = tmp_path / "bad.toml"
    path.write_text(BAD.format(cert=garbage, key=garbage))
    return str(path)


def problems(stderr: str) -> list[str]:
    lines = stderr.splitlines()
    assert all(line.startswith("galaxynode: config: ") for line in lines), stderr
    assert "Traceback" not in stderr
    return [line.removeprefix("galaxynode: config: ") for line in lines]


def test_every_problem_in_one_pass(tmp_path):
    path = bad_config(tmp_path)
    r = gn("config", "check", path)
    assert r.returncode == 2 and r.stdout == ""
    found = problems(r.stderr)
    keys = [line.split(":")[0] for line in found]
    assert keys == ["server.max_connections", "limits.max_frame_size", "server.tls_cert", "plugins.enabled",
                    "plugins.stray"], found
    assert f"{tmp_path / 'garbage.pem'}: no PEM certificate" in found[2]  # the file, and what is wrong
    assert "nosuchplugin" in found[3]
    assert "no enabled plugin has this name" in found[4]


def test_run_stops_with_the_same_lines(tmp_path):
    path = bad_config(tmp_path)
    check = gn("config", "check", "-c", path)
    run = gn("run", "-c", path, "--data-dir", str(tmp_path / "data"))
    assert run.returncode == check.returncode == 2
    assert run.stderr == check.stderr and len(run.stderr.splitlines()) == 5
    assert not (tmp_path / "data").exists()  # stopped before touching anything


def test_run_reports_them_as_json_records_when_logging_json(tmp_path):
    run = gn("run", "-c", bad_config(tmp_path), "--data-dir", str(tmp_path / "data"), "--log-format", "json")
    assert run.returncode == 2
    records = [json.loads(line) for line in run.stderr.splitlines()]
    assert len(records) == 5 and {r["level"] for r in records} == {"critical"}
    assert records[0]["msg"].startswith("config: server.max_connections: ")


def test_tls_key_that_does_not_fit_the_certificate_names_the_key_file(tmp_path):
    a, b = issue(tmp_path, None, stem="a"), issue(tmp_path, None, stem="b")
    path = tmp_path / "tls.toml"
    path.write_text(f'[server]\nlisten = ["wss://127.0.0.1:0"]\ntls_cert = "{a.cert}"\ntls_key = "{b.key}"\n')
    r = gn("config", "check", str(path))
    assert r.returncode == 2
    assert problems(r.stderr) == [f"server.tls_key: {b.key}: this key does not belong to the certificate in {a.cert}"]
    path.write_text(f'[server]\nlisten = ["wss://127.0.0.1:0"]\ntls_cert = "{a.cert}"\ntls_key = "{a.key}"\n')
    r = gn("config", "check", str(path))
    assert (r.returncode, r.stdout, r.stderr) == (0, f"{path}: ok\n", "")


def test_environment_only_with_env(tmp_path):
    path = tmp_path / "ok.toml"
    path.write_text("[network]\nid = \"test\"\n")
    env = {"GALAXYNODE_LIMITS_MAX_FRAME_SIZE": "12", "GALAXYNODE_NODE_KEY_FILE": str(tmp_path / "none.key")}
    r = gn("config", "check", "-c", str(path), env=env)
    assert (r.returncode, r.stdout) == (0, f"{path}: ok\n")
    r = gn("config", "check", "-c", str(path), "--env", env=env)
    assert r.returncode == 2
    found = problems(r.stderr)
    assert found[0].startswith("limits.max_frame_size: must be an integer between 1024 and ")
    assert "from GALAXYNODE_LIMITS_MAX_FRAME_SIZE" in found[0]
    assert found[1] == f"node.key_file: no such file (got '{tmp_path / 'none.key'}' from GALAXYNODE_NODE_KEY_FILE)"
    assert len(found) == 2


def test_a_configured_key_file_must_load(tmp_path):
    key = tmp_path / "bad.key"
    key.write_text("not a key")
    key.chmod(0o600)
    path = tmp_path / "k.toml"
    path.write_text(f'[node]\nkey_file = "{key}"\n')
    r = gn("config", "check", str(path))
    assert r.returncode == 2
    assert problems(r.stderr) == [f"node.key_file: {key}: not a PEM private key (corrupt or wrong file?)"]


def test_load_config_collects_one_problem_per_key(tmp_path):
    from galaxynode.config import ConfigError, ConfigErrors, collect_config, load_config
    path = tmp_path / "c.toml"
    path.write_text("[limits]\nmax_frame_size = 'huge'\nmax_frame_sise = 1\n[server]\nmax_connections = 0\n")
    config, errors = collect_config(path, env={"GALAXYNODE_NETWORK_ID": ""})
    assert [e.key for e in errors] == ["limits.max_frame_sise", "limits.max_frame_size", "server.max_connections",
                                       "network.id"]
    assert config is not None and config.limits.max_frame_size == 1024 * 1024  # the default stands in
    try:
        load_config(path, env={})
    except ConfigErrors as e:
        assert len(e.errors) == 3 and str(e).count("\n") == 2 and e.key == "limits.max_frame_sise"
    path.write_text("[limits]\nmax_frame_size = 'huge'\n")
    try:
        load_config(path, env={})
    except ConfigError as e:
        assert type(e) is ConfigError and e.key == "limits.max_frame_size"
    assert collect_config(tmp_path / "missing.toml")[0] is None


def _limit_fds(soft: int, hard: int):
    import resource
    return lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_limits_the_process_cannot_honour_are_refused(tmp_path):
    """A pool past its descriptor limit cannot accept and its held sessions suffer: refused at check time."""
    r = subprocess.run([sys.executable, "-m", "galaxynode", "config", "check", "--env"], capture_output=True,
                       text=True, timeout=60, env={**os.environ, "GALAXYNODE_SERVER_MAX_CONNECTIONS": "5000"},
                       preexec_fn=_limit_fds(1024, 2000))
    assert r.returncode == 2, r.stderr
    [line] = problems(r.stderr)
    assert line.startswith("server.max_connections: 5000 sessions + max_pending 256") and "need 5520 file" in line
    assert "at most 2000 (RLIMIT_NOFILE)" in line and "LimitNOFILE=" in line


def test_run_lifts_the_soft_descriptor_limit_to_what_its_limits_need(tmp_path):
    from procutil import Proc
    with Proc("run", "--listen", "ws://127.0.0.1:0", "--data-dir", str(tmp_path / "data"),
              preexec_fn=_limit_fds(1024, 4096)) as pool:
        pool.wait_for("ready: pool")
        limits = Path(f"/proc/{pool.p.pid}/limits").read_text()
        soft, hard = next(line.split()[3:5] for line in limits.splitlines() if line.startswith("Max open files"))
        assert (int(soft), int(hard)) == (1024 + 256 + 8 + 256, 4096)  # max_connections + pending + outbound + reserve
        assert pool.stop() == 0
