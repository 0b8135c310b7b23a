"""Plugins shipped with galaxynode (registered in pyproject's `galaxynode.plugins` entry points)."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from galaxynode.plugin import Option, PluginContext, PluginError

DEFAULT_TOPICS = ("node.#", "peer.#")


def jsonable(value: Any) -> Any:
    """Event data as JSON-ready values: bytes become hex, tuples/sets lists, keys strings. ASCII output
    keeps every record on one line whatever the data holds."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).hex()
    if isinstance(value, dict):
        return {(k.hex() if isinstance(k, bytes) else str(k)): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # NaN/Infinity are not JSON
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


class AuditLogPlugin:
    """Appends one JSON line per bus event to a file: {"ts", "topic", "origin", "id", "data"}.

    Config (`[plugins.audit-log]`): `path` (default `<data_dir>/audit.log`) and `topics` (patterns,
    default node.# and peer.#).

    Writes are inline: write + flush of a line (~250 bytes) into the page cache (no fsync) measured ~2 us,
    against ~70-100 us for a trio.to_thread round trip; it does not wait for the disk.
    """

    name = "audit-log"
    options = {
        "path": Option(str, "", max=4096, help='file to append to; "" for <data_dir>/audit.log'),
        "topics": Option(list, list(DEFAULT_TOPICS), min=1, max=256, help="event topic patterns"),
    }

    def __init__(self, ctx: PluginContext):
        cfg = ctx.config
        if ctx.bus is None:
            raise PluginError(f"{ctx.name}: needs the event bus")
        topics = cfg.get("topics", DEFAULT_TOPICS)
        if isinstance(topics, str) or not topics or not all(isinstance(t, str) and t for t in topics):
            raise PluginError(f"{ctx.name}: `topics` must be a list of topic patterns")
        path = cfg.get("path") or None
        if path is None:
            if ctx.data_dir is None:
                raise PluginError(f"{ctx.name}: set `path` (no data_dir to default to)")
            path = Path(ctx.data_dir) / "audit.log"
        elif not isinstance(path, str):
            raise PluginError(f"{ctx.name}: `path` must be a file name")
        self.ctx = ctx
        self.topics = list(topics)
        self.path = Path(path)

    async def run(self) -> None:
        with self.path.open("a", encoding="utf-8") as out, self.ctx.bus.subscribe(self.topics) as sub:
            self.ctx.log.info("writing %s events to %s", ", ".join(self.topics), self.path)
            async for ev in sub:
                out.write(self.line(ev))
                out.flush()
        # Only a dropped subscription ends (shutdown cancels us first): crash, so the supervisor resubscribes.
        raise RuntimeError("event subscription ended (dropped as a slow subscriber?)")

    @staticmethod
    def line(ev: Any) -> str:
        record = {"ts": ev.ts, "topic": ev.topic, "origin": jsonable(ev.origin), "id": jsonable(ev.id),
                  "data": jsonable(ev.data)}
        return json.dumps(record, separators=(",", ":")) + "\n"
