"""`python tests/memprobe.py ARGS...` = `python -m galaxynode ARGS...` with a memory probe, for the
reliability tests: on SIGUSR1 the process collects its garbage (gc.collect, all generations) and then
appends one JSON line to the file named by $MEMPROBE_OUT:

    {"rss_kib", "blocks" (sys.getallocatedblocks), "objects" (gc-tracked), "heap_kib" (malloc in use)}

Why: RSS alone cannot tell a leak from garbage that waits for the collector (the daemon's young
threshold lets up to gc_threshold objects wait) or from free space the allocator keeps; after a full
collection, live blocks and heap bytes can. Only the test asks (at quiet points), so what runs in
between is the daemon as shipped.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import gc
import json
import os
import runpy
import signal
import sys


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                      "fsmblks", "uordblks", "fordblks", "keepcost")]


def _heap_in_use() -> ctypes._FuncPointer | None:
    """glibc's mallinfo2 (2.33+), or None where there is none."""
    try:
        fn = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallinfo2
    except (OSError, AttributeError):
        return None
    fn.restype = _MallInfo2
    return fn


def _probe(out: str, mallinfo) -> None:
    gc.collect()
    with open("/proc/self/status") as f:
        rss = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    figures = {"rss_kib": rss, "blocks": sys.getallocatedblocks(), "objects": len(gc.get_objects()),
               "heap_kib": mallinfo().uordblks // 1024 if mallinfo else None}
    with open(out, "a") as f:
        f.write(json.dumps(figures) + "\n")


def main() -> None:
    out, mallinfo = os.environ["MEMPROBE_OUT"], _heap_in_use()
    signal.signal(signal.SIGUSR1, lambda *_: _probe(out, mallinfo))
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # as -m from the checkout
    sys.argv = ["galaxynode", *sys.argv[1:]]
    runpy.run_module("galaxynode", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
