"""Connection timeouts uvicorn lacks: uvicorn's HTTP/1.1 protocol (h11), with two timers added.

- A new connection must complete its request headers within `client_timeout` (uvicorn waits
  forever: a slowloris client sending a header byte now and then would hold the connection).
  Later requests on a kept-alive connection are bounded by uvicorn's `timeout_keep_alive`.
- A response whose client stops reading fills the socket's buffers, and the transport pauses
  writing; if the client takes nothing more for `client_timeout` the connection is aborted. The
  response then sees the disconnect, which cancels its synthesis and frees its row: a client
  that stops reading cannot make the server buffer audio for the rest of a long request.
  The socket's send buffer is fixed at SEND_BUFFER (Linux would grow it to 4 MB, over a minute
  of pcm, before the stall shows); it is still ample for real-time audio on slow links.
"""

from __future__ import annotations

import socket

from uvicorn.protocols.http.h11_impl import H11Protocol

from mlx_qwen_tts.server.errors import log

SEND_BUFFER = 256 * 1024


def guarded_h11(client_timeout: float) -> type:
    """An `H11Protocol` subclass for `uvicorn.Config(http=...)` with the timers above."""

    class GuardedH11Protocol(H11Protocol):
        def connection_made(self, transport):
            super().connection_made(transport)
            sock = transport.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)
            self._stall_timer = None
            self._header_timer = self.loop.call_later(client_timeout, self._drop, "sent no complete request")

        def handle_events(self):
            super().handle_events()
            if self.cycle is not None and self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def pause_writing(self):
            super().pause_writing()
            if self._stall_timer is None:
                self._stall_timer = self.loop.call_later(client_timeout, self._drop, "stopped reading the response")

        def resume_writing(self):
            super().resume_writing()
            if self._stall_timer is not None:
                self._stall_timer.cancel()
                self._stall_timer = None

        def connection_lost(self, exc):
            for timer in (self._header_timer, self._stall_timer):
                if timer is not None:
                    timer.cancel()
            self._header_timer = self._stall_timer = None
            super().connection_lost(exc)

        def _drop(self, why: str):
            self._header_timer = self._stall_timer = None
            client = "%s:%d" % self.client if self.client else "a client"
            log.info("closing the connection of %s: it %s for %g s", client, why, client_timeout)
            self.transport.abort()  # close() would wait for a client that reads nothing

    return GuardedH11Protocol
