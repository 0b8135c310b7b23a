"""Daemon commands of `galaxynode`: run, mainnet, config, keygen."""
from __future__ import annotations

import argparse
import os
from typing import Any, Mapping

from galaxynode.cli.common import EXIT_USAGE, CliError


def config_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The config keys the command-line flags set (dotted key -> text, parsed like env values)."""
    out: dict[str, Any] = {}
    for flag, key in (("listen", "server.listen"), ("data_dir", "data.dir"), ("network", "network.id"),
                      ("name", "node.name"), ("key", "node.key_file"), ("log_level", "logging.level"),
                      ("log_format", "logging.format"), ("mainnet", "mainnet.url"),
                      ("role", "node.role"), ("peer", "peers.static")):
        value = getattr(args, flag, None)
        if value:
            out[key] = ",".join(value) if isinstance(value, list) else value  # parsed like env values
    return out


def load(args: argparse.Namespace, **kw: Any):
    from galaxynode.config import ConfigError, load_config
    try:
        return load_config(args.config, overrides=config_overrides(args), **kw)
    except ConfigError as e:
        raise CliError(str(e), EXIT_USAGE) from None


def cmd_keygen(args: argparse.Namespace) -> int:
    from galaxynode.identity import Identity, write_key
    identity = Identity.generate()
    write_key(identity, args.out, force=args.force)
    print(identity.public_text)
    return 0


def checked(args: argparse.Namespace, env: Mapping[str, str] = os.environ):
    """The config of run/mainnet with everything preflight checks: every problem, one line each."""
    from galaxynode.preflight import check
    config, errors = check(args.config, env=env, overrides=config_overrides(args))
    if config is not None and (args.log_format or config.logging.format) == "json":
        args.log_json = True  # main reports what stops the start as JSON records
    if errors:
        raise CliError("\n".join(str(e) for e in errors), EXIT_USAGE)
    return config


def cmd_run(args: argparse.Namespace) -> int:
    import trio
    from galaxynode.daemon import run_daemon
    from galaxynode.logs import setup_logging
    config = checked(args)
    setup_logging(config.logging.level, config.logging.format)
    return trio.run(lambda: run_daemon(config, config_path=args.config, overrides=config_overrides(args)))


def cmd_mainnet(args: argparse.Namespace) -> int:
    """The reference main net: the same kernel, registering pools instead of nodes."""
    args.role = "mainnet"
    return cmd_run(args)


def cmd_config_check(args: argparse.Namespace) -> int:
    if args.path and args.config and args.path != args.config:
        raise CliError("config check: give the file once (PATH or -c PATH)", EXIT_USAGE)
    args.config = args.config or args.path
    checked(args, os.environ if args.env else {})
    what = args.config or "the built-in defaults"
    print(f"{what}{' with the GALAXYNODE_* environment' if args.env else ''}: ok")
    return 0


def cmd_config_show(args: argparse.Namespace) -> int:
    print(load(args).to_toml(), end="")
    return 0


def add_config_flags(p: argparse.ArgumentParser) -> None:
    """The flags that override config keys (run, mainnet, config show): see config_overrides."""
    p.add_argument("--config", "-c", metavar="PATH", help="TOML config file (default: built-in defaults)")
    p.add_argument("--listen", action="append", metavar="URL", help="listen URL, e.g. ws://127.0.0.1:7447 (repeatable)")
    p.add_argument("--data-dir", metavar="DIR", help="data directory (key, registry database)")
    p.add_argument("--network", metavar="ID", help="network id")
    p.add_argument("--name", metavar="NAME", help="pool name")
    p.add_argument("--key", metavar="PATH", help="private key file (default: <data-dir>/node.key)")
    p.add_argument("--log-level", choices=("debug", "info", "warning", "error"))
    p.add_argument("--log-format", choices=("plain", "json"))


def add_commands(sub: Any) -> None:
    """Add keygen, run, mainnet and config to the `galaxynode` subcommand parser."""
    p = sub.add_parser("keygen", help="generate an Ed25519 private key file (mode 0600)")
    p.add_argument("--out", required=True, metavar="PATH")
    p.add_argument("--force", action="store_true", help="overwrite an existing file")
    p.set_defaults(func=cmd_keygen)

    p = sub.add_parser("run", help="run the pool daemon")
    add_config_flags(p)
    p.add_argument("--peer", action="append", metavar="URL[#KEY]",
                   help="static peer, optionally pinned: ws://host:port#ed25519:<hex> (repeatable)")
    p.add_argument("--mainnet", metavar="URL", help="main net to announce to and discover pools from")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("mainnet", help="run the reference main net (a registry of pools)")
    add_config_flags(p)
    p.set_defaults(func=cmd_mainnet)

    p = sub.add_parser("config", help="validate or show configuration")
    csub = p.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    c = csub.add_parser("check", help="check a config file as `run` would, reporting every problem",
                        description="Check a config file as `galaxynode run` does before it starts: every key "
                                    "(all problems at once, one line each), the plugins (resolved, their "
                                    "[plugins.X] tables), the TLS certificate, key and CA files, a configured "
                                    "key file. Exit 0 when all is well, 2 otherwise.",
                        epilog="example: galaxynode config check -c /etc/galaxynode/galaxynode.toml --env")
    c.add_argument("path", nargs="?", metavar="PATH", help="the config file (or -c PATH)")
    c.add_argument("--config", "-c", metavar="PATH", help="the config file")
    c.add_argument("--env", action="store_true",
                   help="include GALAXYNODE_* environment variables (as a unit's Environment= sets them)")
    c.set_defaults(func=cmd_config_check, log_format=None)
    c = csub.add_parser("show", help="print the effective config (defaults < file < env < flags)")
    add_config_flags(c)
    c.set_defaults(func=cmd_config_show)
