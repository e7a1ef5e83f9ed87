"""The webhook receiver over HTTP: every outcome, the key's source, and what an unverified
delivery must never cause (a hint, so an API request)."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from typing import TYPE_CHECKING, Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest

from exporter import receiver
from exporter.client import ENDPOINTS, REASONS
from exporter.dedup import DeliveryWindow
from exporter.hints import RESULTS
from exporter.receiver import Receiver, create_receiver
from exporter.signature import load_key
from exporter.telemetry import ExporterMetrics
from exporter.webhookkey import PublicKeys, Recheck
from tests import webhooksign as ws
from tests.clock import FakeClock
from tests.webhooksign import KeyServer

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

    from exporter.signature import PublicKey

PATH = "/webhooks/realtimekit"
TRACKED = "ls-tracked-1"


class Hints:
    """Records hints; tracks only the streams in ``tracked``."""

    def __init__(self, tracked: set[str] | None = None) -> None:
        self.tracked = {TRACKED} if tracked is None else tracked
        self.calls: list[tuple[str, str]] = []

    def hint(self, livestream_id: str, status: str) -> bool:
        self.calls.append((livestream_id, status))
        return livestream_id in self.tracked


class FixedKeys:
    """A key source holding ``key`` (None: unavailable), counting the fetches asked for."""

    def __init__(
        self, key: PublicKey | None, fresh: PublicKey | None = None, *, checked: bool = True
    ) -> None:
        self.key = key
        self.fresh = fresh
        self.checked = checked  # whether the key could be read again after a failure
        self.refetches = 0

    async def current(self) -> PublicKey | None:
        return self.key

    async def after_failure(self, failed: PublicKey) -> Recheck:
        self.refetches += 1
        return Recheck(self.fresh, checked=self.checked)


class Rig:
    def __init__(self, client: TestClient[web.Request, web.Application], hints: Hints) -> None:
        self.client = client
        self.hints = hints
        self.registry = CollectorRegistry()
        self.metrics: ExporterMetrics | None = None

    async def post(self, body: bytes, headers: dict[str, str]) -> tuple[int, str]:
        async with self.client.post(PATH, data=body, headers=headers) as response:
            return response.status, await response.text()

    def count(self, event: str, outcome: str) -> float:
        value = self.registry.get_sample_value(
            "realtimekit_exporter_webhook_deliveries_total", {"event": event, "outcome": outcome}
        )
        return value or 0.0


def _metrics(registry: CollectorRegistry) -> ExporterMetrics:
    metrics = ExporterMetrics(registry=registry, endpoints=ENDPOINTS, reasons=REASONS)
    metrics.enable_webhooks(
        events=(receiver.STATUS_UPDATE,),
        unverified=[(receiver.UNVERIFIED, "bad_signature")],
        outcomes=receiver.VERIFIED_OUTCOMES,
        results=RESULTS,
    )
    return metrics


async def _rig(keys: Any, hints: Hints | None = None) -> Rig:
    hints = hints or Hints()
    registry = CollectorRegistry()
    metrics = _metrics(registry)
    judge = Receiver(keys=keys, hints=hints, observer=metrics, window=DeliveryWindow())
    server = TestServer(create_receiver(judge, PATH), host="127.0.0.1")
    await server.start_server(lingering_time=receiver.LINGERING_TIME)
    client: TestClient[web.Request, web.Application] = TestClient(server)
    await client.start_server()
    rig = Rig(client, hints)
    rig.registry = registry
    rig.metrics = metrics
    return rig


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    r = await _rig(FixedKeys(load_key(ws.public_pem())))
    try:
        yield r
    finally:
        await r.client.close()


async def test_a_signed_status_update_of_a_tracked_stream_is_accepted(rig: Rig) -> None:
    """A delivery signed by the key, about a tracked stream: 200, one hint with the
    stream and status, counted accepted, and the time of the last verified delivery set."""
    body = ws.status_body(TRACKED, "IDLE")
    assert await rig.post(body, ws.headers(body)) == (200, "accepted\n")
    assert rig.hints.calls == [(TRACKED, "IDLE")]
    assert rig.count(receiver.STATUS_UPDATE, "accepted") == 1
    last = rig.registry.get_sample_value(
        "realtimekit_exporter_webhook_last_delivery_timestamp_seconds"
    )
    assert last is not None
    assert last > 1e9


@pytest.mark.parametrize(
    "signature",
    [None, "", "not base64!", "QUJD", base64.b64encode(b"x" * 256).decode(), "A" * 5000],
    ids=["missing", "empty", "not-base64", "short", "wrong-bytes", "huge"],
)
async def test_missing_or_bad_signatures_are_401_and_nothing_else(
    rig: Rig, signature: str | None
) -> None:
    """No signature, or one that is not a Base64 signature of this body by the key: 401,
    counted bad_signature, no hint."""
    body = ws.status_body(TRACKED, "IDLE")
    headers = ws.headers(body, key=None)
    if signature is not None:
        headers["rtk-signature"] = signature
    status, _ = await rig.post(body, headers)
    assert status == 401
    assert rig.hints.calls == []
    assert rig.count(receiver.UNVERIFIED, "bad_signature") == 1


async def test_a_body_signed_with_another_key_is_refused_after_one_look_for_a_new_key() -> None:
    """Signed by a key that is not RealtimeKit's: the receiver asks its key source for a
    newer key once (a rotation looks the same), gets none, and answers 401."""
    keys = FixedKeys(load_key(ws.public_pem()))
    rig = await _rig(keys)
    try:
        body = ws.status_body(TRACKED, "IDLE")
        status, _ = await rig.post(body, ws.headers(body, key="forger"))
        assert status == 401
        assert keys.refetches == 1
        assert rig.hints.calls == []
    finally:
        await rig.client.close()


async def test_a_bad_signature_is_503_while_the_key_cannot_be_read_again() -> None:
    """A signature that fails while the key could not be fetched again (a fetch just
    made, or failing) may be a rotated key's: 503, so that RealtimeKit retries, and
    nothing else happens."""
    rig = await _rig(FixedKeys(load_key(ws.public_pem()), checked=False))
    try:
        body = ws.status_body(TRACKED, "IDLE")
        assert (await rig.post(body, ws.headers(body, key="next")))[0] == 503
        assert rig.hints.calls == []
        assert rig.count(receiver.UNVERIFIED, "bad_signature") == 1
    finally:
        await rig.client.close()


async def test_a_reserialised_body_does_not_verify(rig: Rig) -> None:
    """The signature covers the exact bytes: the same JSON with other whitespace is 401."""
    body = ws.status_body(TRACKED, "IDLE")
    headers = ws.headers(body)
    spaced = json.dumps(json.loads(body)).encode()
    assert spaced != body
    status, _ = await rig.post(spaced, headers)
    assert status == 401
    assert rig.hints.calls == []


async def test_a_rotated_key_is_followed() -> None:
    """A delivery signed by a new key verifies once the key source fetches it."""
    keys = FixedKeys(load_key(ws.public_pem()), fresh=load_key(ws.public_pem("next")))
    rig = await _rig(keys)
    try:
        body = ws.status_body(TRACKED, "LIVE")
        assert (await rig.post(body, ws.headers(body, key="next")))[0] == 200
        assert rig.hints.calls == [(TRACKED, "LIVE")]
    finally:
        await rig.client.close()


async def test_oversized_bodies_are_413_before_they_are_read(rig: Rig) -> None:
    """A Content-Length over 64 KiB is refused at once; a chunked body is refused once it
    passes the limit. Neither is verified nor hinted."""
    big = b"{" + b" " * receiver.MAX_BODY + b"}"
    status, _ = await rig.post(big, ws.headers(big))
    assert status == 413

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(10):
            yield b" " * (16 * 1024)

    async with rig.client.post(PATH, data=chunks(), headers=ws.headers(big)) as response:
        assert response.status == 413
    assert rig.count(receiver.UNVERIFIED, "too_large") == 2
    assert rig.hints.calls == []


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[1,2,3]",
        b'{"no":"event"}',
        b'{"event":"livestreaming.statusUpdate","status":"IDLE"}',
        b'{"event":"livestreaming.statusUpdate","streamId":7,"status":"IDLE"}',
        b'{"event":"livestreaming.statusUpdate","streamId":"","status":"IDLE"}',
        b'{"event":"livestreaming.statusUpdate","streamId":"x","status":null}',
        b"[" * 100_00 + b"]" * 100_00,
    ],
    ids=[
        "text",
        "array",
        "no-event",
        "no-stream",
        "stream-number",
        "stream-empty",
        "no-status",
        "deep",
    ],
)
async def test_signed_but_malformed_bodies_are_400(rig: Rig, body: bytes) -> None:
    """A verified body that is not an event object (or a status update without a stream
    id and status): 400, counted malformed, no hint."""
    status, _ = await rig.post(body, ws.headers(body))
    assert status == 400
    assert rig.hints.calls == []
    assert (
        sum(rig.count(event, "malformed") for event in (receiver.OTHER, receiver.STATUS_UPDATE))
        == 1
    )


async def test_no_key_is_503_so_that_realtimekit_retries() -> None:
    """Without a public key nothing can be verified: 503 (RealtimeKit retries 5xx)."""
    rig = await _rig(FixedKeys(None))
    try:
        body = ws.status_body(TRACKED, "IDLE")
        assert (await rig.post(body, ws.headers(body)))[0] == 503
        assert rig.hints.calls == []
        assert rig.count(receiver.UNVERIFIED, "unavailable") == 1
    finally:
        await rig.client.close()


async def test_duplicates_by_delivery_id_and_by_body_are_dropped(rig: Rig) -> None:
    """The same delivery id again, or the same body from the same webhook with a new id:
    200, counted duplicate, one hint in all."""
    body = ws.status_body(TRACKED, "IDLE")
    first = ws.headers(body, delivery="d-1")
    assert (await rig.post(body, first))[1] == "accepted\n"
    assert (await rig.post(body, first))[1] == "duplicate\n"
    assert (await rig.post(body, ws.headers(body, delivery="d-2")))[1] == "duplicate\n"
    assert rig.hints.calls == [(TRACKED, "IDLE")]
    assert rig.count(receiver.STATUS_UPDATE, "duplicate") == 2


async def test_a_real_repeat_after_another_change_is_not_a_duplicate(rig: Rig) -> None:
    """Stop, start, stop again: the second stop's body is byte for byte the first's, but
    a different body for the stream came between, so it is taken in."""
    stop, start = ws.status_body(TRACKED, "IDLE"), ws.status_body(TRACKED, "LIVE")
    for body in (stop, start, stop):
        assert (await rig.post(body, ws.headers(body)))[1] == "accepted\n"
    assert rig.hints.calls == [(TRACKED, "IDLE"), (TRACKED, "LIVE"), (TRACKED, "IDLE")]


async def test_other_events_and_untracked_streams_are_acknowledged_and_ignored(rig: Rig) -> None:
    """A verified event other than a status update, one of an unknown name, or a status
    update of a stream not tracked here: 200, counted ignored, no request comes of it."""
    meeting = json.dumps({"event": "meeting.started", "meeting": {"id": "m"}}).encode()
    novel = json.dumps({"event": "brand.new", "x": 1}).encode()
    stranger = ws.status_body("ls-someone-else", "IDLE")
    for body in (meeting, novel, stranger):
        assert await rig.post(body, ws.headers(body)) == (200, "ignored\n")
    assert rig.hints.calls == [("ls-someone-else", "IDLE")]  # asked, and not tracked
    assert rig.count("meeting.started", "ignored") == 1
    assert rig.count(receiver.OTHER, "ignored") == 1
    assert rig.count(receiver.STATUS_UPDATE, "ignored") == 1


async def test_dyte_header_names_are_read_too(rig: Rig) -> None:
    """Deliveries with Dyte's header names (dyte-signature, dyte-uuid) are verified and
    de-duplicated like RealtimeKit's."""
    body = ws.status_body(TRACKED, "IDLE")
    headers = {"dyte-signature": ws.sign(body), "dyte-uuid": "u-1", "dyte-webhook-id": "w"}
    assert (await rig.post(body, headers))[1] == "accepted\n"
    again = {**headers, "dyte-signature": ws.sign(body)}
    assert (await rig.post(body, again))[1] == "duplicate\n"


async def test_only_post_on_the_path_is_served(rig: Rig) -> None:
    """GET on the path is 405, any other path 404: the listener serves nothing else."""
    async with rig.client.get(PATH) as response:
        assert response.status == 405
    for path in ("/metrics", "/", "/-/reload", PATH + "/x"):
        async with rig.client.post(path, data=b"{}") as response:
            assert response.status == 404


async def test_a_body_that_does_not_arrive_in_time_is_cut(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client that sends headers and then trickles (or never sends) its body gets 408
    and its connection closed once BODY_TIMEOUT passes; it is not a delivery."""
    monkeypatch.setattr(receiver, "BODY_TIMEOUT", 0.2)
    assert rig.client.server.port is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", rig.client.server.port)
    try:
        writer.write(f"POST {PATH} HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{{".encode())
        await writer.drain()
        head = await asyncio.wait_for(reader.read(64), timeout=5)
        assert head.startswith(b"HTTP/1.1 408")
        rest = await asyncio.wait_for(reader.read(), timeout=5)  # closed by the server
        assert isinstance(rest, bytes)
    finally:
        writer.close()
    assert rig.hints.calls == []


async def test_stream_keys_never_reach_logs_or_metrics(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    """Every outcome with a body holding a stream key: the key is in no log record and
    not in the metrics."""
    caplog.set_level(logging.DEBUG)
    body = ws.status_body(TRACKED, "IDLE")
    await rig.post(body, ws.headers(body))
    await rig.post(body, ws.headers(body))
    await rig.post(body, ws.headers(body, key=None))
    await rig.post(body, ws.headers(body, key="forger"))
    await rig.post(body[:-1], ws.headers(body[:-1]))
    stranger = ws.status_body("ls-other", "LIVE")
    await rig.post(stranger, ws.headers(stranger))
    assert ws.STREAM_KEY not in caplog.text
    assert ws.STREAM_KEY.encode() not in generate_latest(rig.registry)
    assert ws.INGEST not in caplog.text


# -- the key's source ------------------------------------------------------------------


@pytest.fixture
async def key_server() -> AsyncIterator[tuple[KeyServer, str]]:
    async with KeyServer() as server:
        yield server, server.url


async def test_key_rotation_is_fetched_once_per_floor(key_server: tuple[KeyServer, str]) -> None:
    """The key served changes: the first delivery signed by the new key makes one fetch
    and is accepted; forged deliveries within the floor fetch nothing more (503: the key
    could not be read again), and one after the floor fetches once (401)."""
    server, url = key_server
    clock = FakeClock(100.0)
    async with aiohttp.ClientSession() as session:
        keys = PublicKeys(url=url, session=session, monotonic=clock, refetch_floor=60.0)
        assert await keys.load() is not None
        rig = await _rig(keys)
        try:
            server.name = "next"
            clock.now += 61
            body = ws.status_body(TRACKED, "IDLE")
            assert (await rig.post(body, ws.headers(body, key="next")))[0] == 200
            assert server.fetches == 2
            for _ in range(20):
                assert (await rig.post(body, ws.headers(body, key="forger")))[0] == 503
            assert server.fetches == 2
            clock.now += 61
            assert (await rig.post(body, ws.headers(body, key="forger")))[0] == 401
            assert server.fetches == 3
        finally:
            await rig.client.close()


async def test_an_unreachable_key_document_means_503_until_it_loads(
    key_server: tuple[KeyServer, str],
) -> None:
    """The key document fails at start: deliveries are 503 (RealtimeKit retries), fetched
    again at most once per retry floor; once it loads, the same delivery is accepted."""
    server, url = key_server
    server.document = lambda: web.Response(status=500, text="down")
    clock = FakeClock(100.0)
    async with aiohttp.ClientSession() as session:
        registry = CollectorRegistry()
        metrics = _metrics(registry)
        keys = PublicKeys(url=url, session=session, monotonic=clock, observer=metrics)
        assert await keys.load() is None
        assert registry.get_sample_value("realtimekit_exporter_webhook_public_key_loaded") == 0
        rig = await _rig(keys)
        try:
            body = ws.status_body(TRACKED, "IDLE")
            for _ in range(5):
                assert (await rig.post(body, ws.headers(body, delivery="d")))[0] == 503
            assert server.fetches == 1  # within the retry floor
            server.document = None
            clock.now += 11
            assert (await rig.post(body, ws.headers(body, delivery="d")))[0] == 200
            assert server.fetches == 2
            assert rig.hints.calls == [(TRACKED, "IDLE")]
        finally:
            await rig.client.close()
    assert registry.get_sample_value("realtimekit_exporter_webhook_public_key_loaded") == 1


async def test_a_key_file_with_escaped_newlines_loads(tmp_path: Path) -> None:
    """A PEM kept with literal backslash-n pairs (as in an environment variable) loads."""
    path = tmp_path / "key.pem"
    path.write_bytes(ws.public_pem().replace(b"\n", b"\\n"))
    keys = PublicKeys(file=path)
    key = await keys.load()
    assert key is not None
    assert key.public_numbers() == load_key(ws.public_pem()).public_numbers()


# -- the property: nothing unverified gets through -------------------------------------

_HEADER_TEXT = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=400)


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    body=st.one_of(
        st.binary(max_size=2048),
        st.builds(
            lambda sid, status: ws.status_body(sid, status),
            st.just(TRACKED),
            st.sampled_from(["LIVE", "IDLE", "OFFLINE"]),
        ),
    ),
    signature=st.one_of(st.none(), _HEADER_TEXT, st.binary(min_size=256, max_size=256)),
    tamper=st.binary(min_size=1, max_size=8),
)
async def test_property_no_unverified_body_causes_a_hint(
    rig: Rig, body: bytes, signature: str | bytes | None, tamper: bytes
) -> None:
    """Whatever the body and signature header, unless the signature is the key's over
    those exact bytes, the receiver hints nothing (so no API request can follow), and
    answers 401 or 400-something, never 2xx. Signatures are random text, random bytes
    in Base64, or the key's real signature of another body."""
    headers = ws.headers(body, key=None)
    if isinstance(signature, bytes):
        headers["rtk-signature"] = base64.b64encode(signature).decode()
    elif signature is not None:
        headers["rtk-signature"] = signature
    if signature == "":
        headers["rtk-signature"] = ws.sign(body + tamper)  # real, of other bytes
    status, _ = await rig.post(body, headers)
    assert status in (401, 413)
    assert rig.hints.calls == []


async def test_expect_continue_is_not_granted_to_an_oversized_body(rig: Rig) -> None:
    """A client that asks to send 10 MB (``Expect: 100-continue``) is answered 413 at
    once, without a ``100 Continue``; one within the limit gets its 100 and then 200."""
    port = rig.client.server.port
    assert port is not None
    for length, first in ((10_000_000, b"HTTP/1.1 413"), (10, b"HTTP/1.1 100")):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(
                f"POST {PATH} HTTP/1.1\r\nHost: x\r\nContent-Length: {length}\r\n"
                "Expect: 100-continue\r\n\r\n".encode()
            )
            await writer.drain()
            head = await asyncio.wait_for(reader.readuntil(b"\r\n"), timeout=5)
            assert head.startswith(first), head
        finally:
            writer.close()
