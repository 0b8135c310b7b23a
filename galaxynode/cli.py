"""The `galaxynode` command. Every failure the user can cause is one readable line and a
non-zero exit: 2 for bad usage/config/key files, 1 for runtime failures."""
from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Any

from galaxynode import __version__

EXIT_USAGE = 2


class CliError(Exception):
    """A user-facing failure: printed as one line."""

    def __init__(self, message: str, code: int = 1):
        super().__init__(message)
        self.code = code


def _config_overrides(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for flag, key in (("listen", "server.listen"), ("data_dir", "data.dir"), ("network", "network.id"),
                      ("name", "node.name"), ("key", "node.key_file"), ("log_level", "logging.level"),
                      ("log_format", "logging.format"), ("mainnet", "mainnet.url"),
                      ("role", "node.role"), ("peer", "peers.static")):
        value = getattr(args, flag, None)
        if value:
            out[key] = ",".join(value) if isinstance(value, list) else value  # parsed like env values
    return out


def _load(args: argparse.Namespace, **kw: Any):
    from galaxynode.config import ConfigError, load_config
    try:
        return load_config(args.config, overrides=_config_overrides(args), **kw)
    except ConfigError as e:
        raise CliError(str(e), EXIT_USAGE) from None


def cmd_keygen(args: argparse.Namespace) -> int:
    from galaxynode.identity import Identity, write_key
    identity = Identity.generate()
    write_key(identity, args.out, force=args.force)
    print(identity.public_text)
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    import trio
    from galaxynode.daemon import run_daemon
    from galaxynode.logs import setup_logging
    config = _load(args)
    setup_logging(config.logging.level, config.logging.format)
    return trio.run(lambda: run_daemon(config, config_path=args.config, overrides=_config_overrides(args)))


def cmd_mainnet(args: argparse.Namespace) -> int:
    """The reference main net: the same kernel, registering pools instead of nodes."""
    args.role = "mainnet"
    return cmd_run(args)


def cmd_config_check(args: argparse.Namespace) -> int:
    from galaxynode.config import ConfigError, load_config
    try:
        load_config(args.path, env={}, check_files=True)
    except ConfigError as e:
        raise CliError(str(e), EXIT_USAGE) from None
    print(f"{args.path}: ok")
    return 0


def cmd_config_show(args: argparse.Namespace) -> int:
    print(_load(args).to_toml(), end="")
    return 0


def _add_config_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", metavar="PATH", help="TOML config file (default: built-in defaults)")
    p.add_argument("--listen", action="append", metavar="URL", help="listen URL, e.g. ws://127.0.0.1:7447 (repeatable)")
    p.add_argument("--data-dir", metavar="DIR", help="data directory (key, registry database)")
    p.add_argument("--network", metavar="ID", help="network id")
    p.add_argument("--name", metavar="NAME", help="pool name")
    p.add_argument("--key", metavar="PATH", help="private key file (default: <data-dir>/node.key)")
    p.add_argument("--log-level", choices=("debug", "info", "warning", "error"))
    p.add_argument("--log-format", choices=("plain", "json"))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="galaxynode", description="Galaxy Node Pool daemon and tools (Gelato protocol)")
    parser.add_argument("--version", action="version", version=f"galaxynode {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("keygen", help="generate an Ed25519 private key file (mode 0600)")
    p.add_argument("--out", required=True, metavar="PATH")
    p.add_argument("--force", action="store_true", help="overwrite an existing file")
    p.set_defaults(func=cmd_keygen)

    p = sub.add_parser("run", help="run the pool daemon")
    _add_config_flags(p)
    p.add_argument("--peer", action="append", metavar="URL[#KEY]",
                   help="static peer, optionally pinned: ws://host:port#ed25519:<hex> (repeatable)")
    p.add_argument("--mainnet", metavar="URL", help="main net to announce to and discover pools from")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("mainnet", help="run the reference main net (a registry of pools)")
    _add_config_flags(p)
    p.set_defaults(func=cmd_mainnet)

    p = sub.add_parser("config", help="validate or show configuration")
    csub = p.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    c = csub.add_parser("check", help="validate a config file")
    c.add_argument("path")
    c.set_defaults(func=cmd_config_check)
    c = csub.add_parser("show", help="print the effective config (defaults < file < env < flags)")
    _add_config_flags(c)
    c.set_defaults(func=cmd_config_show)

    from galaxynode import cli_client, conformance, devnet
    for module in (cli_client, devnet, conformance):
        module.add_commands(sub)
    return parser


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # argparse leaves positionals that follow an option behind (`watch URL --json node.*`);
    # they belong to a trailing TOPIC... list, anything else is an error as usual.
    if extra and (not hasattr(args, "topics") or any(e.startswith("-") for e in extra)):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if extra:
        args.topics = [*args.topics, *extra]
    return args


def main(argv: list[str] | None = None) -> None:
    from galaxynode.identity import KeyFileError
    from galaxynode.modules import StartupError
    args = parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.WARNING, format="galaxynode: %(levelname)s: %(message)s")
    try:
        code = args.func(args)
        sys.stdout.flush()  # here, so a closed pipe is reported below rather than at exit
    except CliError as e:
        print(f"galaxynode: {e}", file=sys.stderr)
        code = e.code
    except StartupError as e:  # e.g. the listen port is taken
        print(f"galaxynode: {e}", file=sys.stderr)
        code = 1
    except KeyFileError as e:
        print(f"galaxynode: key file: {e}", file=sys.stderr)
        code = EXIT_USAGE
    except KeyboardInterrupt:
        code = 130
    except BrokenPipeError:  # `galaxynode query ... | head`: the reader has all it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the exit flush stays quiet
        code = 141  # 128 + SIGPIPE, as a shell reports a process killed by it
    except OSError as e:
        print(f"galaxynode: {e.strerror or e}{': ' + str(e.filename) if e.filename else ''}", file=sys.stderr)
        code = 1
    sys.exit(code)
