"""Daemon commands of `galaxynode`: run, mainnet, config, keygen."""
from __future__ import annotations

import argparse
import os
from typing import Any, Mapping

from galaxynode.cli.common import EXIT_USAGE, CliError, print_json


def config_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The config keys the command-line flags set (dotted key -> text, parsed like env values)."""
    out: dict[str, Any] = {}
    for flag, key in (("listen", "server.listen"), ("data_dir", "data.dir"), ("network", "network.id"),
                      ("name", "node.name"), ("key", "node.key_file"), ("log_level", "logging.level"),
                      ("log_format", "logging.format"), ("mainnet", "mainnet.url"),
                      ("role", "node.role"), ("peer", "peers.static"), ("workers", "server.workers")):
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
    from pathlib import Path

    from galaxynode.identity import Identity, write_key
    parent = Path(args.out).parent
    if not parent.is_dir():  # a typo in the path must not leave a key in a directory nobody meant
        raise CliError(f"key file: {args.out}: directory {parent} does not exist (create it first)", EXIT_USAGE)
    identity = Identity.generate()
    write_key(identity, args.out, force=args.force)
    print(identity.public_text)
    return 0


def cmd_key_show(args: argparse.Namespace) -> int:
    from galaxynode.identity import load_key
    identity = load_key(args.path)
    if args.json:
        print_json({"path": args.path, "public_key": identity.public_text})
    else:
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
    from galaxynode.preflight import raise_fd_limit
    config = checked(args)
    raise_fd_limit(config)  # workers inherit it
    setup_logging(config.logging.level, config.logging.format)
    if config.server.workers > 1:  # a supervisor of worker processes (galaxynode.cluster)
        from galaxynode.cluster import supervise
        from galaxynode.registry import StoreError
        try:
            return supervise(config, config_path=args.config, overrides=config_overrides(args))
        except StoreError as e:
            raise CliError(str(e)) from None
    return trio.run(lambda: run_daemon(config, config_path=args.config, overrides=config_overrides(args)))


def cmd_registry_migrate(args: argparse.Namespace) -> int:
    """Bring the PostgreSQL registry schema to this version (the daemon does it at start too)."""
    from galaxynode.registry import StoreError
    from galaxynode.registry.pgstore import SCHEMA_VERSION, migrate
    config = load(args)
    if config.registry.backend != "postgresql":
        raise CliError("registry migrate: [registry] backend is \"sqlite\"; a SQLite registry migrates itself",
                       EXIT_USAGE)
    table = "pools" if config.node.role == "mainnet" else "nodes"
    try:
        before, after = migrate(config.registry.dsn, table)
    except StoreError as e:
        raise CliError(str(e)) from None
    print(f"registry {table}: schema version {before} -> {after}" if before != after else
          f"registry {table}: schema version {after} (current, version {SCHEMA_VERSION} of this galaxynode)")
    return 0


def cmd_registry_backup(args: argparse.Namespace) -> int:
    """A consistent copy of the SQLite registry through SQLite's online backup API: a read
    transaction on the live database (WAL: the daemon keeps writing meanwhile), written to a
    temporary file beside DEST, checked, then renamed into place (mode 0600)."""
    import contextlib
    import sqlite3
    import tempfile
    from pathlib import Path
    config = load(args)
    if config.registry.backend != "sqlite":
        raise CliError(f"registry backup: [registry] backend is {config.registry.backend!r}; "
                       "back the database up with its own tools (pg_dump)", EXIT_USAGE)
    mainnet = config.node.role == "mainnet"
    src = config.data_path("mainnet.sqlite" if mainnet else "registry.sqlite")  # as daemon.RegistryModule
    if not src.is_file():
        raise CliError(f"registry backup: {src}: no registry database here (is [data] dir or --data-dir right?)",
                       EXIT_USAGE)
    dest = Path(args.dest)
    if dest.is_dir():
        dest = dest / src.name
    if not dest.parent.is_dir():
        raise CliError(f"registry backup: {dest}: directory {dest.parent} does not exist", EXIT_USAGE)
    if dest.exists() and not args.force:
        raise CliError(f"registry backup: {dest}: already exists (use --force to overwrite)", EXIT_USAGE)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp")  # mode 0600
    os.close(fd)
    table = "pools" if mainnet else "nodes"
    try:
        # mode=rw, not ro, though nothing is written: as the last connection (the daemon stopped) SQLite
        # then removes the -wal and -shm files it made, rather than leave them owned by whoever ran this.
        uri = f"{src.resolve().as_uri()}?mode=rw"
        with contextlib.closing(sqlite3.connect(uri, uri=True, timeout=10)) as source, \
                contextlib.closing(sqlite3.connect(tmp)) as target:
            source.backup(target)
            target.execute("PRAGMA journal_mode=DELETE")  # one self-contained file, no -wal beside it
            if (ok := target.execute("PRAGMA integrity_check").fetchone()[0]) != "ok":
                raise CliError(f"registry backup: the copy of {src} fails its integrity check: {ok}")
            entries = target.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
            bans = target.execute(f"SELECT count(*) FROM {table}_bans").fetchone()[0]
        os.replace(tmp, dest)
    except sqlite3.Error as e:
        raise CliError(f"registry backup: {src}: {e}") from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    print(f"{dest}: {entries} {table}, {bans} bans (a consistent copy of {src})")
    return 0


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
    print(redacted(load(args)).to_toml(), end="")
    return 0


def redacted(config: Any) -> Any:
    """The config with its secrets (the DSN's password, the dashboard token) masked: `config show`
    output ends up in tickets and chat."""
    import re

    import attrs
    dsn = re.sub(r"(://[^:/?#@]*:)[^@/?#]*@", r"\1***@", config.registry.dsn)  # URL form
    dsn = re.sub(r"(\bpassword\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", r"\1***", dsn)  # key=value form
    token = "***" if config.dashboard.token else ""
    return attrs.evolve(config, registry=attrs.evolve(config.registry, dsn=dsn),
                        dashboard=attrs.evolve(config.dashboard, token=token))


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
    p = sub.add_parser("keygen", help="generate an Ed25519 private key file (mode 0600)",
                       description="Generate an Ed25519 private key file (PEM, mode 0600) and print its public "
                                   "key. The directory must exist; an existing file is kept unless --force.",
                       epilog="example: galaxynode keygen --out admin.key")
    p.add_argument("--out", required=True, metavar="PATH")
    p.add_argument("--force", action="store_true", help="overwrite an existing file")
    p.set_defaults(func=cmd_keygen)

    p = sub.add_parser("key", help="show what a key file holds", epilog="example: galaxynode key show node.key")
    ksub = p.add_subparsers(dest="key_command", required=True, metavar="ACTION")
    k = ksub.add_parser("show", help="print the public key of a private key file (ed25519:<hex>)",
                        description="Print the public key of a private key file, as pools and admins name it "
                                    "(ed25519:<64 hex digits>): what to put in another pool's [peers] static "
                                    "or [admission] admins.",
                        epilog="example: galaxynode key show /var/lib/galaxynode/node.key")
    k.add_argument("path", metavar="PATH", help="the private key file")
    k.add_argument("--json", action="store_true", help='print {"path": ..., "public_key": ...}')
    k.set_defaults(func=cmd_key_show)

    p = sub.add_parser("run", help="run the pool daemon",
                       description="Run the pool daemon until SIGTERM or Ctrl-C (SIGHUP reloads the config). "
                                   "Settings: defaults < config file < GALAXYNODE_<SECTION>_<KEY> environment < "
                                   "these flags; every key is in galaxynode.toml. Exit 2 on a config problem "
                                   "(every one listed, as `config check` does), 1 on a start-up failure.",
                       epilog="example: galaxynode run -c /etc/galaxynode/galaxynode.toml --mainnet "
                              "wss://main.example.org")
    add_config_flags(p)
    p.add_argument("--peer", action="append", metavar="URL[#KEY]",
                   help="static peer, optionally pinned: ws://host:port#ed25519:<hex> (repeatable)")
    p.add_argument("--mainnet", metavar="URL", help="main net to announce to and discover pools from")
    p.add_argument("--workers", metavar="N",
                   help="worker processes sharing the listen ports ([server] workers; >1 needs PostgreSQL)")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("mainnet", help="run the reference main net (a registry of pools)",
                       epilog="example: galaxynode mainnet --listen ws://0.0.0.0:7447 --data-dir /var/lib/mainnet")
    add_config_flags(p)
    p.set_defaults(func=cmd_mainnet)

    p = sub.add_parser("config", help="validate or show configuration",
                       epilog="example: galaxynode config check -c galaxynode.toml")
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
    c = csub.add_parser("show", help="print the effective config (defaults < file < env < flags)",
                        epilog="example: galaxynode config show -c /etc/galaxynode/galaxynode.toml --network test")
    add_config_flags(c)
    c.set_defaults(func=cmd_config_show)

    p = sub.add_parser("registry", help="registry database maintenance: backup (SQLite), migrate (PostgreSQL)",
                       epilog="example: galaxynode registry backup -c /etc/galaxynode/galaxynode.toml "
                              "/var/backups/galaxynode/")
    rsub = p.add_subparsers(dest="registry_command", required=True, metavar="ACTION")
    r = rsub.add_parser("backup", help="copy the SQLite registry consistently, also while the daemon runs",
                        description="Copy the registry database (registry.sqlite, or mainnet.sqlite for a main "
                                    "net) from the data directory to DEST through SQLite's online backup API: "
                                    "a consistent snapshot while the daemon keeps running. To restore: stop the "
                                    "daemon, copy the file to <data dir>/registry.sqlite (owned by the daemon's "
                                    "user, mode 0600; remove any registry.sqlite-wal and -shm there), start it.",
                        epilog="example: galaxynode registry backup -c /etc/galaxynode/galaxynode.toml "
                               "/var/backups/galaxynode/registry-$(date +%F).sqlite")
    r.add_argument("dest", metavar="DEST", help="the backup file, or a directory to put registry.sqlite in")
    r.add_argument("--config", "-c", metavar="PATH", help="TOML config file (its [data] dir and [node] role)")
    r.add_argument("--data-dir", metavar="DIR", help="the daemon's data directory (default: the config's)")
    r.add_argument("--force", action="store_true", help="overwrite DEST if it exists")
    r.set_defaults(func=cmd_registry_backup)
    r = rsub.add_parser("migrate", help="create or upgrade the registry schema on [registry] dsn",
                        epilog="example: GALAXYNODE_REGISTRY_DSN=postgresql://galaxy@db/galaxy "
                               "galaxynode registry migrate -c galaxynode.toml")
    r.add_argument("--config", "-c", metavar="PATH", help="TOML config file (its [registry] backend and dsn)")
    r.set_defaults(func=cmd_registry_migrate)
