"""wss:// end to end with a private CA, every side a real process: a pool with a CA-signed certificate;
clients with and without --ca; certificates for the wrong host and expired; a pool that peers over
wss with [tls] ca_file and one that cannot (and says it will not fix itself); the server's log of
failed handshakes; a renewed certificate taken on SIGHUP."""
from __future__ import annotations

import re
import signal
import ssl
import subprocess
import sys
import urllib.request

import pytest

from procutil import Proc
from test_tls import issue, make_ca

GELATO = r"serving Gelato on (wss://127\.0\.0\.1:\d+)"


def cli(*args: str) -> subprocess.CompletedProcess:
    """A client command as a process; a command that retried forever would hit the timeout."""
    return subprocess.run([sys.executable, "-m", "galaxynode", *args], capture_output=True, text=True, timeout=60)


def wss_pool(tmp_path, name: str, issued, *args: str, env: dict | None = None) -> Proc:
    return Proc("run", "--listen", "wss://127.0.0.1:0", "--data-dir", str(tmp_path / name), *args,
                env={"GALAXYNODE_SERVER_TLS_CERT": str(issued.cert), "GALAXYNODE_SERVER_TLS_KEY": str(issued.key),
                     **(env or {})})


@pytest.fixture
def ca(tmp_path):
    return make_ca(tmp_path / "ca")


def test_private_ca_clients_peers_and_the_servers_log(tmp_path, ca):
    with wss_pool(tmp_path, "a", issue(tmp_path, ca), env={"GALAXYNODE_METRICS_LISTEN": "127.0.0.1:0"}) as a:
        metrics = a.wait_for(r"serving metrics on (http://[^/\s]+)").group(1)
        url = a.wait_for(GELATO).group(1)
        a.wait_for("ready: pool")
        r = cli("status", url)  # no CA: refused at once, with the reason and what to do
        assert r.returncode != 0
        assert f"{url}: certificate verify failed: unknown CA (use --ca FILE or [tls] ca_file)" in r.stderr, r.stderr
        assert "Traceback" not in r.stderr and r.stderr.strip().count("\n") == 0
        for command in ("status", "query"):
            r = cli(command, url, "--ca", str(ca[0].cert))
            assert r.returncode == 0, r.stderr
        assert cli("keygen", "--out", str(tmp_path / "node.key")).returncode == 0
        r = cli("node", "join", url, "--key", str(tmp_path / "node.key"))  # exits instead of retrying forever
        assert r.returncode != 0 and "certificate verify failed: unknown CA" in r.stderr, r.stderr
        r = cli("status", url.replace("wss://", "ws://"))
        assert r.returncode != 0 and "the server speaks TLS here: use wss://" in r.stderr, r.stderr

        with Proc("run", "--listen", "ws://127.0.0.1:0", "--data-dir", str(tmp_path / "b"), "--peer", url,
                  env={"GALAXYNODE_TLS_CA_FILE": str(ca[0].cert)}) as b, \
                Proc("run", "--listen", "ws://127.0.0.1:0", "--data-dir", str(tmp_path / "c"), "--peer", url,
                     "--mainnet", url) as c:
            b.wait_for(r"peer \S+ connected \(outbound")
            line = c.wait_for(rf"peer {url}: certificate verify failed: unknown CA.*will not fix itself.*").group(0)
            assert "redialling in 60s" in line  # [peers] reconnect_max, not the quick backoff
            line = c.wait_for(rf"main net {url}: certificate verify failed: unknown CA.*will not fix itself.*").group(0)
            assert "retrying in 60.0s" in line
            assert b.stop() == 0 and c.stop() == 0
        a.wait_for(r"TLS handshake with 127\.0\.0\.1:\d+ failed: the client does not trust our certificate "
                   r"\(unknown CA\)")
        a.wait_for(r"TLS handshake with 127\.0\.0\.1:\d+ failed: plain HTTP on a TLS port")
        with urllib.request.urlopen(metrics + "/metrics", timeout=10) as r:
            failed = re.search(r"^galaxynode_tls_handshakes_failed_total (\S+)$", r.read().decode(), re.M)
        assert failed and float(failed.group(1)) >= 2  # the CA-less client and the plain-HTTP one at least
        assert a.stop() == 0
        assert "Traceback" not in a.output


def test_unusable_ca_file_is_a_usage_error(tmp_path):
    (tmp_path / "bad.pem").write_text("not a certificate\n")
    r = cli("status", "wss://127.0.0.1:1", "--ca", str(tmp_path / "bad.pem"))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert f"argument --ca: {tmp_path / 'bad.pem'}: no PEM certificate in the CA file" in r.stderr


@pytest.mark.parametrize("case, reason", [("wrong_host", "certificate verify failed: hostname mismatch"),
                                          ("expired", "certificate verify failed: expired")])
def test_wrong_host_and_expired_certificates(tmp_path, ca, case, reason):
    issued = issue(tmp_path, ca, ip="127.0.0.2") if case == "wrong_host" else issue(tmp_path, ca, expired=True)
    with wss_pool(tmp_path, "a", issued) as a:
        url = a.wait_for(GELATO).group(1)
        r = cli("status", url, "--ca", str(ca[0].cert))
        assert r.returncode != 0 and f"{url}: {reason}" in r.stderr, r.stderr
        if case == "expired":
            assert "expired on" in a.output  # the server said so at start
        assert a.stop() == 0


def test_sighup_takes_a_renewed_certificate(tmp_path, ca):
    first = issue(tmp_path, ca)
    with wss_pool(tmp_path, "a", first) as a:
        url = a.wait_for(GELATO).group(1)
        a.wait_for("ready: pool")
        port = int(url.rsplit(":", 1)[1])
        before = ssl.get_server_certificate(("127.0.0.1", port))
        renewed = issue(tmp_path / "renewed", ca)
        first.cert.write_bytes(renewed.cert.read_bytes())
        first.key.write_bytes(renewed.key.read_bytes())
        a.send_signal(signal.SIGHUP)
        a.wait_for("TLS certificate .* re-read")
        after = ssl.get_server_certificate(("127.0.0.1", port))
        assert after != before and after.strip() == renewed.cert.read_text().strip()
        assert cli("status", url, "--ca", str(ca[0].cert)).returncode == 0
        first.key.write_text("garbage\n")  # a bad renewal keeps the running pair
        a.send_signal(signal.SIGHUP)
        a.wait_for(f"reload: keeping the running TLS certificate: {first.key}: no usable PEM private key")
        assert ssl.get_server_certificate(("127.0.0.1", port)) == after
        assert a.stop() == 0
