"""The dashboard's routes against a live daemon process: pages and JSON with the strict headers, GET only."""

from __future__ import annotations

import json
import signal
import urllib.error
import urllib.request

import pytest

from galaxynode.dashboard import CSP
from procutil import Proc


def test_dashboard_pages_and_api_with_strict_headers(tmp_path):
    with Proc("run", "--listen", "ws://127.0.0.1:0", "--data-dir", str(tmp_path / "d"),
              env={"GALAXYNODE_METRICS_LISTEN": "127.0.0.1:0"}) as d:
        url = d.wait_for(r"serving metrics on (http://127\.0\.0\.1:\d+/)metrics").group(1) + "dashboard/"
        d.wait_for("ready: pool")
        for page, ctype in (("", "text/html"), ("app.js", "text/javascript"), ("style.css", "text/css")):
            with urllib.request.urlopen(url + page, timeout=10) as r:
                assert r.headers["Content-Type"].startswith(ctype)
                assert r.headers["Content-Security-Policy"] == CSP
                assert r.headers["X-Content-Type-Options"] == "nosniff"
                assert r.headers["Referrer-Policy"] == "no-referrer"
                r.read()
        with urllib.request.urlopen(url + "api/overview", timeout=10) as r:
            o = json.loads(r.read())
        assert o["key"].startswith("ed25519:") and o["nodes"] == 0 and o["ready"] is True
        with urllib.request.urlopen(url + "api/nodes?cap=x&meta=a=b", timeout=10) as r:
            assert json.loads(r.read()) == {"nodes": [], "cursor": None}
        with pytest.raises(urllib.error.HTTPError) as post:
            urllib.request.urlopen(urllib.request.Request(url + "api/overview", data=b"x", method="POST"), timeout=10)
        post.value.close()
        assert post.value.code == 405
        assert d.stop(signal.SIGTERM) == 0
        assert "Traceback" not in d.output
