#!/usr/bin/env python3
"""Bootstrap a local virtualenv and run the daemon or the tests.

Only needs python3 (>= 3.11): `python3 scripts/dev.py run` or `python3 scripts/dev.py test`.
The venv lives in .venv and is refreshed when pyproject.toml changes.
"""
import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
STAMP = VENV / ".galaxynode-stamp"


def ensure_venv() -> None:
    if sys.version_info < (3, 11):
        sys.exit(f"galaxynode needs Python >= 3.11, this is {sys.version.split()[0]}")
    digest = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if STAMP.exists() and STAMP.read_text() == digest:
        return
    if not (BIN / "python").exists():
        venv.EnvBuilder(with_pip=True).create(VENV)
    pip = [str(BIN / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    subprocess.run(pip + ["-e", f"{ROOT}[test]"], check=True)
    STAMP.write_text(digest)


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in ("run", "test", "galaxynode"):
        sys.exit("usage: scripts/dev.py run [ARGS] | test [PYTEST ARGS] | galaxynode ARGS")
    ensure_venv()
    cmd, rest = sys.argv[1], sys.argv[2:]
    if cmd == "test":
        argv = [str(BIN / "python"), "-m", "pytest", "-q", *rest]
    elif cmd == "run":
        argv = [str(BIN / "galaxynode"), "run", *rest]
    else:
        argv = [str(BIN / "galaxynode"), *rest]
    os.chdir(ROOT)
    os.execv(argv[0], argv)


if __name__ == "__main__":
    main()
