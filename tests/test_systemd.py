import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from galaxynode.systemd import Notifier

ROOT = Path(__file__).resolve().parent.parent


def fake_notify_socket(tmp_path):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = str(tmp_path / "notify.sock")
    sock.bind(path)
    sock.settimeout(5)
    return sock, path


def test_notify_sends_datagram(tmp_path):
    sock, path = fake_notify_socket(tmp_path)
    with sock, Notifier(path) as n:
        assert n.enabled
        n.notify(READY=1, STATUS="serving 3 nodes")
        assert sock.recv(4096) == b"READY=1\nSTATUS=serving 3 nodes"


def test_notify_without_socket_is_noop():
    with Notifier.from_env({}) as n:
        assert not n.enabled
        n.notify(READY=1)


def test_notify_to_vanished_socket_does_not_raise(tmp_path, caplog):
    with Notifier(str(tmp_path / "gone.sock")) as n:
        n.notify(READY=1)
    assert "sd_notify" in caplog.text


def test_watchdog_interval():
    assert Notifier.watchdog_interval({"WATCHDOG_USEC": "30000000"}) == 15.0
    assert Notifier.watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}) is None
    assert Notifier.watchdog_interval({}) is None


UNIT = ROOT / "systemd" / "galaxynode.service"


def _directives(text: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        if line and not line.startswith(("#", ";", "[")) and "=" in line:
            key, _, value = line.partition("=")
            out.setdefault(key.strip(), []).append(value.strip())
    return out


def test_unit_file_content():
    """What the unit must say, checked whether or not systemd-analyze is installed."""
    unit = UNIT.read_text()
    d = _directives(unit)
    for key, value in [("Type", "notify"), ("Restart", "on-failure"), ("RestartPreventExitStatus", "2"),
                       ("StateDirectory", "galaxynode"), ("LogsDirectory", "galaxynode"),
                       ("WorkingDirectory", "/var/lib/galaxynode"), ("NoNewPrivileges", "yes"),
                       ("ProtectSystem", "strict"), ("ProtectHome", "yes"), ("PrivateTmp", "yes"),
                       ("DynamicUser", "yes")]:
        assert d.get(key) == [value], (key, d.get(key))
    for key in ("WatchdogSec", "RestrictAddressFamilies", "SystemCallFilter", "ExecReload"):
        assert key in d
    (exec_start,) = d["ExecStart"]
    assert exec_start.split()[1:] == ["run", "--config", "/etc/galaxynode/galaxynode.toml"]  # no override flags
    # the TLS key reaches the DynamicUser as a credential: documented, and the path the config names
    assert "#LoadCredential=tls.key:" in unit and "/run/credentials/galaxynode.service/tls.key" in unit


def test_config_errors_exit_2_which_the_unit_does_not_restart(tmp_path):
    """RestartPreventExitStatus=2 relies on it."""
    cfg = tmp_path / "g.toml"
    cfg.write_text("[server]\nmax_connections = 0\n")
    r = subprocess.run([sys.executable, "-m", "galaxynode", "run", "--config", str(cfg)], cwd=tmp_path,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2, r.stderr
    assert "server.max_connections" in r.stderr and "Traceback" not in r.stderr


def _unit_for_this_host(tmp_path: Path, *, credentials: bool = False) -> Path:
    unit = UNIT.read_text()
    # verify checks that ExecStart exists: point it at this venv's entry point.
    unit = unit.replace("/usr/local/bin/galaxynode", str(Path(sys.executable).with_name("galaxynode")))
    if credentials:
        unit = unit.replace("#LoadCredential=", "LoadCredential=")
    path = tmp_path / "galaxynode.service"
    path.write_text(unit)
    return path


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
@pytest.mark.parametrize("credentials", [False, True])
def test_unit_file_verifies(tmp_path, credentials):
    path = _unit_for_this_host(tmp_path, credentials=credentials)
    r = subprocess.run(["systemd-analyze", "verify", str(path)], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stderr


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_unit_file_exposure_score(tmp_path):
    """`systemd-analyze security` scores 1.6 or better (1.2 when written; 0 is best, 10 worst)."""
    path = _unit_for_this_host(tmp_path)
    r = subprocess.run(["systemd-analyze", "security", "--offline=yes", "--no-pager", str(path)],
                       capture_output=True, text=True, cwd=tmp_path)
    if "--offline" in r.stderr:  # systemd < 252 cannot score a unit file that is not loaded
        pytest.skip("systemd-analyze security has no --offline here")
    match = re.search(r"Overall exposure level for galaxynode.service: (\d+\.\d+)", r.stdout)
    assert match, r.stdout + r.stderr
    assert float(match.group(1)) <= 1.6, r.stdout
