"""Every HTTP request passes two ASGI layers before a route sees it.

`RequestLog` (outermost) names the request (a valid incoming `X-Request-Id`, else a new uuid4),
puts the id on every response, and writes one log line when the request ends: method, path,
status, time to first body byte, audio seconds and what the route added (voice, frames, stop).
`RequestGate` (inside CORS, so a 401 still carries the CORS headers a browser needs) checks the
API key from the headers alone, then reads the body itself: a declared or actual size over the
route's limit is a 413 as soon as it is known (chunked bodies included), a body that stops
arriving is a 408, and only a complete body reaches the route, which reads it back from memory.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import re
import time
import uuid
from dataclasses import dataclass, field

from mlx_qwen_tts.server.errors import ApiError, log

REQUEST_ID = re.compile(r"[!-~]{1,128}")  # printable ASCII, no spaces: safe in a log line and a header
RECORD = "mlx_qwen_tts.record"  # the scope key of a request's `RequestRecord`
OPEN_PATHS = frozenset({"/", "/health", "/health/ready"})  # no key: the static playground and health probes
MAX_JSON_BYTES = 1 << 20  # 4096 characters escaped as \uXXXX pairs are ~50 KB
BODY_DEADLINE_S = 120.0  # a whole body, however it trickles in


@dataclass
class RequestRecord:
    """What the request's log line says; routes add `fields` (shown as key=value) and `audio_s`."""

    id: str
    started: float = field(default_factory=time.perf_counter)
    status: int | None = None
    ttfb: float | None = None
    audio_s: float | None = None
    fields: dict = field(default_factory=dict)

    def line(self, method: str, path: str) -> str:
        ttfb = f"{self.ttfb:.3f}s" if self.ttfb is not None else "-"
        audio = f"{self.audio_s:.2f}s" if self.audio_s is not None else "-"
        extra = "".join(f" {k}={v}" for k, v in self.fields.items())
        return (f"{self.id} {method} {path} {self.status or '-'}{extra} ttfb={ttfb} audio={audio} "
                f"total={time.perf_counter() - self.started:.2f}s")


def record_of(scope) -> RequestRecord | None:
    return scope.get(RECORD)


def _header(scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return value.decode("latin-1")
    return None


class RequestLog:
    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        incoming = _header(scope, b"x-request-id")
        record = RequestRecord(incoming if incoming and REQUEST_ID.fullmatch(incoming) else uuid.uuid4().hex)
        scope[RECORD] = record

        async def send_with_id(message):
            if message["type"] == "http.response.start":
                record.status = message["status"]
                message = {**message, "headers": [*message.get("headers", ()), (b"x-request-id", record.id.encode())]}
            elif message.get("body") and record.ttfb is None:
                record.ttfb = time.perf_counter() - record.started
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except BaseException:
            record.status = record.status or 500
            raise
        finally:  # health checks poll: their successes only at debug level
            quiet = scope["path"] == "/health" and record.status == 200
            path = scope.get("raw_path", b"").decode("ascii", "backslashreplace") or scope["path"]  # still %-encoded
            log.log(logging.DEBUG if quiet else logging.INFO, "%s", record.line(scope["method"], path))


class RequestGate:
    def __init__(self, app, *, api_key: str | None, client_timeout: float, upload_paths: dict):
        self.app, self.api_key, self.client_timeout = app, api_key, client_timeout
        self.upload_paths = upload_paths  # path -> body limit in bytes (POST); others get MAX_JSON_BYTES

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] == "OPTIONS":
            return await self.app(scope, receive, send)
        try:
            self._check_key(scope)
            body = await self._read_body(scope, receive)
        except ApiError as e:
            record = record_of(scope)
            if record is not None and e.code:
                record.fields["error"] = e.code
            return await e.response()(scope, receive, send)
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: only http.disconnect comes

        await self.app(scope, replay, send)

    def _check_key(self, scope) -> None:
        if self.api_key is None or scope["path"] in OPEN_PATHS:
            return
        scheme, _, token = (_header(scope, b"authorization") or "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), self.api_key.encode()):
            raise ApiError(401, "missing or wrong API key: send 'Authorization: Bearer <key>'",
                           code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})

    async def _read_body(self, scope, receive) -> bytes:
        limit = self.upload_paths.get(scope["path"], MAX_JSON_BYTES) if scope["method"] == "POST" else MAX_JSON_BYTES
        too_large = ApiError(413, f"the request body is larger than {limit} bytes", code="body_too_large",
                             headers={"Connection": "close"})
        declared = _header(scope, b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise too_large
        body, deadline = bytearray(), time.monotonic() + BODY_DEADLINE_S
        while True:
            wait = min(self.client_timeout, deadline - time.monotonic())
            try:
                message = await asyncio.wait_for(receive(), max(wait, 0.0))
            except asyncio.TimeoutError:
                raise ApiError(408, "the request body stopped arriving", code="request_timeout",
                               headers={"Connection": "close"}) from None
            if message["type"] == "http.disconnect":
                raise ApiError(400, "the client left while sending the body", code="client_disconnected")
            body += message.get("body", b"")
            if len(body) > limit:
                raise too_large
            if not message.get("more_body", False):
                return bytes(body)
