"""The `galaxynode` command. Every failure the user can cause is one readable line and a non-zero
exit: 2 for bad usage/config/key files, 1 for runtime failures; never a traceback.

One module per command family, each with `add_commands(sub)` that adds its subcommands:

- common.py: CliError, EXIT_USAGE, argument types (url, node_key, positive, ...), the arguments
  every client command shares (add_client_args: URL, --network, --timeout, --ca, turned into
  connect() keywords by connect_options), output helpers (format_table, print_json, pub, iso).
- daemon.py: run, mainnet, config, keygen, key, registry. A flag that sets a config key: add it
  in add_config_flags and map it in config_overrides. What `run` checks before it starts is
  galaxynode.preflight (so `config check` checks the same): add new start-up checks there.
- client.py: node join, query, status, watch, admin. A flag for every client command goes in
  common.add_client_args (and connect_options); one for one command next to its add_parser.
- devnet.py, conformance.py, plugin.py: those commands (their logic is galaxynode.devnet,
  .conformance, .plugins, which never import the CLI: tests/test_cli_layout.py checks it).

A new command family: a module here with `add_commands(sub)`, listed in FAMILIES below. Commands
run as `args.func(args) -> int` (set_defaults(func=...)); import heavy modules (trio, the network
stack) inside the function so `galaxynode --help` stays fast; raise CliError for the user's
mistakes; give every parser a one-line help and an epilog with an example.

Plugins add commands through the entry-point group `galaxynode.commands`: each entry point is a
callable `add(subparsers)` that adds one subcommand with set_defaults(func=...). An extension that
fails to load or to add itself is one warning line on stderr; the rest of the CLI works.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys

from galaxynode import __version__
from galaxynode.cli.common import EXIT_USAGE, CliError

__all__ = ["main", "build_parser", "parse_args", "CliError", "EXIT_USAGE"]

FAMILIES = ("daemon", "client", "devnet", "conformance", "plugin")
EXTENSIONS = "galaxynode.commands"  # entry-point group


def _add_extensions(sub: argparse._SubParsersAction) -> None:
    from importlib.metadata import entry_points
    for ep in entry_points(group=EXTENSIONS):
        try:
            ep.load()(sub)
        except Exception as e:  # a broken plugin must not take the whole command line down
            reason = " ".join(str(e).split()) or type(e).__name__
            print(f"galaxynode: warning: command extension {ep.name} ({ep.value}) not loaded: {reason}",
                  file=sys.stderr)


def build_parser() -> argparse.ArgumentParser:
    from importlib import import_module
    parser = argparse.ArgumentParser(prog="galaxynode",
                                     description="Galaxy Node Pool daemon and tools (Gelato protocol)",
                                     epilog=EPILOG)
    parser.add_argument("--version", action="version", version=f"galaxynode {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for family in FAMILIES:
        import_module(f"galaxynode.cli.{family}").add_commands(sub)
    _add_extensions(sub)
    _finish(parser)
    return parser


EPILOG = "\n".join([
    "examples:",
    "  galaxynode run -c /etc/galaxynode/galaxynode.toml     run a pool (every key: galaxynode.toml)",
    "  galaxynode config check -c galaxynode.toml --env      check a config as `run` would",
    "  galaxynode status ws://127.0.0.1:7447                 a pool's status",
    "  galaxynode devnet                                     a main net, pools and nodes on 127.0.0.1",
    "`galaxynode COMMAND --help` describes each command, with an example. Exit codes: 0 ok, 1 runtime "
    "failure, 2 bad usage, config or key file. Documentation: README.md and docs/ in the source.",
])


class _Formatter(argparse.HelpFormatter):
    """Wraps each line of a description or epilog on its own, so examples keep their lines."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        return "\n".join(line if line.startswith("  ") else super(_Formatter, self)._fill_text(line, width, indent)
                         for line in text.splitlines())


def _finish(parser: argparse.ArgumentParser) -> None:
    """Every parser: our formatter, and its one-line help as description when it has none."""
    parser.formatter_class = _Formatter
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help for a in action._choices_actions}
            for name, sub in action.choices.items():
                if sub.description is None and helps.get(name):
                    sub.description = helps[name][0].upper() + helps[name][1:] + "."
                _finish(sub)


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
        _report(args, str(e))
        code = e.code
    except StartupError as e:  # e.g. the listen port is taken
        _report(args, str(e))
        code = 1
    except KeyFileError as e:
        _report(args, f"key file: {e}")
        code = EXIT_USAGE
    except KeyboardInterrupt:
        code = 130
    except BrokenPipeError:  # `galaxynode query ... | head`: the reader has all it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the exit flush stays quiet
        code = 141  # 128 + SIGPIPE, as a shell reports a process killed by it
    except OSError as e:
        _report(args, f"{e.strerror or e}{': ' + str(e.filename) if e.filename else ''}")
        code = 1
    sys.exit(code)


def _report(args: argparse.Namespace, message: str) -> None:
    """Why the command failed: `galaxynode: <line>` per line on stderr, or, for a daemon logging
    JSON (args.log_json), one JSON log record per line, so a log collector sees why it stopped."""
    if getattr(args, "log_json", False):
        from galaxynode.logs import JsonFormatter
        for line in message.splitlines():
            record = logging.LogRecord("galaxynode", logging.CRITICAL, __file__, 0, line, None, None)
            print(JsonFormatter().format(record), file=sys.stderr)
    else:
        for line in message.splitlines() or [""]:
            print(f"galaxynode: {line}", file=sys.stderr)
