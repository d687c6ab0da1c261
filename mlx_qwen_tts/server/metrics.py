"""`/metrics`: the replica's numbers in the Prometheus text format (prometheus-client).

Each app has its own `CollectorRegistry` (no process-wide state: two apps in one process, as in
tests, never share or double-register series). Gauges that mirror the engine (queue, rows, voices)
are read when scraped; counters and histograms are fed by the middleware (every response's status)
and by the speech route (each request's time to first byte, real-time factor, frames and audio).
Frames per second is `rate(mlx_qwen_tts_frames_total[1m])`.
"""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

TTFB_BUCKETS = (0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0)
RTF_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0)


class ServerMetrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self, engine, lifecycle, voice_count, replica_id: str):
        self.registry = r = CollectorRegistry()
        p = "mlx_qwen_tts_"
        info = Gauge(p + "replica_info", "This replica's id (always 1)", ["replica"], registry=r)
        info.labels(replica=replica_id).set(1)
        self.requests = Counter(p + "requests", "HTTP responses by endpoint and status", ["endpoint", "status"],
                                registry=r)
        self.speech = Counter(p + "speech_requests", "Speech requests by how they ended (ok, cancelled, failed)",
                              ["outcome"], registry=r)
        Gauge(p + "queue_depth", "Requests waiting for a row", registry=r).set_function(lambda: engine.queued)
        Gauge(p + "active_rows", "Rows generating now", registry=r).set_function(lambda: engine.active_rows)
        Gauge(p + "max_batch", "Rows this replica generates together", registry=r).set_function(
            lambda: engine.max_batch)
        Gauge(p + "in_flight_requests", "Requests between their first and last byte", registry=r).set_function(
            lambda: lifecycle.in_flight)
        Gauge(p + "draining", "1 while the replica drains before stopping", registry=r).set_function(
            lambda: int(lifecycle.draining))
        Gauge(p + "voices_loaded", "Voices this replica can speak with (speakers and registered voices)",
              registry=r).set_function(voice_count)
        self.ttfb = Histogram(p + "time_to_first_byte_seconds", "From request to the first audio byte",
                              buckets=TTFB_BUCKETS, registry=r)
        self.rtf = Histogram(p + "real_time_factor", "Synthesis time over audio duration, per finished request",
                             buckets=RTF_BUCKETS, registry=r)
        self.frames = Counter(p + "frames", "Codec frames generated (12.5 per second of audio)", registry=r)
        self.audio = Counter(p + "audio_seconds", "Seconds of audio generated", registry=r)

    def observe_response(self, endpoint: str, status: int) -> None:
        self.requests.labels(endpoint=endpoint, status=str(status)).inc()

    def observe_speech(self, outcome: str, ttfb: float | None, stats) -> None:
        self.speech.labels(outcome=outcome).inc()
        if ttfb is not None:
            self.ttfb.observe(ttfb)
        self.frames.inc(stats.frames)
        self.audio.inc(stats.audio_s)
        if outcome == "ok" and stats.audio_s:
            self.rtf.observe(stats.rtf)

    def render(self) -> bytes:
        return generate_latest(self.registry)
