"""What every command family of `galaxynode` shares: the one-line error, exit codes, argument
types, the client-connection arguments, and output helpers (tables, JSON, times, keys).

Light on purpose (no trio, no network stack at import), so `galaxynode --help` stays fast.
"""
from __future__ import annotations

import argparse
import json
import time
from datetime import datetime, timezone
from typing import Any, Callable, Sequence

from galaxynode.logs import printable

EXIT_USAGE = 2  # bad usage, config or key file; 1 is a runtime failure
DEFAULT_NETWORK = "galaxy-dev"  # = nodeclient.DEFAULT_NETWORK (not imported: keeps --help light)


class CliError(Exception):
    """A user-facing failure: printed as one line, exit `code`."""

    def __init__(self, message: str, code: int = 1):
        super().__init__(message)
        self.code = code


def cli_error(message: str, code: int = 1) -> CliError:
    """A CliError for text that may come from a remote party (a pool's refusal): one printable line."""
    return CliError(printable(" ".join(message.split("\n"))), code)


# --- argument types ----------------------------------------------------------------------------

def url(text: str) -> str:
    from galaxynode.net.transport import parse_url
    try:
        parse_url(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def ca_file(text: str) -> str:
    """--ca FILE: a PEM file with at least one certificate, checked before anything is dialled."""
    from galaxynode.net.tls import TLSError, client_context
    try:
        client_context(text)
    except TLSError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def node_key(text: str) -> bytes:
    from galaxynode.identity import parse_public_key
    try:
        return parse_public_key(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def meta_pair(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"{text!r}: expected NAME=VALUE")
    return name, value


def positive(kind: type) -> Callable[[str], Any]:
    def convert(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r}: not a number") from None
        if not value > 0 or value == float("inf"):
            raise argparse.ArgumentTypeError(f"{text!r}: must be positive")
        return value
    convert.__name__ = kind.__name__
    return convert


def int_in(lo: int, hi: int) -> Callable[[str], int]:
    def convert(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r}: not a whole number") from None
        if not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"{text!r}: must be in {lo}..{hi}")
        return value
    convert.__name__ = "int"
    return convert


def seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: not a number") from None
    if not 0 < value < 1e9:
        raise argparse.ArgumentTypeError(f"{text!r}: must be positive")
    return value


# --- the arguments every client command shares -------------------------------------------------

def add_client_args(p: argparse.ArgumentParser) -> None:
    """URL, --network, --timeout, --ca; `connect_options(args)` turns them into connect() keywords."""
    p.add_argument("url", type=url, metavar="URL", help="pool endpoint, e.g. ws://127.0.0.1:7447 (no port: 7447)")
    p.add_argument("--network", default=DEFAULT_NETWORK, metavar="ID", help=f"network id (default {DEFAULT_NETWORK})")
    p.add_argument("--timeout", type=positive(float), default=10.0, metavar="S",
                   help="connect and reply timeout in seconds (default 10)")
    add_ca_arg(p)


def add_ca_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ca", type=ca_file, metavar="FILE",
                   help="for wss://: trust the CA certificates (or self-signed certificate) in this PEM file")


def connect_options(args: argparse.Namespace) -> dict[str, Any]:
    """Keywords for nodeclient.connect/keep_joined from add_client_args' arguments."""
    out: dict[str, Any] = {"network": args.network, "timeout": args.timeout}
    if getattr(args, "ca", None):
        out["ca_file"] = args.ca
    return out


# --- output ------------------------------------------------------------------------------------

def pub(raw: bytes | None) -> str | None:
    from galaxynode.identity import format_public_key
    return None if raw is None else format_public_key(raw)


def json_default(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).hex()
    if isinstance(value, (tuple, set, frozenset)):
        return list(value)
    raise TypeError(f"cannot encode {type(value).__name__} as JSON")


def print_json(value: Any, *, indent: int | None = 2) -> None:
    print(json.dumps(value, default=json_default, indent=indent), flush=True)


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def duration(secs: float) -> str:
    s = int(secs)
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s" if m else f"{s}s"


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def format_table(rows: Sequence[Sequence[str]], headers: Sequence[str] | None = None) -> str:
    """Aligned columns; every cell goes through printable(), so no cell can break the layout."""
    rows = [[printable(str(c)) for c in row] for row in ([headers, *rows] if headers is not None else rows)]
    widths = [max(len(c) for c in col) for col in zip(*rows)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows)
