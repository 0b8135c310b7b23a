"""Logging to stderr (journald picks it up), plain or one JSON object per line."""
from __future__ import annotations

import json
import logging
import sys
import time

_PLAIN = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


def printable(text: str) -> str:
    """Text from the network made safe to print on a terminal or in a log line: every character
    that is not printable (ESC of an ANSI sequence, BEL, CR, newline, bidi overrides, ...) becomes
    its visible escape (\\x1b, \\n, \\u202e), as in the JSON that `watch` prints; printable text,
    accents included, stays as it is. Without it a node's meta could clear the screen, retitle the
    window, or forge log lines and table rows."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


class PlainFormatter(logging.Formatter):
    """One line per record: the message is escaped (log messages quote what remote parties sent);
    a traceback, which is ours, follows as usual."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = printable(record.message)
        return super().formatMessage(record)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


def setup_logging(level: str = "info", fmt: str = "plain") -> None:
    """(Re)configure the root logger; called again on SIGHUP."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else PlainFormatter(_PLAIN))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
