"""visits: refuses nodes whose name starts with a configured prefix, answers x.visits.hello with a
greeting and how often that key has said hello (kept in the pool's database), counts the hellos."""
from __future__ import annotations

from galaxynode import plugin
from galaxynode.plugin import Admit, Field, Option, Refuse

assert plugin.API_VERSION == 1


class VisitsPlugin:
    options = {
        "greeting": Option(str, "hello", max=64, help="first word of every answer"),
        "refuse_prefix": Option(str, "blocked", min=1, max=32, help="node names starting with this are refused"),
    }

    def __init__(self, ctx: plugin.PluginContext):
        self.ctx = ctx
        self.hellos = ctx.metrics.counter("hellos", "x.visits.hello requests answered.")
        ctx.messages.register("hello", self.hello, body={"name": Field("str", min_len=1, max_len=64)})

    async def admit(self, request: plugin.AdmissionRequest) -> Admit | Refuse:
        name = request.meta.get("name", "")
        if name.startswith(self.ctx.config["refuse_prefix"]):
            return Refuse(f"visits: {name!r} may not join this pool")
        return Admit(meta={"greeted": "no"})

    async def hello(self, request: plugin.Request) -> dict:
        key = f"visits/{request.key.hex()}"
        visits = int(await self.ctx.store.get(key) or b"0") + 1
        await self.ctx.store.put(key, str(visits).encode())  # returns once committed
        self.hellos.inc()
        return {"text": f"{self.ctx.config['greeting']}, {request.body['name']}", "visits": visits}
