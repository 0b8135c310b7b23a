"""Plugin commands of `galaxynode`: plugin new (a package skeleton, docs/plugins.md §1.2)."""
from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

from galaxynode.cli.common import EXIT_USAGE, CliError

_PYPROJECT = '''[build-system]
requires = ["setuptools>=61"]
build-backend = "setuptools.build_meta"

[project]
name = "galaxynode-{name}"
version = "0.1.0"
description = "A galaxynode plugin"
requires-python = ">=3.11"
dependencies = ["galaxynode"]

[project.entry-points."galaxynode.plugins"]
{name} = "{module}:Plugin"

[tool.setuptools]
packages = ["{module}"]
'''

_MODULE = '''"""The {name} plugin for galaxynode (docs/plugins.md). Enable it with `[plugins] enabled = ["{name}"]`;
its settings go in `[plugins.{name}]`."""
from __future__ import annotations

from galaxynode import plugin
from galaxynode.plugin import Admit, Field, Option, Refuse

assert plugin.API_VERSION == 1


class Plugin:
    name = "{name}"
    options = {{
        "greeting": Option(str, "hello", max=64, help="first word of every answer"),
    }}

    def __init__(self, ctx: plugin.PluginContext):
        self.ctx = ctx
        self.requests = ctx.metrics.counter("requests", "hello requests answered")
        ctx.messages.register("hello", self.hello, body={{"name": Field("str", min_len=1, max_len=64)}})

    async def admit(self, request: plugin.AdmissionRequest) -> Admit | Refuse:
        return Admit()

    async def hello(self, request: plugin.Request) -> dict:
        """Answers x.{name}.hello; counts each key's hellos in the pool's database."""
        key = f"hellos/{{request.key.hex()}}"
        count = int(await self.ctx.store.get(key) or b"0") + 1
        await self.ctx.store.put(key, str(count).encode())
        self.requests.inc()
        return {{"text": f"{{self.ctx.config['greeting']}}, {{request.body['name']}}", "count": count}}
'''


def add_commands(sub: Any) -> None:
    p = sub.add_parser("plugin", help="plugin tools", description="Tools for writing galaxynode plugins.",
                       epilog="example: galaxynode plugin new capcount")
    psub = p.add_subparsers(dest="plugin_command", required=True, metavar="COMMAND")
    new = psub.add_parser("new", help="create a plugin package skeleton",
                          description="Create DIR/NAME: a pip-installable plugin package (pyproject with the "
                                      "galaxynode.plugins entry point, a plugin class using the API).",
                          epilog="example: galaxynode plugin new capcount && pip install ./capcount")
    new.add_argument("name", help="the plugin's short name: [a-z][a-z0-9_-]{0,31}")
    new.add_argument("--dir", default=".", help="where to create the package directory (default: here)")
    new.set_defaults(func=cmd_plugin_new)


def cmd_plugin_new(args: argparse.Namespace) -> int:
    name = args.name
    if not re.fullmatch(r"[a-z][a-z0-9_-]{0,31}", name):
        raise CliError(f"plugin new: name {name!r} must match [a-z][a-z0-9_-]{{0,31}}", EXIT_USAGE)
    module = f"galaxynode_{name.replace('-', '_')}"
    root = Path(args.dir, name)
    if root.exists():
        raise CliError(f"plugin new: {root} exists already", EXIT_USAGE)
    (root / module).mkdir(parents=True)
    (root / "pyproject.toml").write_text(_PYPROJECT.format(name=name, module=module))
    (root / module / "__init__.py").write_text(_MODULE.format(name=name))
    print(f"created {root}: pip install {root}, then enable it with [plugins] enabled = [\"{name}\"]")
    return 0
