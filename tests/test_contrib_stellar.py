"""stellar: StrKey in the core against the SDK, payout transactions decoded and verified with the
SDK, and in a daemon process: admission refused without an account proof and accepted with one,
a replayed proof refused, the rewards epoch paid (XDR served, written, submitted to a local stub
Horizon on 127.0.0.1)."""
from __future__ import annotations

import json
import threading
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs

import pytest
import trio
from hypothesis import given, strategies as st
from stellar_sdk import Keypair, Network, TransactionEnvelope
from stellar_sdk.exceptions import BadSignatureError

from galaxynode import plugin
from galaxynode.contrib.stellar import build_payouts, memo_text, parse_asset, payout_amounts, prove_account
from galaxynode.gelato.errors import ErrorCode
from galaxynode.identity import Identity, format_stellar, parse_public_key, parse_stellar
from galaxynode.net.connection import RemoteError
from galaxynode.nodeclient import connect

from abuse import NETWORK, live_pool

PASSPHRASE = Network.TESTNET_NETWORK_PASSPHRASE


@given(st.binary(min_size=32, max_size=32))
def test_strkey_matches_the_sdk(raw):
    account = Keypair.from_raw_ed25519_public_key(raw).public_key
    assert format_stellar(raw) == account
    assert parse_stellar(account) == raw == parse_public_key(account) == parse_public_key(f" {account} ")


def test_strkey_refuses_what_is_not_an_account_id():
    good = format_stellar(b"\x01" * 32)
    seed = Keypair.random().secret  # S...: a secret seed, not an account
    for bad in (good[:-1] + ("A" if good[-1] != "A" else "B"), good[:-1], seed, good.lower()):
        with pytest.raises(ValueError, match="Stellar account id|not a public key"):
            parse_public_key(bad)


def test_payouts_decode_and_verify_with_the_sdk():
    pool = Keypair.random()
    nodes = [[bytes([i]) * 32, 1000, 1, ppm] for i, ppm in enumerate([500_000, 333_333, 166_547, 0])]
    nodes += [[bytes([100 + i]) * 32, 1, 1, 1] for i in range(120)]  # more than one transaction
    payments = [(format_stellar(k), a) for k, a in payout_amounts(nodes, Decimal("10"))]
    assert payments[0][1] == Decimal("5") and payments[1][1] == Decimal("3.33333")
    assert len(payments) == 123 and sum(a for _, a in payments) <= 10  # zero share: no payment
    xdrs = build_payouts(pool, 41, 7, payments, passphrase=PASSPHRASE, asset=parse_asset("native"), base_fee=100)
    assert len(xdrs) == 2
    ops = []
    for i, xdr in enumerate(xdrs):
        env = TransactionEnvelope.from_xdr(xdr, PASSPHRASE)
        tx = env.transaction
        assert tx.source.account_id == pool.public_key and tx.sequence == 42 + i
        assert tx.memo.memo_text.decode() == memo_text(7, pool.public_key) == f"gn:7:{pool.public_key}"[:28]
        assert tx.fee == 100 * len(tx.operations)
        pool.verify(env.hash(), env.signatures[0].signature)
        with pytest.raises(BadSignatureError):
            Keypair.random().verify(env.hash(), env.signatures[0].signature)
        ops += [(op.destination.account_id, Decimal(op.amount)) for op in tx.operations]
    assert ops == payments


# --- end to end ---------------------------------------------------------------------------------------

class Horizon(BaseHTTPRequestHandler):
    """Just enough of Horizon: an account's sequence and POST /transactions (kept for the test)."""
    submitted: list[str] = []

    def _json(self, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        account = self.path.split("?")[0].rstrip("/").split("/")[-1]
        self._json({"id": account, "account_id": account, "sequence": "1000"})

    def do_POST(self):
        form = parse_qs(self.rfile.read(int(self.headers["Content-Length"])).decode())
        self.submitted.append(form["tx"][0])
        self._json({"hash": TransactionEnvelope.from_xdr(form["tx"][0], PASSPHRASE).hash_hex(), "successful": True})

    def log_message(self, *args):
        pass


@pytest.fixture
def horizon():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Horizon)
    Horizon.submitted = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", Horizon.submitted
    server.shutdown()
    server.server_close()
    thread.join()


async def test_admission_by_account_proof_and_epoch_payouts(tmp_path, horizon):
    url, submitted = horizon
    account, other = Keypair.random(), Keypair.random()
    config = tmp_path / "galaxynode.toml"
    config.write_text(f"""[plugins]
enabled = ["rewards", "stellar"]

[plugins.rewards]
epoch = 2
checkpoint = 0.1
grace = 0.2

[plugins.stellar]
accounts = ["{account.public_key}"]
payout_amount = "100"
horizon_url = "{url}"
""")
    node = Identity.generate()
    data = tmp_path / "data"
    with live_pool(data, args=("--config", str(config))) as pool:
        async with connect(pool.url, node, network=NETWORK) as client:
            with pytest.raises(RemoteError) as info:
                await client.join(ttl=600)
            assert info.value.code == ErrorCode.NOT_ADMITTED and "prove control of a Stellar account" in info.value.message
            with pytest.raises(RemoteError) as info:  # an account this pool does not admit
                await prove_account(client, other.secret, PASSPHRASE)
            assert info.value.code == ErrorCode.FORBIDDEN
            challenge = await plugin.call(client, "stellar", "challenge", {"account": account.public_key})
            env = TransactionEnvelope.from_xdr(challenge["xdr"], PASSPHRASE)
            with pytest.raises(RemoteError) as info:  # not signed by the account
                await plugin.call(client, "stellar", "prove", {"xdr": challenge["xdr"]})
            assert info.value.code == ErrorCode.FORBIDDEN
            env.sign(account)
            assert await plugin.call(client, "stellar", "prove", {"xdr": env.to_xdr()}) == {"account": account.public_key}
            with pytest.raises(RemoteError, match="used already") as info:  # replayed
                await plugin.call(client, "stellar", "prove", {"xdr": env.to_xdr()})
            await client.join(ttl=600)
            [mine] = await client.query(key=node.public)
            assert mine.meta["x.stellar.account"] == account.public_key
        with trio.fail_after(30):  # the first whole epoch of the node: paid
            while True:
                await trio.sleep(0.3)
                async with connect(pool.url, Identity.generate(), network=NETWORK) as probe:
                    paid = None
                    for epoch in range(pool_epoch() - 3, pool_epoch()):
                        try:
                            paid = await plugin.call(probe, "stellar", "payout", {"epoch": epoch})
                            pool_key = probe.peer_key
                            break
                        except RemoteError:
                            continue
                if paid and paid["submitted"]:
                    break
    assert len(paid["xdr"]) == 1 and paid["xdr"][0] in submitted
    env = TransactionEnvelope.from_xdr(paid["xdr"][0], PASSPHRASE)
    pool_account = format_stellar(pool_key)
    Keypair.from_public_key(pool_account).verify(env.hash(), env.signatures[0].signature)
    tx = env.transaction
    assert tx.source.account_id == pool_account and tx.sequence == 1001  # from the stub Horizon
    assert tx.memo.memo_text.decode().startswith(f"gn:{epoch}:G")
    [op] = tx.operations
    assert op.destination.account_id == format_stellar(node.public) and Decimal(op.amount) == 100
    assert (data / "stellar" / f"payout-{epoch}.xdr").read_text().split() == paid["xdr"]


def pool_epoch() -> int:
    import time
    return time.time_ns() // 1_000_000 // 2000
