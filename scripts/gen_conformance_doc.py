#!/usr/bin/env python3
"""Write the case table of docs/gelato/conformance.md from the conformance suite's case registry,
so the list of cases cannot drift from the code. The prose around the table is edited by hand.

    .venv/bin/python scripts/gen_conformance_doc.py           # rewrite the table
    .venv/bin/python scripts/gen_conformance_doc.py --check   # exit 1 if it is stale
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from galaxynode.conformance.runner import GROUPS, all_cases  # noqa: E402

DOC = ROOT / "docs" / "gelato" / "conformance.md"
BEGIN = "<!-- BEGIN GENERATED cases: scripts/gen_conformance_doc.py, do not edit -->\n"
END = "<!-- END GENERATED cases -->"


def table() -> str:
    cases = all_cases()
    out = []
    for n, group in enumerate(GROUPS, 1):
        mine = [c for c in cases if c.group == group]
        out.append(f"### {n}. {group} ({len(mine)} cases)\n")
        out.append("| id | section | checks | level | roles |")
        out.append("|---|---|---|---|---|")
        for c in mine:
            checks = c.title.replace("|", "\\|")
            out.append(f"| {c.id} | {c.section} | {checks} | {c.level} | {', '.join(c.roles)} |")
        out.append("")
    return "\n".join(out).rstrip() + "\n"


def render(text: str) -> str:
    pattern = re.compile(re.escape(BEGIN) + r".*?" + re.escape(END), re.S)
    if len(pattern.findall(text)) != 1:
        raise SystemExit(f"gen_conformance_doc: {DOC} needs exactly one block:\n{BEGIN}{END}")
    return pattern.sub(lambda _: BEGIN + "\n" + table() + "\n" + END, text)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="only report whether the doc is stale")
    args = ap.parse_args()
    text = DOC.read_text(encoding="utf-8")
    new = render(text)
    if args.check:
        if new != text:
            print(f"{DOC.relative_to(ROOT)} is stale: run scripts/gen_conformance_doc.py")
            return 1
        return 0
    if new != text:
        DOC.write_text(new, encoding="utf-8")
        print(f"wrote {DOC.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
