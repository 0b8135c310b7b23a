"""The command line is a package of its own (galaxynode.cli) that library modules never import,
and plugins extend it through the `galaxynode.commands` entry-point group."""
import ast
import os
import subprocess
import sys
from pathlib import Path

PKG = Path(__file__).resolve().parent.parent / "galaxynode"


def test_library_modules_never_import_the_cli():
    offenders = []
    for path in PKG.rglob("*.py"):
        if path.relative_to(PKG).parts[0] in ("cli", "__main__.py"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            if isinstance(node, ast.ImportFrom) and node.module == "galaxynode":
                names = [f"galaxynode.{a.name}" for a in node.names]
            offenders += [f"{path.relative_to(PKG)}: {n}" for n in names
                          if n == "galaxynode.cli" or n.startswith("galaxynode.cli.")]
    assert offenders == []


def _with_extensions(tmp_path: Path, entry_points: str) -> dict:
    """An installed distribution (a dist-info on PYTHONPATH) declaring these command extensions."""
    dist = tmp_path / "gnext-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: gnext\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[galaxynode.commands]\n" + entry_points)
    (tmp_path / "gnext.py").write_text(
        "def add(sub):\n"
        "    p = sub.add_parser('hello', help='say hello', epilog='example: galaxynode hello')\n"
        "    p.set_defaults(func=lambda args: print('hello from a plugin') or 0)\n"
        "def broken(sub):\n"
        "    raise RuntimeError('this plugin\\nis broken')\n")
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}


def gn(*args, env):
    return subprocess.run([sys.executable, "-m", "galaxynode", *args], capture_output=True, text=True,
                          env=env, timeout=60)


def test_an_extension_adds_a_command(tmp_path):
    env = _with_extensions(tmp_path, "hello = gnext:add\n")
    r = gn("hello", env=env)
    assert r.returncode == 0 and r.stdout == "hello from a plugin\n" and r.stderr == ""
    assert "say hello" in gn("--help", env=env).stdout


def test_a_broken_extension_is_one_warning_and_the_rest_works(tmp_path):
    env = _with_extensions(tmp_path, "bad = gnext:broken\nmissing = gnext_nosuch:add\nhello = gnext:add\n")
    r = gn("hello", env=env)
    assert r.returncode == 0 and r.stdout == "hello from a plugin\n"
    lines = r.stderr.splitlines()
    assert len(lines) == 2 and all(line.startswith("galaxynode: warning: command extension ") for line in lines)
    assert any("bad" in line and "this plugin is broken" in line for line in lines)
    assert any("missing" in line and "gnext_nosuch" in line for line in lines)
    r = gn("keygen", "--out", str(tmp_path / "k.key"), env=env)
    assert r.returncode == 0 and r.stdout.startswith("ed25519:")
