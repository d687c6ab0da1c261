"""Whether the engine's thread is alive: `/health` must not say ok while it is stuck.

The engine runs queued calls between two frames, so a no-op call is a heartbeat: its wait is
the engine's lag (a frame, or whatever else holds the thread). One probe is in flight at a time;
a health check waits briefly for it and reports how long it has waited so far.
"""

from __future__ import annotations

import asyncio
import time

STALL_S = 5.0  # an engine that has not come round for this long is reported stalled (503)
PROBE_WAIT_S = 0.25  # how long a health check waits for the probe before reporting its age


class EngineWatch:
    def __init__(self, engine, stall_s: float = STALL_S):
        self.engine, self.stall_s = engine, stall_s
        self._probe, self._sent = None, 0.0

    async def lag(self) -> float | None:
        """Seconds the current probe has waited (or took); None if the engine is closed."""
        if self._probe is None or self._probe.done():
            self._sent, self._probe = time.monotonic(), self.engine.call(time.monotonic)
        probe, deadline = self._probe, time.monotonic() + PROBE_WAIT_S
        while not probe.done() and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
        if not probe.done():
            return time.monotonic() - self._sent
        if probe.exception() is not None:
            return None
        return probe.result() - self._sent

    async def report(self, ready: bool) -> tuple[int, dict]:
        """(HTTP status, the fields /health adds)."""
        lag = await self.lag()
        if not ready:
            status = "starting"
        elif lag is None:
            status = "stopped"
        else:
            status = "stalled" if lag > self.stall_s else "ok"
        code = 200 if status in ("ok", "starting") else 503
        return code, {"status": status, "engine_lag_s": None if lag is None else round(lag, 3)}
