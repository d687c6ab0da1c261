"""The FastAPI app: OpenAI's `/v1/audio/speech` and `/v1/models`, the voice list and registry,
`/health` (liveness), `/health/ready` (readiness), `/metrics` (Prometheus), and the playground page at `/`.

`create_app(state)` takes a `ServerState` (model, engine, registry, settings) made by
`mlx-qwen-tts serve`; the app closes the engine when it shuts down.
"""

from __future__ import annotations

import tempfile
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from fastapi import FastAPI, Request, WebSocket
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.datastructures import UploadFile

from mlx_qwen_tts.server import live
from mlx_qwen_tts.server.errors import ApiError, install_error_handlers
from mlx_qwen_tts.server.guard import RequestGate, RequestLog
from mlx_qwen_tts.server.health import engine_health
from mlx_qwen_tts.server.lifecycle import Lifecycle, ReplicaMiddleware
from mlx_qwen_tts.server.metrics import ServerMetrics
from mlx_qwen_tts.server.registry import VoiceRegistry, check_name
from mlx_qwen_tts.server.speech import MAX_INPUT_CHARS, SpeechRequest, speech

MAX_UPLOAD_BYTES = 10 * 1024 * 1024
MAX_UPLOAD_BODY = MAX_UPLOAD_BYTES + 64 * 1024  # the audio plus the form's other fields
CLIENT_TIMEOUT_S = 30.0
MAX_SECONDS_PER_REQUEST = 600.0


@dataclass
class ServerState:
    model: object
    engine: object
    registry: VoiceRegistry  # or a SharedVoiceRegistry (same interface)
    model_id: str
    api_key: str | None = None
    max_input_chars: int = MAX_INPUT_CHARS
    max_batch: int = 8
    max_queue: int | None = None
    cors_origins: list = field(default_factory=list)
    created: int = field(default_factory=lambda: int(time.time()))
    ready: bool = False
    ignore_eos: bool = False  # benchmarks only: every request runs to max_frames
    client_timeout: float = CLIENT_TIMEOUT_S  # headers, body and a stalled reader (server/connection.py)
    max_seconds_per_request: float = MAX_SECONDS_PER_REQUEST  # audio; caps every request's max_frames
    lifecycle: Lifecycle = field(default_factory=Lifecycle)
    metrics: ServerMetrics | None = None  # made by create_app (one registry per app)

    def voice_names(self) -> list[str]:
        return list(self.model.config.speaker_names) + (self.registry.names() if self.registry.enabled else [])


def create_app(state: ServerState) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app):
        yield
        state.ready = False
        await run_in_threadpool(state.engine.close, 10.0)  # cancels what is left; joins the thread

    app = FastAPI(title="mlx-qwen-tts", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.tts = state
    install_error_handlers(app)
    lifecycle = state.lifecycle
    state.metrics = metrics = ServerMetrics(state.engine, lifecycle, lambda: len(state.voice_names()),
                                            lifecycle.replica_id)
    # Middleware added last runs first: the log and request id, then the replica (name, drain,
    # requests in flight, status counts), then CORS, then key and body.
    app.add_middleware(RequestGate, api_key=state.api_key, client_timeout=state.client_timeout,
                       upload_paths={"/v1/audio/voices": MAX_UPLOAD_BODY})
    if state.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        # allow_headers "*": the OpenAI JS SDK sends X-Stainless-* headers with every call.
        app.add_middleware(CORSMiddleware, allow_origins=state.cors_origins, allow_methods=["GET", "POST", "DELETE"],
                           allow_headers=["*"], expose_headers=["X-Request-Id", "X-Replica"])
    app.add_middleware(ReplicaMiddleware, lifecycle=lifecycle, on_response=metrics.observe_response)
    app.add_middleware(RequestLog)
    cfg = state.model.config

    @app.get("/health")
    async def health():  # liveness (and a stuck engine); a load balancer uses /health/ready
        code, fields = engine_health(state.engine, state.ready)
        return JSONResponse({**fields, "ready": state.ready and not lifecycle.draining, "draining": lifecycle.draining,
                             "replica": lifecycle.replica_id, "active_rows": state.engine.active_rows,
                             "queued": state.engine.queued, "max_batch": state.max_batch,
                             "max_queue": state.max_queue}, status_code=code)

    @app.get("/health/ready")
    async def ready():  # readiness: 200 only while this replica takes work
        if state.ready and not lifecycle.draining:
            return {"status": "ready", "replica": lifecycle.replica_id}
        status = "draining" if lifecycle.draining else "starting"
        return JSONResponse({"status": status, "replica": lifecycle.replica_id}, status_code=503)

    @app.get("/metrics", include_in_schema=False)
    async def prometheus():  # counts only; with --api-key the scraper sends the key (Prometheus: `authorization`)
        return Response(metrics.render(), media_type=metrics.content_type)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def playground():  # a static page (no data in it); the API calls it makes need the key
        return HTMLResponse(resources.files("mlx_qwen_tts.server").joinpath("static/index.html").read_text())

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": state.model_id, "object": "model", "created": state.created,
                                            "owned_by": "mlx-qwen-tts"}]}

    @app.post("/v1/audio/speech")
    async def audio_speech(request: Request, body: SpeechRequest):
        return await speech(state, request, body)

    @app.websocket(live.PATH)
    async def audio_speech_stream(websocket: WebSocket):
        await live.speech_stream(state, websocket)

    @app.get("/v1/audio/voices")
    async def voices():
        from mlx_qwen_tts.config import config_summary

        summary = config_summary(cfg)
        registered = state.registry.list() if state.registry.enabled else []
        voices = [{"id": s, "name": s, "type": "speaker"} for s in summary["speakers"]]
        voices += [{"id": v["id"], "name": v["name"], "type": "registered"} for v in registered]
        return {"object": "list", "model": state.model_id, "model_type": cfg.model_type, "voices": voices,
                "speakers": summary["speakers"], "languages": summary["languages"],
                "instructions": summary["instruct"], "voice_cloning": summary["voice_clone"],
                "registry": state.registry.enabled, "registered": registered}

    def registry_or_error():
        if cfg.model_type != "base":
            raise ApiError(400, f"voice registration needs a Base model; this one is {cfg.model_type}",
                           code="unsupported")
        if not state.registry.enabled:
            raise ApiError(400, "the voice registry is off: start the server with --voices-dir DIR "
                           "(or --voice-store DIR)", code="unsupported")
        return state.registry

    @app.post("/v1/audio/voices", status_code=201)
    async def create_voice(request: Request):
        registry = registry_or_error()
        try:
            form = await request.form(max_files=1, max_fields=8)
        except Exception as e:  # not multipart, or a broken body
            raise ApiError(400, f"send multipart/form-data with name, audio and optional ref_text ({e})",
                           code="invalid_form") from None
        name, audio, ref_text = form.get("name"), form.get("audio"), form.get("ref_text")
        if not isinstance(name, str):
            raise ApiError(400, "name is required", param="name", code="missing_required_parameter")
        try:
            check_name(name)
        except ValueError as e:
            raise ApiError(400, str(e), param="name", code="invalid_name") from None
        if not isinstance(audio, UploadFile):
            raise ApiError(400, "audio (a file) is required", param="audio", code="missing_required_parameter")
        if ref_text is not None and not isinstance(ref_text, str):
            raise ApiError(400, "ref_text must be text", param="ref_text", code="invalid_value")
        ref_text = ref_text.strip() if ref_text else None
        data = await audio.read(MAX_UPLOAD_BYTES + 1)
        if len(data) > MAX_UPLOAD_BYTES:
            raise ApiError(413, f"audio is larger than {MAX_UPLOAD_BYTES // 2**20} MB", param="audio",
                           code="file_too_large")
        wave = await run_in_threadpool(_read_reference, data, audio.filename)
        if registry.path(name) is not None:
            raise ApiError(409, f"voice {name!r} already exists; delete it first", param="name",
                           code="voice_exists")
        try:
            entry = await run_in_threadpool(registry.create, name, wave, ref_text)
        except FileExistsError as e:
            raise ApiError(409, str(e), param="name", code="voice_exists") from None
        except ValueError as e:
            raise ApiError(400, " ".join(str(e).split()), param="audio", code="invalid_audio") from None
        return JSONResponse(entry, status_code=201)

    @app.delete("/v1/audio/voices/{name}")
    async def delete_voice(name: str):
        registry = registry_or_error()
        try:
            check_name(name)
        except ValueError as e:
            raise ApiError(400, str(e), param="name", code="invalid_name") from None
        if not registry.delete(name):
            raise ApiError(404, f"no registered voice {name!r}", param="name", code="voice_not_found")
        return {"id": name, "object": "voice", "deleted": True}

    return app


def _read_reference(data: bytes, filename: str | None):
    """The upload as float32 mono 24 kHz, with the CLI's clear errors for bad audio (no MLX)."""
    from mlx_qwen_tts.voice import load_reference_audio

    suffix = Path(filename or "").suffix[:8] if filename else ""
    with tempfile.NamedTemporaryFile(suffix=suffix) as f:
        f.write(data)
        f.flush()
        try:
            return load_reference_audio(f.name)
        except ValueError as e:
            message = " ".join(str(e).split()).replace(f.name, "the uploaded audio")
            raise ApiError(400, message, param="audio", code="invalid_audio") from None

