"""`POST /v1/audio/speech`: the OpenAI request, checked, becomes one row of the engine's batch,
and its chunks leave as one streamed container (or as SSE events) while they are made.

The event loop never blocks on the engine: the engine's thread wakes a response through an
asyncio event (`Synthesis.on_chunk`) and the response takes what is there with `ready()`. A client
that hangs up ends the body iterator (Starlette cancels it, or the next send fails), and its
`finally` cancels the synthesis, which frees the row within one frame.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import time
from typing import Literal, Optional, Union

from fastapi import Request
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel, ConfigDict

from mlx_qwen_tts.engine.service import QueueFull
from mlx_qwen_tts.server.encoders import CONTENT_TYPES, FORMATS, EncoderUnavailable, make_encoder
from mlx_qwen_tts.server.errors import ApiError, log

MAX_INPUT_CHARS = 4096
MIN_SPEED, MAX_SPEED = 0.25, 4.0
CHECK_S = 0.2  # while no chunk comes, how often a response checks that its client is still there
FIRST_CHUNK_FRAMES, CHUNK_FRAMES = 2, 8  # first bytes after 2 frames (160 ms of audio)
_ids = itertools.count(1)


class VoiceId(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    id: str


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
    top_k: Optional[int] = None
    top_p: Optional[float] = None
    max_frames: Optional[int] = None
    non_streaming_text: bool = True


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


def _generation_error(synthesis) -> ApiError:
    message = " ".join(str(synthesis.error).split()) or type(synthesis.error).__name__
    return ApiError(500, f"generation failed: {message}", code="generation_failed")


async def speech(state, request: Request, body: SpeechRequest):
    started = time.perf_counter()
    rid = f"speech-{next(_ids)}"
    check_request(body, state.max_input_chars)
    try:
        encoder = make_encoder(body.response_format)
    except EncoderUnavailable as e:
        raise ApiError(400, str(e), param="response_format", code="unsupported_format") from None
    kwargs = voice_arguments(state, body)
    try:
        synthesis = state.engine.submit(
            body.input, language=body.language, instruct=body.instructions, greedy=body.greedy, seed=body.seed,
            non_streaming_text=body.non_streaming_text, max_frames=body.max_frames,
            temperature=body.temperature, top_k=body.top_k, top_p=body.top_p,
            first_chunk_frames=FIRST_CHUNK_FRAMES, chunk_frames=CHUNK_FRAMES, ignore_eos=state.ignore_eos, **kwargs)
    except QueueFull as e:
        raise ApiError(429, f"the server is busy ({e}); retry shortly", code="queue_full",
                       headers={"Retry-After": "1"}) from None
    except ValueError as e:
        raise ApiError(400, " ".join(str(e).split()), param=_param_of(str(e)), code="invalid_value") from None

    wake = _wake_on_chunks(synthesis)
    # Hold the headers until the first audio (or a failure): an error before any audio can
    # still be a proper JSON error with its status.
    try:
        first, ended = await _next_chunks(synthesis, request, wake)
    except ConnectionError:  # the client left before any audio: nobody reads this answer
        synthesis.cancel()
        log.info("%s cancelled before the first audio (client left)", rid)
        return Response(status_code=400)
    except asyncio.CancelledError:
        synthesis.cancel()
        raise
    if ended and synthesis.error is not None:
        log.error("%s failed: %s", rid, synthesis.error, exc_info=synthesis.error)
        raise _generation_error(synthesis)
    voice = body.voice.id if isinstance(body.voice, VoiceId) else body.voice
    sse = body.stream_format == "sse"
    timing = {"ttfb": None}

    def pack(data: bytes) -> bytes:
        if timing["ttfb"] is None and data:
            timing["ttfb"] = time.perf_counter() - started
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
                log.error("%s failed: %s", rid, synthesis.error, exc_info=synthesis.error)
                if not sse:
                    raise RuntimeError(f"{rid}: generation failed")  # aborts the body: the client sees it
                error = _generation_error(synthesis).body()["error"]
                yield f"data: {json.dumps({'type': 'speech.audio.error', 'error': error})}\n\n".encode()
                return
            tail = pack(encoder.finish())
            if tail:
                yield tail
            if sse:
                usage = _usage(state, body, synthesis.stats.frames)
                yield f"data: {json.dumps({'type': 'speech.audio.done', 'usage': usage})}\n\n".encode()
            outcome = "ok" if not synthesis.cancelled else "cancelled"
        finally:
            synthesis.cancel()  # a no-op once finished; frees the row of a client that left
            stats = synthesis.stats
            ttfb = f"{timing['ttfb']:.3f}s" if timing["ttfb"] is not None else "-"
            rtf = f"{stats.rtf:.2f}" if stats.audio_s else "-"
            log.info("%s %s voice=%s format=%s frames=%d ttfb=%s rtf=%s total=%.2fs", rid, outcome, voice,
                     body.response_format, stats.frames, ttfb, rtf, time.perf_counter() - started)

    media = "text/event-stream" if sse else CONTENT_TYPES[body.response_format]
    headers = {"X-Request-Id": rid, "Cache-Control": "no-store"}
    return StreamingResponse(body_iter(), media_type=media, headers=headers)
