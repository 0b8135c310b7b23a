"""Proof of the seam (issue 15 item 4): a plugin package of its own (tests/thirdparty/visits: its own
pyproject and entry points) is built into a wheel, installed with pip into a temporary directory and
run by daemon processes that find it through the entry-point groups. This test never imports it.

Seen from outside only: a node refused by its admission hook, its message answered, its state kept
across a restart, its metric on /metrics, its config error caught by `galaxynode config check`,
its `galaxynode visits` subcommand."""
from __future__ import annotations

import base64
import hashlib
import os
import subprocess
import sys
import tomllib
import urllib.request
import zipfile
from pathlib import Path

import pytest
import trio

from abuse import NETWORK, live_pool
from galaxynode import plugin
from galaxynode.gelato.errors import ErrorCode
from galaxynode.identity import Identity, write_key
from galaxynode.net import RemoteError
from galaxynode.nodeclient import connect

SOURCE = Path(__file__).parent / "thirdparty" / "visits"


def build_wheel(source: Path, out: Path) -> Path:
    """A wheel of `source` made from its pyproject (name, version, entry points, packages): no build
    backend needed, so nothing is downloaded."""
    project = tomllib.loads((source / "pyproject.toml").read_text())
    meta = project["project"]
    dist = meta["name"].replace("-", "_")
    info = f"{dist}-{meta['version']}.dist-info"
    files: dict[str, bytes] = {}
    for package in project["tool"]["setuptools"]["packages"]:
        for path in sorted((source / package).rglob("*.py")):
            files[path.relative_to(source).as_posix()] = path.read_bytes()
    files[f"{info}/METADATA"] = f"Metadata-Version: 2.1\nName: {meta['name']}\nVersion: {meta['version']}\n".encode()
    files[f"{info}/WHEEL"] = b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    groups = meta["entry-points"]
    files[f"{info}/entry_points.txt"] = "".join(
        f"[{group}]\n" + "".join(f"{k} = {v}\n" for k, v in eps.items()) + "\n" for group, eps in groups.items()).encode()
    record = [f"{name},sha256={base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b'=').decode()},"
              f"{len(data)}" for name, data in files.items()]
    files[f"{info}/RECORD"] = ("\n".join(record + [f"{info}/RECORD,,"]) + "\n").encode()
    wheel = out / f"{dist}-{meta['version']}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        for name, data in files.items():
            z.writestr(name, data)
    return wheel


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The plugin installed with pip into a directory of its own (then put on the daemon's PYTHONPATH)."""
    tmp = tmp_path_factory.mktemp("thirdparty")
    wheel = build_wheel(SOURCE, tmp)
    target = tmp / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index",
                    "--disable-pip-version-check", "--target", str(target), str(wheel)], check=True)
    assert (target / "gnode_visits" / "__init__.py").is_file()
    return target


def galaxynode(site: Path, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("GALAXYNODE_")}, "PYTHONPATH": str(site)}
    return subprocess.run([sys.executable, "-m", "galaxynode", *args], env=env, capture_output=True, text=True,
                          timeout=60, cwd=cwd)


def write_config(path: Path, visits: str) -> Path:
    path.write_text(f'[plugins]\nenabled = ["visits"]\n\n[plugins.visits]\n{visits}\n\n'
                    '[metrics]\nlisten = "127.0.0.1:0"\n')
    return path


def test_config_check_catches_the_plugins_config_error(site, tmp_path):
    good = write_config(tmp_path / "good.toml", 'refuse_prefix = "blocked"')
    result = galaxynode(site, "config", "check", str(good))
    assert result.returncode == 0, result.stderr
    bad = write_config(tmp_path / "bad.toml", 'refuse_prefix = ""\ngreting = "hi"')
    result = galaxynode(site, "config", "check", str(bad))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "config: plugins.visits.greting: unknown key; did you mean plugins.visits.greeting?" in result.stderr
    # without the package on the path, the plugin itself is what is missing
    result = galaxynode(Path("/nonexistent"), "config", "check", str(good))
    assert result.returncode == 2 and "unknown plugin 'visits'" in result.stderr


async def hello(url: str, node: Identity, name: str) -> dict:
    async with connect(url, node, network=NETWORK) as pool:
        await pool.join(meta={"name": name})
        return await plugin.call(pool, "visits", "hello", {"name": name})


def scrape(output: str) -> str:
    import re
    url = re.search(r"serving metrics on (http://\S+)", output).group(1)
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read().decode()


async def test_a_packaged_plugin_runs_in_the_daemon(site, tmp_path):
    config = write_config(tmp_path / "galaxynode.toml", 'greeting = "welcome"')
    data, alice = tmp_path / "data", Identity.generate()
    env = {"PYTHONPATH": str(site)}
    with live_pool(data, env=env, args=("--config", str(config))) as pool:
        with pytest.raises(RemoteError) as info:
            await hello(pool.url, Identity.generate(), "blocked-bob")
        assert info.value.code == ErrorCode.NOT_ADMITTED
        assert info.value.message == "visits: 'blocked-bob' may not join this pool"
        assert await hello(pool.url, alice, "alice") == {"text": "welcome, alice", "visits": 1}
        assert (await hello(pool.url, alice, "alice"))["visits"] == 2
        async with connect(pool.url, Identity.generate(), network=NETWORK) as other:
            with pytest.raises(RemoteError, match="length 0 bytes") as info:
                await plugin.call(other, "visits", "hello", {"name": ""})
            assert info.value.code == ErrorCode.INVALID_BODY
        metrics = await trio.to_thread.run_sync(scrape, pool.output)
        assert "galaxynode_plugin_visits_hellos_total 2.0" in metrics
        assert 'galaxynode_plugin_admissions_total{plugin="visits",result="refused"} 1.0' in metrics
        assert pool.stop() == 0
    with live_pool(data, env=env, args=("--config", str(config))) as pool:
        assert (await hello(pool.url, alice, "alice"))["visits"] == 3  # stored, not counted again
        key = tmp_path / "alice.key"
        write_key(alice, key)
        result = await trio.to_thread.run_sync(lambda: galaxynode(
            site, "visits", pool.url, "--key", str(key), "--network", NETWORK, "--name", "cli"))
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == "welcome, cli (visit 4)"
    assert "gnode_visits" not in sys.modules  # the test itself never imported the plugin


def test_plugin_new_makes_a_package_that_installs_and_checks(tmp_path):
    """`galaxynode plugin new` writes a package that pip installs and `config check` accepts by its
    entry-point name, with its options checked."""
    made = galaxynode(Path("/nonexistent"), "plugin", "new", "demo-plug", "--dir", str(tmp_path))
    assert made.returncode == 0, made.stderr
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index",
                    "--disable-pip-version-check", "--target", str(site),
                    str(build_wheel(tmp_path / "demo-plug", tmp_path))], check=True)
    config = tmp_path / "galaxynode.toml"
    config.write_text('[plugins]\nenabled = ["demo-plug"]\n[plugins.demo-plug]\ngreeting = "hi"\n')
    assert galaxynode(site, "config", "check", str(config)).returncode == 0
    config.write_text('[plugins]\nenabled = ["demo-plug"]\n[plugins.demo-plug]\ngreeting = 1\n')
    result = galaxynode(site, "config", "check", str(config))
    assert result.returncode == 2 and "config: plugins.demo-plug.greeting: must be a string" in result.stderr
    again = galaxynode(Path("/nonexistent"), "plugin", "new", "demo-plug", "--dir", str(tmp_path))
    assert again.returncode == 2 and "exists already" in again.stderr
