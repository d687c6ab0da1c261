"""Whether the engine's thread is alive: `/health` must not say ok while it is stuck.

The engine reports how long its current turn (one frame, or a prefill) has lasted; an engine that
has not come round for STALL_S makes `/health` answer 503 `stalled`, so a load balancer or
supervisor sees it (a frame takes well under a second; a long prompt's prefill a few seconds).
"""

from __future__ import annotations

STALL_S = 5.0


def engine_health(engine, ready: bool, stall_s: float = STALL_S) -> tuple[int, dict]:
    """(HTTP status, the fields /health adds)."""
    lag = engine.lag_s
    status = "starting" if not ready else "stalled" if lag > stall_s else "ok"
    return (503 if status == "stalled" else 200), {"status": status, "engine_lag_s": round(lag, 3)}
