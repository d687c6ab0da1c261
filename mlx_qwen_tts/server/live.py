"""`WS /v1/audio/speech/stream`: text in as it is written, audio out as it is made.

The message shapes follow vLLM-Omni's streaming-input WebSocket:
  client: {"type": "session.config", ...speech fields}, {"type": "input.text", "text": ...},
          {"type": "input.done"} (ends an utterance; the session stays open), {"type": "session.close"}
  server: {"type": "audio.start", utterance_index, format, sample_rate, channels}, binary audio
          frames (pcm: s16le 24 kHz mono; wav: one streaming header, then the same), {"type":
          "audio.done", utterance_index, total_bytes, error}, {"type": "session.done",
          total_utterances}, {"type": "error", message, code}
but each utterance is ONE live row (engine/live.py): the text is never split at sentence
boundaries into independent requests, so prosody carries across it, and a feed that stalls
pauses the row instead of ending it. Utterances of a session play in order; the next one may
start generating while the previous one's audio is still being sent.
"""

from __future__ import annotations

import asyncio
import hmac
import json
from typing import Literal

from fastapi import WebSocket, WebSocketDisconnect
from pydantic import ConfigDict, ValidationError, create_model

from mlx_qwen_tts.engine.service import QueueFull
from mlx_qwen_tts.server.encoders import SAMPLE_RATE, PcmEncoder, wav_stream_header
from mlx_qwen_tts.server.errors import ApiError, log
from mlx_qwen_tts.server.speech import CHUNK_FRAMES, SpeechRequest, capped_max_frames, voice_arguments

PATH = "/v1/audio/speech/stream"
MAX_MESSAGE_BYTES = 128 * 1024  # one client message (vLLM-Omni's text limit)
MAX_UTTERANCE_CHARS = 64 * 1024
IDLE_TIMEOUT_S = 30.0  # no client message (and no audio in flight) for this long ends the session
POLICY_VIOLATION, TOO_BIG = 1008, 1009


# session.config: the speech fields of `POST /v1/audio/speech` that apply to live text (the same
# types and defaults), audio as pcm or wav, and vLLM-Omni's streaming fields at the only values
# that hold here (audio always streams; one context per utterance, never split).
SHARED_FIELDS = ("model", "voice", "instructions", "language", "seed", "greedy", "temperature", "top_k", "top_p",
                 "max_frames")
SessionConfig = create_model(
    "SessionConfig", __config__=ConfigDict(extra="forbid", strict=True),
    type=(Literal["session.config"], ...), response_format=(Literal["pcm", "wav"], "pcm"),
    stream_audio=(Literal[True], True), split_granularity=(Literal["none"], "none"),
    **{name: (SpeechRequest.model_fields[name].annotation, SpeechRequest.model_fields[name].default)
       for name in SHARED_FIELDS})


class SessionError(Exception):
    def __init__(self, message: str, code: str, close: int | None = None):
        super().__init__(message)
        self.code, self.close = code, close


def authorized(state, websocket: WebSocket) -> bool:
    """As HTTP: "Authorization: Bearer KEY"; browsers, which cannot set that header on a
    WebSocket, may send ?api_key=KEY."""
    if state.api_key is None:
        return True
    scheme, _, token = websocket.headers.get("authorization", "").partition(" ")
    token = token.strip() if scheme.lower() == "bearer" else websocket.query_params.get("api_key", "")
    return hmac.compare_digest(token.encode(), state.api_key.encode())


class Utterance:
    """One live synthesis and the task that sends its audio (after the previous utterance's)."""

    def __init__(self, session: "Session", index: int, config, kwargs: dict):
        self.session, self.index, self.config = session, index, config
        self.speech = session.state.engine.open_text_stream(
            chunk_frames=CHUNK_FRAMES, idle_timeout=IDLE_TIMEOUT_S, **kwargs)  # first chunk: one frame
        self.chars = 0
        self.input_done = False
        loop, self.wake = asyncio.get_running_loop(), asyncio.Event()
        self.speech.on_chunk = lambda: loop.call_soon_threadsafe(self.wake.set)
        self.task = asyncio.create_task(self.send_audio(session.sending))

    def feed(self, text: str):
        self.chars += len(text)
        if self.chars > MAX_UTTERANCE_CHARS:
            raise SessionError(f"the utterance is longer than {MAX_UTTERANCE_CHARS} characters; send input.done "
                               "and start another", "input_too_long")
        self.speech.feed(text)

    async def send_audio(self, previous: asyncio.Task | None):
        if previous is not None:
            await asyncio.shield(previous)
        ws, fmt = self.session.websocket, self.config.response_format
        encoder = PcmEncoder(wav_stream_header(SAMPLE_RATE) if fmt == "wav" else b"")
        total, started = 0, False
        while True:
            self.wake.clear()
            chunks, ended = self.speech.ready()
            for chunk in chunks:
                if not started:
                    await self.session.send({"type": "audio.start", "utterance_index": self.index, "format": fmt,
                                             "sample_rate": SAMPLE_RATE, "channels": 1})
                    started = True
                data = encoder.feed(chunk)
                total += len(data)
                await ws.send_bytes(data)
            if ended:
                break
            await self.wake.wait()
        error = self.speech.error
        if error is not None:
            message = " ".join(str(error).split()) or type(error).__name__
            await self.session.send({"type": "error", "message": f"utterance {self.index}: {message}",
                                     "code": "generation_failed"})
        await self.session.send({"type": "audio.done", "utterance_index": self.index, "total_bytes": total,
                                 "error": None if error is None else str(error)})


class Session:
    def __init__(self, state, websocket: WebSocket):
        self.state, self.websocket = state, websocket
        self.config = None  # the validated SessionConfig and its engine keywords
        self.current: Utterance | None = None  # the utterance whose input is open
        self.sending: asyncio.Task | None = None  # the last utterance's audio task
        self.utterances: list[Utterance] = []

    async def send(self, message: dict):
        await self.websocket.send_text(json.dumps(message))

    def configure(self, message: dict):
        if self.current is not None:
            raise SessionError("session.config while an utterance is open: send input.done first",
                               "utterance_open")
        try:
            config = SessionConfig.model_validate(message)
        except ValidationError as e:
            first = e.errors()[0]
            field = ".".join(str(p) for p in first["loc"]) or "message"
            raise SessionError(f"session.config: {field}: {first['msg']}", "invalid_value") from None
        try:
            kwargs = voice_arguments(self.state, config)
        except ApiError as e:
            raise SessionError(e.message, e.code or "invalid_value") from None
        kwargs.update(language=config.language, instruct=config.instructions, greedy=config.greedy,
                      seed=config.seed, temperature=config.temperature, top_k=config.top_k, top_p=config.top_p,
                      max_frames=capped_max_frames(self.state, config.max_frames)[0],
                      ignore_eos=self.state.ignore_eos)
        from mlx_qwen_tts.engine.live import make_live_request

        try:
            make_live_request(self.state.model.config, **kwargs)  # a bad value fails here, not mid-utterance
        except ValueError as e:
            raise SessionError(f"session.config: {' '.join(str(e).split())}", "invalid_value") from None
        self.config = (config, kwargs)

    def text(self, text):
        if not isinstance(text, str):
            raise SessionError("input.text needs a string field 'text'", "invalid_value")
        if self.current is None:
            if self.config is None:
                self.configure({"type": "session.config"})
            try:
                self.current = Utterance(self, len(self.utterances), *self.config)
            except QueueFull as e:
                raise SessionError(f"the server is busy ({e}); retry shortly", "queue_full") from None
            self.utterances.append(self.current)
            self.sending = self.current.task
        self.current.feed(text)

    def done(self):
        if self.current is not None:
            self.current.speech.finish()
            self.current = None

    def cancel(self):
        for utterance in self.utterances:
            utterance.speech.cancel()
            utterance.task.cancel()

    async def handle(self, message: dict) -> bool:
        """One client message; False once the session is to end."""
        kind = message.get("type")
        if kind == "session.config":
            self.configure(message)
        elif kind == "input.text":
            self.text(message.get("text"))
        elif kind == "input.done":
            self.done()
        elif kind == "session.close":
            self.done()
            return False
        else:
            raise SessionError(f"unknown message type {kind!r}; expected session.config, input.text, input.done "
                               "or session.close", "invalid_message")
        return True


async def _receive(websocket: WebSocket, timeout: float) -> dict:
    message = await asyncio.wait_for(websocket.receive(), timeout)
    if message["type"] == "websocket.disconnect":
        raise WebSocketDisconnect(message.get("code", 1000))
    raw = message.get("text")
    if raw is None:
        raise SessionError("send JSON text messages; binary messages are not accepted", "invalid_message")
    if len(raw.encode()) > MAX_MESSAGE_BYTES:
        raise SessionError(f"message larger than {MAX_MESSAGE_BYTES // 1024} KiB", "message_too_big", TOO_BIG)
    try:
        parsed = json.loads(raw)
    except json.JSONDecodeError as e:
        raise SessionError(f"invalid JSON ({e.msg})", "invalid_json") from None
    if not isinstance(parsed, dict):
        raise SessionError("a message is a JSON object with a 'type'", "invalid_message")
    return parsed


async def _until_sent(websocket: WebSocket, sending: asyncio.Task):
    """Wait for the last audio to go out, noticing a client that hangs up meanwhile."""
    while True:
        receiver = asyncio.create_task(websocket.receive())
        done, _ = await asyncio.wait({sending, receiver}, return_when=asyncio.FIRST_COMPLETED)
        if sending in done:
            receiver.cancel()
            return sending.result()
        if receiver.result()["type"] == "websocket.disconnect":
            raise WebSocketDisconnect(1000)
        # messages after session.close are ignored


async def speech_stream(state, websocket: WebSocket):
    await websocket.accept()
    if not authorized(state, websocket):
        await websocket.send_text(json.dumps({"type": "error", "code": "invalid_api_key",
                                              "message": "missing or wrong API key: send 'Authorization: Bearer "
                                                         "<key>' (or ?api_key=<key>)"}))
        await websocket.close(POLICY_VIOLATION)
        return
    session, outcome = Session(state, websocket), "closed"
    try:
        while True:
            try:
                message = await _receive(websocket, IDLE_TIMEOUT_S)
                if not await session.handle(message):
                    break
            except asyncio.TimeoutError:
                if session.sending is not None and not session.sending.done():
                    continue  # audio still in flight (an open input has the engine's own idle limit)
                raise SessionError(f"idle timeout: no message for {IDLE_TIMEOUT_S:g} s", "idle_timeout",
                                   POLICY_VIOLATION) from None
            except SessionError as e:
                if e.close is not None:
                    raise
                await session.send({"type": "error", "message": str(e), "code": e.code})
        if session.sending is not None:
            await _until_sent(websocket, session.sending)
        await session.send({"type": "session.done", "total_utterances": len(session.utterances)})
        await websocket.close()
    except SessionError as e:
        outcome = e.code
        await session.send({"type": "error", "message": str(e), "code": e.code})
        await websocket.close(e.close)
    except (WebSocketDisconnect, RuntimeError, ConnectionError):  # the client hung up (a send may fail too)
        outcome = "client left"
    finally:
        session.cancel()  # frees the rows within one frame; a no-op for finished utterances
        log.info("ws session %s: %d utterance(s)", outcome, len(session.utterances))
