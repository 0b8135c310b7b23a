"""Handshake (handshake §2-§8): the endpoint's answering HELLO, the key schedule, and every way an
opener's handshake must be refused (handshake §5 H1-H11, F22, F23) or time out, stale ephemeral keys
and a v1-only peer included."""
from __future__ import annotations

import hashlib
import os

import msgpack
import trio

from galaxynode.conformance import vectors
from galaxynode.conformance.probe import (CaseFailed, Link, Options, describe, frame_id, maced, open_link,
                                          raw_payload, refused_frame)
from galaxynode.conformance.runner import case
from galaxynode.gelato import messages as m
from galaxynode.gelato.codec import DEFAULT_LIMITS, VERSION, encode_frame, now_ms
from galaxynode.gelato.errors import ErrorCode


@case("handshake", "handshake §2.1, §3.2, §4.1", "the answering HELLO is a signed frame, names our network, "
                                                "offers version 2, a fresh nonce and eph, and echoes our nonce (H9)")
async def answering_hello(opts: Options) -> None:
    async with open_link(opts, handshake=False) as link:
        answer = await link.exchange_hellos()
        msg = answer.msg
        if answer.seq is not None:
            raise CaseFailed("a signed HELLO", "a session frame")
        if msg.echo != link.nonce:
            raise CaseFailed(f"echo = our nonce {link.nonce.hex()}", f"echo = {msg.echo.hex() if msg.echo else 'absent'}")
        if msg.network != opts.network:
            raise CaseFailed(f"network {opts.network!r}", f"network {msg.network!r}")
        if VERSION not in msg.versions:
            raise CaseFailed(f"versions containing {VERSION}", f"versions {list(msg.versions)}")
        if msg.nonce == link.nonce:
            raise CaseFailed("a nonce of its own", "our nonce")
        if msg.eph == link.eph:
            raise CaseFailed("an ephemeral key of its own", "our eph")
        skew = answer.ts - now_ms()
        if abs(skew) > DEFAULT_LIMITS.ts_window_ms:
            raise CaseFailed("ts within 120 s of our clock (handshake §4.2)", f"{skew} ms off")


@case("handshake", "handshake §6.2, framing §8", "the key schedule: the endpoint's session frames carry keyed "
                                                 "BLAKE2b-128 MACs under k_ao as handshake §6.2 derives it (computed "
                                                 "here from the formula), number from seq 0, and accept ours under k_oa")
async def key_schedule(opts: Options) -> str:
    async with open_link(opts, handshake=False) as link:
        answer = await link.exchange_hellos()
        await link.send(encode_frame(link.identity, m.Ready(echo=answer.msg.nonce)))
        link.establish(answer)  # shared, sid, prk, k_oa, k_ao: by hand, not with the codec's derivation
        for seq in range(3):
            data = link.frame(m.Ping(data=bytes([seq]) * 8))
            await link.send(data)
            raw = await link.ch.receive()
            _, payload, tag = msgpack.unpackb(raw)
            want = hashlib.blake2b(payload, key=link.keys.k_ao, digest_size=16).digest()
            if tag != want:
                raise CaseFailed(f"MAC {want.hex()} (BLAKE2b-128 under k_ao)", f"auth {tag.hex()}")
            link.session.decode(raw)
            body = msgpack.unpackb(payload, raw=False)
            if body.get("type") != "PONG" or body.get("seq") != seq:
                raise CaseFailed(f"PONG with seq {seq}", f"{body.get('type')} with seq {body.get('seq')}")
        return f"k_ao {link.keys.k_ao.hex()[:16]}..., 3 PONGs verified"


@case("handshake", "handshake §2.3, §6, security §2.3", "a stale ephemeral key: a recorded HELLO replayed on a new "
                                                        "connection gets a fresh nonce and eph, and its recorded READY "
                                                        "is bad_nonce (no session from a replayed eph/nonce pair)")
async def replayed_hello(opts: Options) -> str:
    async with open_link(opts, handshake=False) as first:
        hello, _ = first.hello()
        await first.send(hello)
        answer1 = await first.answer()
        ready = encode_frame(first.identity, m.Ready(echo=answer1.msg.nonce))
        await first.send(ready)
        first.establish(answer1)
        await first.ping()
    async with open_link(opts, first.identity, handshake=False) as second:
        await second.send(hello)  # the same bytes: the same nonce, eph and signature
        answer2 = await second.answer()
        if answer2.msg.eph == answer1.msg.eph or answer2.msg.nonce == answer1.msg.nonce:
            raise CaseFailed("a fresh eph and nonce in the answer to a replayed HELLO",
                             "the eph or nonce of the earlier answer")
        await second.send(ready)  # echoes the earlier answer's nonce
        await second.expect_error(ErrorCode.BAD_NONCE, re=frame_id(ready), closes=True)
    return "fresh eph and nonce; replayed READY refused"


@case("handshake", "handshake §6, security §2.2, §5.1", "a stale ephemeral key: after a replayed HELLO, keys "
                                                        "derived with the earlier answer's eph do not work; the "
                                                        "endpoint's fresh eph decides the keys (bad_mac)")
async def stale_keys(opts: Options) -> None:
    async with open_link(opts, handshake=False) as first:
        hello, _ = first.hello()
        eph_secret, nonce, eph = first.eph_secret, first.nonce, first.eph
        await first.send(hello)
        answer1 = await first.answer()
        await first.send(encode_frame(first.identity, m.Ready(echo=answer1.msg.nonce)))
        first.establish(answer1)
        await first.ping()
        old_k_oa = first.keys.k_oa
    async with open_link(opts, first.identity, handshake=False) as second:
        second.eph_secret, second.nonce, second.eph = eph_secret, nonce, eph
        await second.send(hello)
        answer2 = await second.answer()
        await second.send(encode_frame(second.identity, m.Ready(echo=answer2.msg.nonce)))
        second.establish(answer2)
        if second.keys.k_oa == old_k_oa:
            raise CaseFailed("new keys for a new connection", "the keys of the earlier session")
        stale = maced(old_k_oa, raw_payload({"type": "PING", "id": os.urandom(16), "seq": 0, "body": {}}))
        await second.send(stale)
        await second.expect_error(ErrorCode.BAD_MAC, re=None, closes=True)


async def _refused_hello(opts: Options, code: ErrorCode, **hello: object) -> None:
    await refused_frame(opts, code, lambda link: link.hello(**hello), after="connect", closes=True)


@case("handshake", "handshake §5 H4", "a HELLO for another network is network_mismatch (vector hs/network)")
async def network_mismatch(opts: Options) -> None:
    await _refused_hello(opts, ErrorCode.NETWORK_MISMATCH, network=f"not-{opts.network}"[:64])


@case("handshake", "handshake §5 H7, versioning §2.2", "a peer offering only [1] is unsupported_version, naming "
                                                       "the version the endpoint speaks (vector hs/v1-only)")
async def v1_only(opts: Options) -> str:
    async with open_link(opts, handshake=False) as link:
        data, fid = link.hello(versions=(1,))
        await link.send(data)
        err = await link.expect_error(ErrorCode.UNSUPPORTED_VERSION, re=fid, closes=True)
    if str(VERSION) not in err.msg.message:
        raise CaseFailed(f"a message naming version {VERSION}", repr(err.msg.message))
    await _refused_hello(opts, ErrorCode.UNSUPPORTED_VERSION, versions=(3, 7))
    return err.msg.message


@case("handshake", "versioning §2.2, framing §5 F6", "a Gelato v1 frame (its HELLO) is unsupported_version, without "
                                                    "re (vector version-1)")
async def v1_frame(opts: Options) -> None:
    async with open_link(opts, handshake=False) as link:
        body = m.Hello(network=opts.network, role="probe", nonce=os.urandom(32), eph=os.urandom(32),
                       versions=(1,)).to_body()
        del body["eph"]
        payload = raw_payload({"type": "HELLO", "id": os.urandom(16), "ts": now_ms(), "from": link.identity.public,
                               "body": body})
        await link.send(msgpack.packb([1, payload, link.identity.sign(b"gelato/v1\0" + payload)], use_bin_type=True))
        await link.expect_error(ErrorCode.UNSUPPORTED_VERSION, re=None, closes=True)


@case("handshake", "handshake §4.1, framing §5 F23", "a session frame (16-byte MAC) instead of HELLO is "
                                                     "unexpected_message, without re (vector session-frame-first)")
async def session_frame_first(opts: Options) -> None:
    await refused_frame(opts, ErrorCode.UNEXPECTED_MESSAGE, lambda link: (
        maced(os.urandom(32), raw_payload({"type": "PING", "id": os.urandom(16), "seq": 0, "body": {}})), None),
        after="connect", with_re=False, closes=True)


@case("handshake", "handshake §5 H11, security §7", "a low-order eph (the X25519 point 0) is bad_key by READY at the "
                                                    "latest (vector hs/low-order-eph-at-answerer)")
async def low_order_eph(opts: Options) -> None:
    async with open_link(opts, handshake=False) as link:
        data, _ = link.hello(eph=bytes(32))
        await link.send(data)
        got = await link.receive_or_close()
        if isinstance(got, int):
            raise CaseFailed("its HELLO or ERROR bad_key", f"the close (code {got})")
        if got.type == "ERROR":
            if got.msg.code != ErrorCode.BAD_KEY:
                raise CaseFailed("ERROR bad_key", describe(got))
            return
        await link.send(encode_frame(link.identity, m.Ready(echo=got.msg.nonce)))
        await link.expect_error(ErrorCode.BAD_KEY, re=None, closes=True)


@case("handshake", "handshake §5 H9", "an opening HELLO carrying echo is bad_nonce (vector hs/open-with-echo)")
async def open_with_echo(opts: Options) -> None:
    await _refused_hello(opts, ErrorCode.BAD_NONCE, echo=os.urandom(32))


@case("handshake", "handshake §2.1, §5 M2, §8.1", "a HELLO with an invalid body ends the handshake with "
                                                  "invalid_body: a bad role, or no eph (vectors hs/bad-role, "
                                                  "body/eph-missing)")
async def hello_bad_body(opts: Options) -> str:
    good = {"network": opts.network, "role": "probe", "nonce": os.urandom(32), "eph": os.urandom(32),
            "versions": [VERSION]}
    bad = {"bad role": good | {"role": "wizard"}, "no eph": {k: v for k, v in good.items() if k != "eph"}}
    for body in bad.values():
        await refused_frame(opts, ErrorCode.INVALID_BODY, lambda link: link.craft("HELLO", body),
                            after="connect", closes=True)
    return ", ".join(bad)


@case("handshake", "handshake §4.3 H2", "a PING, or an unknown type, instead of HELLO is unexpected_message "
                                        "(vectors hs/ping, hs/unknown-type)")
async def not_hello(opts: Options) -> None:
    for msg_type, body in (("PING", {}), ("NOT_A_TYPE", {})):
        await refused_frame(opts, ErrorCode.UNEXPECTED_MESSAGE, lambda link: link.craft(msg_type, body),
                            after="connect", closes=True)


@case("handshake", "handshake §4.3 H2", "a second HELLO instead of READY is unexpected_message "
                                        "(vector hs/second-hello)")
async def second_hello(opts: Options) -> None:
    await refused_frame(opts, ErrorCode.UNEXPECTED_MESSAGE, lambda link: link.hello(), after="hello",
                        closes=True)


@case("handshake", "handshake §3.4 H3", "a READY that does not echo the answerer's nonce is bad_nonce "
                                        "(vector hs/ready-wrong-echo)")
async def ready_wrong_echo(opts: Options) -> None:
    def ready(link: Link) -> tuple[bytes, bytes]:
        frame = encode_frame(link.identity, m.Ready(echo=os.urandom(32)))
        return frame, frame_id(frame)
    await refused_frame(opts, ErrorCode.BAD_NONCE, ready, after="hello", closes=True)


@case("handshake", "handshake §4.2 F22", "a HELLO outside the time window is stale_timestamp: the recorded "
                                         "handshake.json HELLO cannot be replayed, nor a fresh one 10 min off")
async def stale_hello(opts: Options) -> str:
    recorded = bytes.fromhex(vectors.load(opts, "handshake")["frames"][0]["frame"])
    await refused_frame(opts, ErrorCode.STALE_TIMESTAMP, lambda link: (recorded, frame_id(recorded)),
                        after="connect", closes=True)
    for off in (-600_000, 600_000):
        await _refused_hello(opts, ErrorCode.STALE_TIMESTAMP, ts=now_ms() + off)
    return "recorded HELLO, -10 min, +10 min"


async def _times_out(opts: Options, send_hello: bool) -> str:
    async with open_link(opts, handshake=False) as link:
        started = trio.current_time()
        if send_hello:
            await link.exchange_hellos()
        try:
            with trio.fail_after(opts.handshake_timeout):
                await link.expect_error(ErrorCode.HANDSHAKE_TIMEOUT, re=None, closes=True)
        except trio.TooSlowError:
            raise CaseFailed(f"ERROR handshake_timeout within {opts.handshake_timeout:g}s", "nothing") from None
        return f"timed out after {trio.current_time() - started:.1f}s"


@case("handshake", "handshake §8.2, limits §3", "a silent opener gets ERROR handshake_timeout and the close "
                                                "within --handshake-timeout", wait=lambda o: o.handshake_timeout)
async def silent_opener(opts: Options) -> str:
    return await _times_out(opts, send_hello=False)


@case("handshake", "handshake §8.2", "an opener that never sends READY gets ERROR handshake_timeout within "
                                     "--handshake-timeout", wait=lambda o: o.handshake_timeout)
async def no_ready(opts: Options) -> str:
    return await _times_out(opts, send_hello=True)

