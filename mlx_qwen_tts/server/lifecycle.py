"""A replica's life behind a load balancer: its name, readiness, and a graceful drain.

`/health` is liveness (the process answers); `/health/ready` is 200 only while the replica takes
work, so a load balancer's health check (HAProxy `httpchk`) sends nothing to a replica that is
not serving. SIGTERM starts a drain: readiness turns 503 at once, new speech requests get 503 with
`Retry-After` (deploy/haproxy.cfg marks the replica down at the first one; the client retries), the
streams in flight finish, and the server stops when none is left or `--drain-seconds` have passed.

`ReplicaMiddleware` (pure ASGI, so streamed bodies pass untouched) names the replica in every
response (`X-Replica`), counts the requests in flight until their last byte, answers the drain's
503, and reports each response's status to the metrics.
"""

from __future__ import annotations

import signal
import socket
import time
from dataclasses import dataclass, field

import uvicorn

from mlx_qwen_tts.server.errors import ApiError, log
from mlx_qwen_tts.server.guard import record_of

UNCOUNTED = ("/health", "/health/ready", "/metrics")  # probes and scrapes do not hold a drain open


@dataclass
class Lifecycle:
    replica_id: str = field(default_factory=socket.gethostname)
    drain_seconds: float = 30.0
    draining: bool = False
    drain_started: float | None = None
    in_flight: int = 0  # requests (but probes) between their first and last byte

    def begin_drain(self) -> None:
        if not self.draining:
            self.draining, self.drain_started = True, time.monotonic()
            log.info("draining: not ready; %d request(s) in flight get up to %.0f s", self.in_flight,
                     self.drain_seconds)

    def drained(self) -> bool:
        """True once a drain has nothing left to wait for (or its time is up)."""
        if not self.draining:
            return False
        return self.in_flight == 0 or time.monotonic() - self.drain_started >= self.drain_seconds


class DrainingServer(uvicorn.Server):
    """uvicorn, except that SIGTERM drains first (see the module doc); a second SIGTERM, or
    SIGINT (Ctrl-C), stops the way uvicorn does (in-flight requests get its graceful timeout)."""

    def __init__(self, config: uvicorn.Config, lifecycle: Lifecycle):
        super().__init__(config)
        self.lifecycle = lifecycle

    def handle_exit(self, sig, frame) -> None:
        if sig == signal.SIGTERM and not self.lifecycle.draining:
            self.lifecycle.begin_drain()  # on_tick stops the server once drained
            return
        super().handle_exit(sig, frame)

    async def on_tick(self, counter: int) -> bool:
        if self.lifecycle.drained():
            self.should_exit = True
        return await super().on_tick(counter)


def _endpoint(path: str) -> str:
    """A bounded label for metrics: the route, never a voice name or an unknown path."""
    if path.startswith("/v1/audio/voices"):
        return "/v1/audio/voices"
    return path if path in ("/v1/audio/speech", "/v1/models", "/", *UNCOUNTED) else "other"


class ReplicaMiddleware:
    def __init__(self, app, lifecycle: Lifecycle, on_response=None):
        self.app, self.lifecycle, self.on_response = app, lifecycle, on_response
        self.header = (b"x-replica", lifecycle.replica_id.encode("latin-1", "replace"))

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path, status = scope["path"], None
        record = record_of(scope)
        if record is not None:  # the request's log line names the replica too
            record.fields["replica"] = self.lifecycle.replica_id

        async def named_send(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message = {**message, "headers": [*message.get("headers", []), self.header]}
            await send(message)

        counted = path not in UNCOUNTED
        try:
            if self.lifecycle.draining and path == "/v1/audio/speech" and scope["method"] == "POST":
                error = ApiError(503, "this replica is shutting down; retry (another replica will answer)",
                                 code="draining", headers={"Retry-After": "1", "Connection": "close"})
                return await error.response()(scope, receive, named_send)
            if counted:
                self.lifecycle.in_flight += 1
            try:
                await self.app(scope, receive, named_send)
            except Exception as e:
                if status is not None:
                    raise  # the body was under way: the connection is cut, as without this middleware
                # Starlette would answer this one outside the middleware, without X-Replica.
                log.error("unhandled error on %s %s", scope["method"], path, exc_info=e)
                await ApiError(500, "internal server error; see the server log",
                               code="internal_error").response()(scope, receive, named_send)
            finally:
                if counted:
                    self.lifecycle.in_flight -= 1
        finally:
            if self.on_response is not None:
                self.on_response(_endpoint(path), status or 500)
