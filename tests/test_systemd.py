import os
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


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_unit_file_verifies(tmp_path):
    unit = (ROOT / "systemd" / "galaxynode.service").read_text()
    # verify checks that ExecStart exists: point it at this venv's entry point.
    exe = Path(sys.executable).with_name("galaxynode")
    unit = unit.replace("/usr/local/bin/galaxynode", str(exe))
    (tmp_path / "galaxynode.service").write_text(unit)
    r = subprocess.run(["systemd-analyze", "verify", str(tmp_path / "galaxynode.service")],
                       capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    for required in ("Type=notify", "WatchdogSec=", "Restart=on-failure", "StateDirectory=",
                     "NoNewPrivileges=yes", "ProtectSystem=strict", "ProtectHome=yes", "PrivateTmp=yes",
                     "RestrictAddressFamilies="):
        assert required in unit
