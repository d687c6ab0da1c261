"""`POST /v1/audio/speech`: the OpenAI request, checked, becomes one row of the engine's batch,
and its chunks leave as one streamed container (or as SSE events) while they are made.

The event loop never blocks on the engine: the engine's thread wakes a response through an
asyncio event (`Synthesis.on_chunk`) and the response takes what is there with `ready()`. A client
that hangs up ends the body iterator (Starlette cancels it, or the next send fails), and its
`finally` cancels the synthesis, which frees the row within one frame. A client that stops
reading is dropped by the connection's stall timer (server/connection.py), which ends the same way.
Request checks and tokenization run in a worker thread, never on the event loop.
"""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Annotated, Literal, Optional, Union

from fastapi import Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator

from mlx_qwen_tts.engine.service import QueueFull
from mlx_qwen_tts.server.encoders import CONTENT_TYPES, FORMATS, EncoderUnavailable, make_encoder
from mlx_qwen_tts.server.errors import ApiError, log
from mlx_qwen_tts.server.guard import RequestRecord, record_of

MAX_INPUT_CHARS = 4096
MIN_SPEED, MAX_SPEED = 0.25, 4.0
CHECK_S = 0.2  # while no chunk comes, how often a response checks that its client is still there
FIRST_CHUNK_FRAMES, CHUNK_FRAMES = 2, 8  # first bytes after 2 frames (160 ms of audio)
FRAME_RATE = 12.5  # frames per second of audio
INT32_MAX = 2**31 - 1  # counts beyond it overflow MLX's int32 arguments
Count = Annotated[int, Field(le=INT32_MAX)]


def _no_lone_surrogates(value):
    # JSON may carry "\ud800", which Python decodes to a string that cannot be encoded (or tokenized).
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError("is not valid Unicode (it holds a lone surrogate such as \\ud800)") from None
    return value


class VoiceId(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    id: str
    _check_text = field_validator("id")(_no_lone_surrogates)


class SpeechRequest(BaseModel):
    """OpenAI's fields, then this server's extensions (all optional)."""

    model_config = ConfigDict(extra="forbid", strict=True)
    model: Optional[str] = None  # any string: the server has one model
    input: str
    voice: Union[str, VoiceId, None] = None
    instructions: Optional[str] = None
    response_format: Literal[FORMATS] = "mp3"  # type: ignore[valid-type]
    speed: float = 1.0
    stream_format: Literal["audio", "sse"] = "audio"
    language: str = "auto"
    seed: Optional[int] = None
    greedy: bool = False
    temperature: Optional[float] = None
    top_k: Optional[Count] = None
    top_p: Optional[float] = None
    max_frames: Optional[Count] = None
    non_streaming_text: bool = True
    _check_text = field_validator("model", "input", "voice", "instructions", "language")(_no_lone_surrogates)


# ValueError messages of make_request name the value; the first name found is the `param`.
_PARAMS = [("text", "input"), ("voice", "voice"), ("language", "language"), ("instruct", "instructions"),
           ("seed", "seed"), ("temperature", "temperature"), ("top_k", "top_k"), ("top_p", "top_p"),
           ("max_frames", "max_frames"), ("Base model", "voice")]


def _param_of(message: str) -> str | None:
    hits = [(message.find(word), param) for word, param in _PARAMS if word in message]
    return min(hits)[1] if hits else None


def check_request(body: SpeechRequest, max_chars: int) -> None:
    if not body.input.strip():
        raise ApiError(400, "input is empty: nothing to say", param="input", code="empty_input")
    if len(body.input) > max_chars:
        raise ApiError(400, f"input is {len(body.input)} characters; the limit is {max_chars}", param="input",
                       code="input_too_long")
    if not MIN_SPEED <= body.speed <= MAX_SPEED:
        raise ApiError(400, f"speed must be in [{MIN_SPEED}, {MAX_SPEED}], got {body.speed}", param="speed",
                       code="invalid_value")
    if body.speed != 1.0:
        raise ApiError(400, "speed is not supported: this model speaks at its own pace; use 1.0",
                       param="speed", code="unsupported_value")


def voice_arguments(state, body: SpeechRequest) -> dict:
    """The engine's voice keywords for the request's voice (a speaker or a registered voice)."""
    cfg = state.model.config
    name = body.voice.id if isinstance(body.voice, VoiceId) else body.voice
    valid = state.voice_names()
    if name is not None:
        path = state.registry.path(name) if state.registry.enabled else None
        if path is not None:
            if not path.is_file():  # removed behind the server's back; the message names no server path
                raise ApiError(404, f"registered voice {name!r} is gone (its file was removed); register it again",
                               param="voice", code="voice_not_found")
            return {"voice_file": path}
        if cfg.model_type == "custom_voice" and name.lower() in cfg.speakers:
            return {"voice": name.lower()}
        if cfg.model_type == "voice_design" and name == "default":
            return {}
    elif cfg.model_type != "base":
        return {}
    listing = ", ".join(valid) if valid else (
        "none yet: register one with POST /v1/audio/voices" if cfg.model_type == "base" else
        "default (describe the voice with instructions)")
    what = f"unknown voice {name!r}" if name is not None else "this Base model needs a voice"
    raise ApiError(400, f"{what}; valid voices: {listing}", param="voice", code="invalid_voice")


def _usage(state, body: SpeechRequest, frames: int) -> dict:
    try:
        tokens = len(state.model.tokenizer.encode(body.input))
    except Exception:  # usage is informative; never fail a finished request over it
        tokens = 0
    return {"input_tokens": tokens, "output_tokens": frames, "total_tokens": tokens + frames}


def _wake_on_chunks(synthesis) -> asyncio.Event:
    """An event the engine's thread sets whenever the synthesis has something new."""
    loop, event = asyncio.get_running_loop(), asyncio.Event()
    synthesis.on_chunk = lambda: loop.call_soon_threadsafe(event.set)
    return event


async def _next_chunks(synthesis, request: Request, wake: asyncio.Event):
    """Wait for new chunks; returns (chunks, ended). Raises ConnectionError on hang-up (checked
    while waiting, at least every CHECK_S)."""
    while True:
        wake.clear()
        chunks, ended = synthesis.ready()  # after clear(): a chunk made meanwhile sets it again
        if chunks or ended:
            return chunks, ended
        try:
            await asyncio.wait_for(wake.wait(), CHECK_S)
        except asyncio.TimeoutError:
            if await request.is_disconnected():
                raise ConnectionError("client disconnected") from None


def _generation_error(synthesis, voice_file=None) -> ApiError:
    message = " ".join(str(synthesis.error).split()) or type(synthesis.error).__name__
    if voice_file is not None:  # a broken voice file: say which voice, not where the server keeps it
        message = message.replace(str(voice_file), "the registered voice's file")
    return ApiError(500, f"generation failed: {message}", code="generation_failed")


def stop_reason(synthesis, server_cap: bool) -> str:
    """Why the request's audio ended: eos, max_frames (the client's), server_limit, runaway, cancelled."""
    stats = synthesis.stats
    if stats.runaway:
        return "runaway"
    if "max_frames" in stats.stop_reasons:
        return "server_limit" if server_cap else "max_frames"
    if synthesis.cancelled and not synthesis.finished:
        return "cancelled"
    return "eos"


def _submit(state, body: SpeechRequest, max_frames: int, kwargs: dict):
    """Check the request and submit it (text splitting and checks: in a worker thread)."""
    try:
        return state.engine.submit(
            body.input, language=body.language, instruct=body.instructions, greedy=body.greedy, seed=body.seed,
            non_streaming_text=body.non_streaming_text, max_frames=max_frames,
            temperature=body.temperature, top_k=body.top_k, top_p=body.top_p,
            first_chunk_frames=FIRST_CHUNK_FRAMES, chunk_frames=CHUNK_FRAMES, ignore_eos=state.ignore_eos, **kwargs)
    except QueueFull as e:
        raise ApiError(429, f"the server is busy ({e}); retry shortly", code="queue_full",
                       headers={"Retry-After": "1"}) from None
    except ValueError as e:
        raise ApiError(400, " ".join(str(e).split()), param=_param_of(str(e)), code="invalid_value") from None


def capped_max_frames(state, requested: int | None) -> tuple[int, bool]:
    """The request's frame cap under the server's --max-seconds-per-request, and whether the
    server's cap is the one that applies (a client value can only lower it)."""
    cap = max(1, int(state.max_seconds_per_request * FRAME_RATE))
    server_cap = requested is None or requested > cap
    return (cap if requested is None else min(requested, cap)), server_cap  # 0 or less: make_request's 400


async def speech(state, request: Request, body: SpeechRequest):
    record = record_of(request.scope) or RequestRecord("-")
    check_request(body, state.max_input_chars)
    try:
        encoder = make_encoder(body.response_format)
    except EncoderUnavailable as e:
        raise ApiError(400, str(e), param="response_format", code="unsupported_format") from None
    kwargs = voice_arguments(state, body)
    voice = body.voice.id if isinstance(body.voice, VoiceId) else body.voice
    record.fields.update(voice=voice, format=body.response_format)
    max_frames, server_cap = capped_max_frames(state, body.max_frames)
    synthesis = await run_in_threadpool(_submit, state, body, max_frames, kwargs)

    def note_end(outcome: str):
        stats = synthesis.stats
        record.audio_s = stats.audio_s
        record.fields.update(outcome=outcome, frames=stats.frames, stop=stop_reason(synthesis, server_cap),
                             rtf=f"{stats.rtf:.2f}" if stats.audio_s and stats.elapsed_s else "-")
        if state.metrics is not None:
            state.metrics.observe_speech(outcome, record.ttfb, stats)

    wake = _wake_on_chunks(synthesis)
    # Hold the headers until the first audio (or a failure): an error before any audio can
    # still be a proper JSON error with its status.
    try:
        first, ended = await _next_chunks(synthesis, request, wake)
    except ConnectionError:  # the client left before any audio: nobody reads this answer
        synthesis.cancel()
        note_end("cancelled")
        return Response(status_code=400)
    except asyncio.CancelledError:
        synthesis.cancel()
        raise
    if ended and synthesis.error is not None:
        log.error("%s failed: %s", record.id, synthesis.error, exc_info=synthesis.error)
        note_end("failed")
        raise _generation_error(synthesis, kwargs.get("voice_file"))
    sse = body.stream_format == "sse"

    def pack(data: bytes) -> bytes:
        if not sse or not data:
            return data
        event = {"type": "speech.audio.delta", "audio": base64.b64encode(data).decode()}
        return f"data: {json.dumps(event)}\n\n".encode()

    async def body_iter():
        chunks, done, outcome = first, ended, "cancelled"
        try:
            while True:
                for chunk in chunks:
                    out = pack(encoder.feed(chunk))
                    if out:
                        yield out
                if done:
                    break
                chunks, done = await _next_chunks(synthesis, request, wake)
            if synthesis.error is not None:
                outcome = "failed"
                log.error("%s failed: %s", record.id, synthesis.error, exc_info=synthesis.error)
                if not sse:
                    raise RuntimeError(f"{record.id}: generation failed")  # aborts the body: the client sees it
                error = _generation_error(synthesis, kwargs.get("voice_file")).body()["error"]
                yield f"data: {json.dumps({'type': 'speech.audio.error', 'error': error})}\n\n".encode()
                return
            tail = pack(encoder.finish())
            if tail:
                yield tail
            if sse:
                usage = await run_in_threadpool(_usage, state, body, synthesis.stats.frames)
                done_event = {"type": "speech.audio.done", "usage": usage,
                              "stop_reason": stop_reason(synthesis, server_cap)}
                yield f"data: {json.dumps(done_event)}\n\n".encode()
            outcome = "ok" if not synthesis.cancelled else "cancelled"
        finally:
            synthesis.cancel()  # a no-op once finished; frees the row of a client that left
            note_end(outcome)

    media = "text/event-stream" if sse else CONTENT_TYPES[body.response_format]
    return StreamingResponse(body_iter(), media_type=media, headers={"Cache-Control": "no-store"})
