"""scripts/dev.py, the first thing a new contributor runs: --help works without a venv, and the
silent first install is announced before it starts."""
from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

DEV = Path(__file__).resolve().parent.parent / "scripts" / "dev.py"


def dev(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(DEV), *args], capture_output=True, text=True, timeout=60)


def test_help_exits_0_and_a_wrong_command_2():
    r = dev("--help")
    assert r.returncode == 0 and r.stdout.startswith("usage: python3 scripts/dev.py run") and r.stderr == ""
    r = dev("runn")
    assert r.returncode == 2 and r.stdout == "" and r.stderr.startswith("usage: ")


def test_the_first_install_is_announced_before_it_starts(tmp_path, monkeypatch, capsys):
    spec = importlib.util.spec_from_file_location("dev_script", DEV)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    monkeypatch.setattr(mod, "VENV", tmp_path / ".venv")
    monkeypatch.setattr(mod, "BIN", tmp_path / ".venv" / "bin")
    monkeypatch.setattr(mod, "STAMP", tmp_path / ".venv" / "stamp")
    steps = []

    class Builder:
        def __init__(self, **kw):
            pass

        def create(self, path):
            steps.append(("venv", capsys.readouterr().err))
            (tmp_path / ".venv" / "bin").mkdir(parents=True)
            (tmp_path / ".venv" / "bin" / "python").touch()

    def pip(argv, **kw):
        steps.append(("pip", capsys.readouterr().err))
        return subprocess.CompletedProcess(argv, 0)

    monkeypatch.setattr(mod.venv, "EnvBuilder", Builder)
    monkeypatch.setattr(mod.subprocess, "run", pip)
    mod.ensure_venv()
    assert steps == [("venv", "dev.py: creating .venv and installing dependencies (first run only)\n"), ("pip", "")]
    mod.ensure_venv()  # installed: silent
    assert len(steps) == 2 and capsys.readouterr().err == ""
