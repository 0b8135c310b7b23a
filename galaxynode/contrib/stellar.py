"""stellar: a node's Ed25519 key is a Stellar keypair. This plugin (1) admits only nodes that proved
control of a configured Stellar account, SEP-10 style: `x.stellar.challenge {account}` answers a
challenge transaction signed by the pool key, the node signs it with the account's key and sends it
back in `x.stellar.prove {xdr}`; the SDK verifies it offline; the binding key -> account is kept in
the plugin store, so it survives restarts; (2) pays each rewards epoch: on the rewards plugin's
`x.rewards.epoch` event it builds payment transactions (one payment per node with a share, at most
100 per transaction, memo "gn:<epoch>:<pool account>"), signs them with the pool key, stores them,
writes their XDR to <data_dir>/stellar/payout-<epoch>.xdr for offline submission and submits them to
`horizon_url` when one is set. `x.stellar.payout {epoch}` serves the XDR.

Signing needs the pool's private key, which the plugin API keeps inside (it signs records only):
the plugin reads the pool key file itself (`key_file`, default the data directory's node.key) and
refuses to start unless its public key is ctx.identity.public."""
from __future__ import annotations

import time
from decimal import ROUND_DOWN, Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import msgpack
import trio

from galaxynode import plugin
from galaxynode.plugin import Admit, Field, MessageError, Option, Refuse

MAX_PAYMENTS = 100          # operations per Stellar transaction
MAX_CHALLENGES = 10_000     # outstanding (issued, not yet proved) challenges held in memory
STROOP = Decimal("0.0000001")


def memo_text(epoch: int, pool_account: str) -> str:
    """`gn:<epoch>:<pool account>` cut to Stellar's 28-byte text memo."""
    return f"gn:{epoch}:{pool_account}"[:28]


def payout_amounts(nodes: list, total: Decimal) -> list[tuple[bytes, Decimal]]:
    """(key, amount) per node of a rewards report with a share: total x ppm / 10^6, rounded down to
    a stroop (so the payments never add up to more than total)."""
    out = []
    for key, _ms, _weight, ppm in nodes:
        amount = (total * ppm / 1_000_000).quantize(STROOP, rounding=ROUND_DOWN)
        if amount > 0:
            out.append((key, amount))
    return out


def build_payouts(signer: Any, sequence: int, epoch: int, payments: list[tuple[str, Decimal]], *,
                  passphrase: str, asset: Any, base_fee: int) -> list[str]:
    """Signed transaction envelopes (XDR, base64) paying `payments` (account id, amount), from the
    signer's account whose current sequence number is `sequence`."""
    from stellar_sdk import Account, TransactionBuilder
    account = Account(signer.public_key, sequence)
    out = []
    for i in range(0, len(payments), MAX_PAYMENTS):
        builder = TransactionBuilder(account, network_passphrase=passphrase, base_fee=base_fee)
        builder.add_text_memo(memo_text(epoch, signer.public_key)).add_time_bounds(0, 0)
        for destination, amount in payments[i:i + MAX_PAYMENTS]:
            builder.append_payment_op(destination, asset, str(amount))
        tx = builder.build()  # increments account.sequence
        tx.sign(signer)
        out.append(tx.to_xdr())
    return out


def parse_asset(text: str) -> Any:
    from stellar_sdk import Asset
    if text == "native":
        return Asset.native()
    code, sep, issuer = text.partition(":")
    return Asset(code, issuer)


class StellarPlugin:
    name = "stellar"
    options = {
        "accounts": Option(list, [], help="Stellar account ids (G...) a node may prove control of; empty: any"),
        "network_passphrase": Option(str, "Test SDF Network ; September 2015", min=1, max=128,
                                     help="the Stellar network's passphrase (challenges and payouts)"),
        "home_domain": Option(str, "galaxynode.pool", min=1, max=64, help="SEP-10 home and web auth domain"),
        "challenge_timeout": Option(int, 300, min=10, max=86400, help="seconds a challenge may be answered in"),
        "key_file": Option(str, "", max=4096, help="the pool's key file (default: <data_dir>/node.key)"),
        "payout_amount": Option(str, "", max=32, help="amount paid per rewards epoch, shared by the report's "
                                                      "shares; empty: no payouts"),
        "asset": Option(str, "native", min=1, max=70, help='"native" or "CODE:ISSUER"'),
        "base_fee": Option(int, 100, min=100, max=10_000_000, help="stroops per operation"),
        "sequence": Option(int, 0, min=0, max=2**63 - 1,
                           help="the pool account's sequence number (offline: payouts continue from it)"),
        "horizon_url": Option(str, "", max=512, help="submit payouts to this Horizon; empty: XDR files only"),
    }

    def __init__(self, ctx: plugin.PluginContext):
        from stellar_sdk import Keypair
        from stellar_sdk.exceptions import Ed25519PublicKeyInvalidError

        from galaxynode.identity import KeyFileError, format_stellar, load_key
        self.ctx, cfg = ctx, ctx.config
        try:
            self.accounts = {Keypair.from_public_key(a).public_key for a in cfg["accounts"]}
        except (Ed25519PublicKeyInvalidError, ValueError, TypeError) as e:
            raise plugin.PluginError(f"stellar: accounts: {e}") from None
        try:
            self.amount = Decimal(cfg["payout_amount"]) if cfg["payout_amount"] else None
            self.asset = parse_asset(cfg["asset"])
        except (InvalidOperation, ValueError) as e:
            raise plugin.PluginError(f"stellar: payout_amount/asset: {e}") from None
        if self.amount is not None and (self.amount <= 0 or self.amount != self.amount.quantize(STROOP)):
            raise plugin.PluginError("stellar: payout_amount must be positive with at most 7 decimals")
        path = Path(cfg["key_file"]) if cfg["key_file"] else Path(ctx.data_dir or ".") / "node.key"
        try:
            identity = load_key(path)
        except KeyFileError as e:
            raise plugin.PluginError(f"stellar: key_file: {e}") from None
        if identity.public != ctx.identity.public:
            raise plugin.PluginError(f"stellar: key_file {path} is not the pool's key")
        self.signer = Keypair.from_raw_ed25519_seed(identity.private.private_bytes_raw())
        assert self.signer.public_key == format_stellar(ctx.identity.public)
        self.challenges: dict[bytes, float] = {}  # tx hash -> deadline (monotonic)
        self.proofs = ctx.metrics.counter("proofs", "Account proofs accepted.") if ctx.metrics else None
        self.payouts = ctx.metrics.counter("payouts", "Payout transactions built.") if ctx.metrics else None
        ctx.messages.register("challenge", self.challenge, body={"account": Field("str", min_len=56, max_len=56)})
        ctx.messages.register("prove", self.prove, body={"xdr": Field("str", min_len=1, max_len=4096)})
        ctx.messages.register("payout", self.payout, body={"epoch": Field("uint")})

    # --- admission ----------------------------------------------------------------------------------

    async def challenge(self, request: plugin.Request) -> dict:
        from stellar_sdk import TransactionEnvelope
        from stellar_sdk.sep.stellar_web_authentication import build_challenge_transaction
        account = request.body["account"]
        if self.accounts and account not in self.accounts:
            raise MessageError("forbidden", f"stellar: {account} is not an account this pool admits")
        now = time.monotonic()
        self.challenges = {h: d for h, d in self.challenges.items() if d > now}
        if len(self.challenges) >= MAX_CHALLENGES:
            raise MessageError("unavailable", "stellar: too many challenges outstanding; try again later")
        cfg = self.ctx.config
        try:
            xdr = build_challenge_transaction(self.signer.secret, account, cfg["home_domain"], cfg["home_domain"],
                                              cfg["network_passphrase"], cfg["challenge_timeout"])
        except ValueError as e:
            raise MessageError("invalid_body", f"stellar: {e}") from None
        tx_hash = TransactionEnvelope.from_xdr(xdr, cfg["network_passphrase"]).hash()
        self.challenges[tx_hash] = now + cfg["challenge_timeout"]
        return {"xdr": xdr}

    async def prove(self, request: plugin.Request) -> dict:
        from stellar_sdk.exceptions import SdkError
        from stellar_sdk.sep.stellar_web_authentication import (
            read_challenge_transaction, verify_challenge_transaction_signed_by_client_master_key)
        cfg = self.ctx.config
        args = (self.signer.public_key, cfg["home_domain"], cfg["home_domain"], cfg["network_passphrase"])
        try:
            challenge = read_challenge_transaction(request.body["xdr"], *args)
            verify_challenge_transaction_signed_by_client_master_key(request.body["xdr"], *args)
        except (SdkError, ValueError) as e:
            raise MessageError("forbidden", f"stellar: challenge does not verify: {e}") from None
        if self.challenges.pop(challenge.transaction.hash(), 0) < time.monotonic():
            raise MessageError("forbidden", "stellar: challenge not issued here, used already or expired")
        account = challenge.client_account_id
        if self.accounts and account not in self.accounts:
            raise MessageError("forbidden", f"stellar: {account} is not an account this pool admits")
        await self.ctx.store.put(f"proof/{request.key.hex()}", account.encode())
        if self.proofs:
            self.proofs.inc()
        return {"account": account}

    async def admit(self, request: plugin.AdmissionRequest) -> Admit | Refuse:
        if request.is_peer:
            return Admit()
        proved = await self.ctx.store.get(f"proof/{request.key.hex()}")
        account = proved.decode() if proved else None
        if account is None or (self.accounts and account not in self.accounts):
            return Refuse("stellar: prove control of a Stellar account first (x.stellar.challenge, x.stellar.prove)")
        return Admit(meta={"account": account})

    # --- payouts ------------------------------------------------------------------------------------

    async def run(self) -> None:
        if self.amount is None:
            await trio.sleep_forever()
        with self.ctx.bus.subscribe(["x.rewards.epoch"]) as sub:
            async for ev in sub:
                await self.on_epoch(ev)
        raise RuntimeError("event subscription ended (dropped as a slow subscriber?)")

    async def on_epoch(self, ev: Any) -> None:
        try:
            report = plugin.verify_record(ev.data, plugin="rewards", kind="epoch", origin=self.ctx.identity.public)
        except ValueError as e:
            self.ctx.log.warning("stellar: ignoring an x.rewards.epoch event: %s", e)
            return
        await self.pay(report)

    async def pay(self, report: dict) -> None:
        """Build, store, write and (with horizon_url) submit the payouts of one epoch, once: a payout
        already stored is neither built nor submitted again."""
        from galaxynode.identity import format_stellar
        epoch = report["epoch"]
        if await self.ctx.store.get(f"payout/{epoch}") is not None:
            return
        payments = [(format_stellar(k), a) for k, a in payout_amounts(report["nodes"], self.amount)]
        if not payments:
            return
        cfg = self.ctx.config
        stored = await self.ctx.store.get("sequence")
        sequence = max(cfg["sequence"], int(stored) if stored else 0)
        if cfg["horizon_url"]:
            sequence = await trio.to_thread.run_sync(self._horizon_sequence)
        xdrs = build_payouts(self.signer, sequence, epoch, payments, passphrase=cfg["network_passphrase"],
                             asset=self.asset, base_fee=cfg["base_fee"])
        await self.ctx.store.write(puts={
            f"payout/{epoch}": msgpack.packb({"xdr": xdrs, "submitted": False}),
            "sequence": str(sequence + len(xdrs)).encode()})
        out = Path(self.ctx.data_dir or ".") / "stellar"
        await trio.to_thread.run_sync(lambda: (out.mkdir(parents=True, exist_ok=True),
                                               (out / f"payout-{epoch}.xdr").write_text("\n".join(xdrs) + "\n")))
        if self.payouts:
            self.payouts.inc(len(xdrs))
        if cfg["horizon_url"]:
            for xdr in xdrs:
                await trio.to_thread.run_sync(self._submit, xdr)
            await self.ctx.store.put(f"payout/{epoch}", msgpack.packb({"xdr": xdrs, "submitted": True}))
        self.ctx.log.info("stellar: epoch %d: %d payments in %d transactions%s", epoch, len(payments), len(xdrs),
                          " submitted" if cfg["horizon_url"] else f", XDR in {out}")

    def _horizon_sequence(self) -> int:
        from stellar_sdk import Server
        with Server(self.ctx.config["horizon_url"]) as server:
            return server.load_account(self.signer.public_key).sequence

    def _submit(self, xdr: str) -> None:
        from stellar_sdk import Server
        with Server(self.ctx.config["horizon_url"]) as server:
            server.submit_transaction(xdr, skip_memo_required_check=True)

    async def payout(self, request: plugin.Request) -> dict:
        blob = await self.ctx.store.get(f"payout/{request.body['epoch']}")
        if blob is None:
            raise MessageError("not_found", f"stellar: no payout for epoch {request.body['epoch']}")
        return msgpack.unpackb(blob, raw=False)


async def prove_account(pool: Any, secret: str, network_passphrase: str = "Test SDF Network ; September 2015") -> str:
    """Client side: prove to a pool's stellar plugin that this session controls the account of
    `secret` (S...): fetch a challenge, sign it, send it back. Returns the account id."""
    from stellar_sdk import Keypair, TransactionEnvelope
    keypair = Keypair.from_secret(secret)
    reply = await plugin.call(pool, "stellar", "challenge", {"account": keypair.public_key})
    envelope = TransactionEnvelope.from_xdr(reply["xdr"], network_passphrase)
    envelope.sign(keypair)
    return (await plugin.call(pool, "stellar", "prove", {"xdr": envelope.to_xdr()}))["account"]
