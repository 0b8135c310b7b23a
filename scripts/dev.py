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


USAGE = """usage: python3 scripts/dev.py run [ARGS] | test [PYTEST ARGS] | galaxynode ARGS

  run [ARGS]          run a pool daemon (galaxynode run ARGS; data in ./galaxynode-data)
  test [PYTEST ARGS]  run the test suite (what CI runs)
  galaxynode ARGS     any galaxynode command, e.g. galaxynode devnet

The first run creates .venv and installs the dependencies into it (about half a minute); it is
refreshed when pyproject.toml changes."""


def ensure_venv() -> None:
    if sys.version_info < (3, 11):
        sys.exit(f"galaxynode needs Python >= 3.11, this is {sys.version.split()[0]}")
    digest = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if STAMP.exists() and STAMP.read_text() == digest:
        return
    fresh = not (BIN / "python").exists()
    # Said before the silent part, so a first run does not look hung.
    print("dev.py: creating .venv and installing dependencies (first run only)" if fresh else
          "dev.py: pyproject.toml changed: updating the dependencies in .venv", file=sys.stderr, flush=True)
    if fresh:
        venv.EnvBuilder(with_pip=True).create(VENV)
    pip = [str(BIN / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    done = subprocess.run(pip + ["-e", f"{ROOT}[test]"])
    if done.returncode != 0:
        sys.exit(f"dev.py: installing the dependencies failed (pip exit code {done.returncode}, output above)")
    STAMP.write_text(digest)


def main() -> None:
    if len(sys.argv) == 2 and sys.argv[1] in ("-h", "--help", "help"):
        print(USAGE)
        return
    if len(sys.argv) < 2 or sys.argv[1] not in ("run", "test", "galaxynode"):
        print(USAGE, file=sys.stderr)
        sys.exit(2)
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
