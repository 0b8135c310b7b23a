"""The case registry, the engine that runs cases against an endpoint, and the reports.

A case is an async function of `Options` that returns (pass, optionally with a note) or raises
CaseFailed (fail, or non-strict when the case checks a SHOULD, informational for a MAY) or
CaseSkipped. Every case opens its own connections with fresh keys, so cases are independent and
any subset can run; each is bounded by `Options.timeout` plus the waiting it declares.
"""
from __future__ import annotations

import fnmatch
import json
import time
import traceback
from typing import Any, Awaitable, Callable, TextIO

import attrs
import trio

from galaxynode.conformance.probe import Banned, CaseFailed, CaseInfo, CaseSkipped, Options, open_link
from galaxynode.net.transport import ChannelClosed

GROUPS = ("framing", "signatures", "handshake", "session", "errors", "limits", "registry", "events", "discovery",
          "peering")
LEVELS = ("MUST", "SHOULD", "MAY")
# How a failed check is reported, by the strength of the requirement it checks. A MAY case fails
# when the endpoint does the optional thing wrongly; not doing it at all is CaseInfo.
FAILED_AS = {"MUST": "fail", "SHOULD": "non-strict", "MAY": "fail"}
ROLES = ("pool", "mainnet")


@attrs.frozen
class Case:
    id: str
    group: str
    section: str      # the docs/gelato section checked, e.g. "handshake §7.2"
    title: str
    level: str
    roles: tuple[str, ...]
    fn: Callable[[Options], Awaitable[str | None]]
    wait: Callable[[Options], float]  # seconds the case may wait on top of Options.timeout


CASES: list[Case] = []


def case(group: str, section: str, title: str, *, level: str = "MUST", roles: tuple[str, ...] = ROLES,
         wait: Callable[[Options], float] = lambda o: 0.0) -> Callable:
    """Register a case; ids are `<group number>.<n>` in registration order."""
    assert group in GROUPS and level in LEVELS and set(roles) <= set(ROLES)

    def register(fn: Callable[[Options], Awaitable[str | None]]) -> Callable:
        n = sum(c.group == group for c in CASES) + 1
        CASES.append(Case(f"{GROUPS.index(group) + 1}.{n}", group, section, title, level, roles, fn, wait))
        return fn
    return register


def all_cases() -> list[Case]:
    """Every case, in id order (importing the case modules registers them)."""
    from galaxynode.conformance import (cases_discovery, cases_errors, cases_events, cases_framing,  # noqa: F401
                                        cases_handshake, cases_limits, cases_policy, cases_registry,
                                        cases_session, cases_signatures)
    from galaxynode.conformance import cases_attribution  # noqa: F401  (after cases_policy: its ids stay)
    from galaxynode.conformance import cases_mainnet  # noqa: F401  (after the others: the earlier ids stay)
    from galaxynode.conformance import cases_pacing  # noqa: F401  (last: the earlier ids stay)
    return sorted(CASES, key=lambda c: tuple(int(x) for x in c.id.split(".")))


def select(cases: list[Case], role: str | None, patterns: str | None) -> list[Case]:
    """Cases for `role` (None: any) matching any comma-separated glob, on the id or the group
    ('3.*', 'registry')."""
    pats = [p.strip() for p in (patterns or "*").split(",") if p.strip()]
    return [c for c in cases if (role is None or role in c.roles)
            and any(fnmatch.fnmatchcase(c.id, p) or fnmatch.fnmatchcase(c.group, p) for p in pats)]


@attrs.define
class Result:
    case: Case
    outcome: str = "pass"  # pass | fail | non-strict | informational | skipped
    expected: str = ""
    got: str = ""
    note: str = ""
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        c = self.case
        return {"id": c.id, "group": c.group, "section": c.section, "title": c.title, "level": c.level,
                "outcome": self.outcome, "expected": self.expected, "got": self.got, "note": self.note,
                "seconds": round(self.seconds, 3)}


class Unreachable(Exception):
    """The endpoint cannot be reached or refuses the suite's first handshake."""


@attrs.frozen
class Endpoint:
    key: bytes
    role: str
    agent: str


async def preflight(opts: Options) -> Endpoint:
    """One plain handshake: is the endpoint there, on our network, and what is it?"""
    try:
        with trio.fail_after(opts.timeout):
            async with open_link(opts) as link:
                hello = link.peer_hello.msg
                await link.ping()
                return Endpoint(link.session.peer_key, hello.role, hello.agent)
    except ChannelClosed as e:
        raise Unreachable(f"cannot reach {opts.url}: {e.reason or e}") from None
    except trio.TooSlowError:
        raise Unreachable(f"{opts.url} did not complete a handshake within {opts.timeout:g}s") from None
    except Banned as e:
        raise Unreachable(f"{opts.url} refuses this address (temporarily_banned: {e})") from None
    except CaseFailed as e:
        raise Unreachable(f"{opts.url}: handshake failed: expected {e.expected}, got {e.got}") from None


def _leaf(exc: BaseException) -> BaseException:
    """A case's own nursery wraps what it raises in a group; judge the single exception inside."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


async def run_case(c: Case, opts: Options) -> Result:
    result = Result(c)
    started = time.monotonic()
    budget = opts.timeout + c.wait(opts)
    try:
        with trio.fail_after(budget):
            result.note = await c.fn(opts) or ""
    except Exception as exc:
        e = _leaf(exc)
        if isinstance(e, CaseFailed):
            result.outcome, result.expected, result.got = FAILED_AS[c.level], e.expected, e.got
        elif isinstance(e, CaseSkipped):
            result.outcome, result.note = "skipped", str(e)
        elif isinstance(e, CaseInfo):
            result.outcome, result.note = "informational", str(e)
        elif isinstance(e, trio.TooSlowError):
            result.outcome, result.expected, result.got = "fail", "the case to complete", f"no answer within {budget:g}s"
        elif isinstance(e, ChannelClosed):
            result.outcome, result.expected = "fail", "the connection to stay open"
            result.got = f"it closed ({e.code}{': ' + e.reason if e.reason else ''})"
        elif isinstance(e, Banned):
            raise e from None
        else:  # a bug of the suite itself: report it, run the other cases
            result.outcome, result.expected = "fail", "the case to run"
            result.got = f"suite error: {type(e).__name__}: {e}"
            result.note = "".join(traceback.format_exception(e, limit=-3))
    if result.outcome == "fail":
        await check_ban(opts)
    result.seconds = time.monotonic() - started
    return result


async def check_ban(opts: Options) -> None:
    """Raise Banned if the endpoint now bans us. An endpoint may close a banned address's sockets
    without a word (galaxynode does, but for one it lets through to the handshake), which a case
    would report as a failure: before a failure is reported, one plain handshake asks."""
    try:
        with trio.move_on_after(opts.timeout):
            async with open_link(opts) as link:
                await link.ping()
    except Exception as exc:
        e = _leaf(exc)
        if isinstance(e, Banned):
            raise e from None
        # anything else: not a ban; the case's own failure stands


class Results(list):
    """The results of the cases that ran, in order; `stopped` says why the run ended early (a ban),
    None when every case ran. Cases that did not run have no result: a ban says nothing about them."""

    stopped: str | None = None


def stop_line(opts: Options, case: Case, ban: Banned) -> str:
    """The one line a ban turns the rest of the run into: what happened and which setting to change."""
    return (f"stopped at case {case.id}: {opts.url} banned this client (temporarily_banned: {_printable(str(ban))}); the suite "
            f"breaks the protocol on purpose, so allow it more violations (galaxynode: limits.violations_before_ban, "
            f"e.g. GALAXYNODE_LIMITS_VIOLATIONS_BEFORE_BAN=1000) or lift the ban (galaxynode admin URL --key ADMIN_KEY "
            f"unban --address ADDRESS), then rerun")


def _printable(text: str, limit: int = 200) -> str:
    """The endpoint's words, cut and escaped: one line, no control characters for the terminal."""
    return repr(text[:limit])[1:-1]


async def run_suite(opts: Options, cases: list[Case], *,
                    progress: Callable[[Result], None] | None = None) -> Results:
    """Run `cases` one after the other. A ban by the endpoint stops the run (Results.stopped): the
    case that met it and the rest did not run and get no result."""
    results = Results()
    for c in cases:
        try:
            r = await run_case(c, opts)
        except Banned as e:
            results.stopped = stop_line(opts, c, e)
            break
        results.append(r)
        if progress is not None:
            progress(r)
    return results


def summary(results: list[Result]) -> dict[str, int]:
    out = {k: 0 for k in ("pass", "fail", "non-strict", "informational", "skipped")}
    for r in results:
        out[r.outcome] += 1
    return out


def print_result(r: Result, out: TextIO) -> None:
    c = r.case
    mark = {"pass": "pass", "fail": "FAIL", "non-strict": "NON-STRICT", "informational": "INFO",
            "skipped": "skip"}[r.outcome]
    print(f"  {c.id:<6} {mark:<10} {c.title} [{c.section}, {c.level}]", file=out)
    if r.expected or r.got:
        print(f"         expected: {r.expected}", file=out)
        print(f"         got:      {r.got}", file=out)
    if r.note:
        print(f"         note:     {r.note.strip().splitlines()[-1]}", file=out)


def print_summary(results: list[Result], out: TextIO) -> None:
    s = summary(results)
    parts = ", ".join(f"{n} {k}" for k, n in s.items() if n)
    print(f"{len(results)} cases: {parts}", file=out)


def report(opts: Options, endpoint: Endpoint, results: list[Result]) -> dict[str, Any]:
    """`passed` needs every chosen case to have run; `stopped` says why not (a ban), else null."""
    stopped = getattr(results, "stopped", None)
    return {"endpoint": opts.url, "network": opts.network, "role": opts.role, "key": endpoint.key.hex(),
            "agent": endpoint.agent, "summary": summary(results),
            "passed": stopped is None and not any(r.outcome == "fail" for r in results),
            "stopped": stopped, "cases": [r.to_json() for r in results]}


def write_json(path: str, data: dict[str, Any]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2)
        f.write("\n")
