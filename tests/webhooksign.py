"""Signing webhook deliveries in tests, as RealtimeKit does: RSA PKCS#1 v1.5, SHA-256,
over the exact body bytes, Base64 in ``rtk-signature``."""

from __future__ import annotations

import asyncio
import base64
import functools
import json
import uuid
from typing import TYPE_CHECKING, Any

from aiohttp import web
from aiohttp.test_utils import TestServer
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

if TYPE_CHECKING:
    from collections.abc import Callable

STREAM_KEY = "sk_live_WEBHOOKSECRET_7f3a"  # what a delivery's streamKey holds: a secret
INGEST = "rtmps://live.example.invalid:443/live/"


@functools.cache
def private_key(name: str = "main") -> rsa.RSAPrivateKey:
    """One 2048-bit key per name, made once per test run (key generation is slow)."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def public_pem(name: str = "main") -> bytes:
    return (
        private_key(name)
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )


def key_document(name: str = "main") -> bytes:
    pem = public_pem(name).decode()
    return json.dumps({"success": True, "data": {"publicKey": pem}, "message": ""}).encode()


class KeyServer:
    """Serves the key document of the key named ``name`` (or what ``document()`` answers)
    at /k on 127.0.0.1, counting fetches; while ``hanging``, answers nothing until it
    closes. ``async with`` it."""

    def __init__(self) -> None:
        self.name = "main"
        self.fetches = 0
        self.hanging = False
        self.document: Callable[[], web.StreamResponse] | None = None
        self._closing = asyncio.Event()
        self._server: TestServer | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        return str(self._server.make_url("/k"))

    async def __aenter__(self) -> KeyServer:
        app = web.Application()
        app.router.add_get("/k", self._handle)
        self._server = TestServer(app, host="127.0.0.1")
        await self._server.start_server()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._closing.set()
        if self._server is not None:
            await self._server.close()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.fetches += 1
        if self.hanging:
            await self._closing.wait()
        if self.document is not None:
            return self.document()
        return web.Response(body=key_document(self.name), content_type="application/json")


def sign(body: bytes, name: str = "main") -> str:
    signature = private_key(name).sign(body, padding.PKCS1v15(), hashes.SHA256())
    return base64.b64encode(signature).decode()


def status_body(stream_id: str, status: str, **extra: Any) -> bytes:
    """A ``livestreaming.statusUpdate`` body as RealtimeKit sends it (compact JSON)."""
    doc = {
        "event": "livestreaming.statusUpdate",
        "streamId": stream_id,
        "status": status,
        "manualIngest": False,
        "playbackUrl": f"https://example.invalid/{stream_id}/manifest/video.m3u8",
        "ingestServer": INGEST,
        "streamKey": STREAM_KEY,
        **extra,
    }
    return json.dumps(doc, separators=(",", ":")).encode()


def headers(
    body: bytes, *, key: str | None = "main", delivery: str | None = None, webhook: str = "wh-1"
) -> dict[str, str]:
    """Headers of a delivery of ``body``: signed by ``key`` (None: unsigned)."""
    out = {
        "Content-Type": "application/json",
        "rtk-uuid": delivery or str(uuid.uuid4()),
        "rtk-webhook-id": webhook,
    }
    if key is not None:
        out["rtk-signature"] = sign(body, key)
    return out
