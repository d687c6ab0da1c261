"""Live text input: speech starts while the text is still being written (e.g. by an LLM).

The streaming text layout (qwen3-tts-architecture.md §2.4, `non_streaming_text=False`) puts only
the first text token in the prefill; every later token is one trailing text vector fed per
frame, and `tts_eos` follows the last one. So the text can arrive while the row generates:
  - `LiveSynthesis` is the handle: thread-safe `feed(text)`, `finish()`, `cancel()`; iterate it
    for audio chunks like any `Synthesis`.
  - `LiveText` is the engine's side (its thread only): released token ids (engine/holdback.py,
    so the ids equal the whole text's) become text vectors, which the batch writes into the
    row's state; a row that has used every vector while the input is open is parked (it takes no
    step, engine/generate.py) until more arrive. It is never fed a pad before `tts_eos`.
  - Start: a row starts on the first released token; an in-context clone (ref_text) needs
    (1 + reference frames) - len(reference text ids) target tokens first (the official layout
    puts that much target text in the prefill), or the end of the input.
  - The input ends with `finish()`; an input left open with no text for `idle_timeout` seconds
    ends the synthesis with an error.
Live text is one row (one model context); it is not split into sentence segments.
"""

from __future__ import annotations

import threading
import time
from dataclasses import replace

import mlx.core as mx
import numpy as np

from mlx_qwen_tts.engine.holdback import TextHoldback
from mlx_qwen_tts.engine.prompt import REF_TEMPLATE, build_prompt
from mlx_qwen_tts.engine.request import Request, make_request
from mlx_qwen_tts.engine.scheduler import Synthesis, SynthesisStats, prepare

DEFAULT_IDLE_TIMEOUT_S = 30.0
# A first chunk of one frame: frame k is complete only once text token k+1 is there (one step
# finishes frame k and feeds token k+1), so each frame of the first chunk waits for a token.
LIVE_FIRST_CHUNK_FRAMES = 1


class InputIdle(TimeoutError):
    """A live input stayed open without new text for too long."""


def make_live_request(cfg, **kwargs) -> Request:
    """Validate a live request's settings (everything but the text, which arrives later)."""
    if "non_streaming_text" in kwargs:
        raise TypeError("live text always uses the streaming text layout; non_streaming_text is not an option")
    kwargs.setdefault("first_chunk_frames", LIVE_FIRST_CHUNK_FRAMES)
    request = make_request(cfg, "live", non_streaming_text=False, **kwargs)
    return replace(request, text="", segments=("",))


def feed_from(speech: "LiveSynthesis", pieces):
    """Feed every piece, then finish; a failing source ends the synthesis with its error. For a
    blocking source that does no MLX work (standard input, a socket), on a thread of its own."""
    try:
        for piece in pieces:
            if speech.finished:
                return
            speech.feed(piece)
        speech.finish()
    except BaseException as e:  # handed to whoever reads the audio
        speech.fail_input(e)


class LiveText:
    """The engine's side of a live input: token ids -> text vectors for the row."""

    def __init__(self, tokenizer, need: int | None = 1):
        self.holdback = TextHoldback(tokenizer)
        self.ids: list[int] = []  # released token ids
        self.finished = False  # every id is released
        self.need = need  # ids needed before the row can start (None: not known before the voice is)
        self.prompt = None  # the row's prompt, once started
        self.pending: list[mx.array] = []  # vectors [1, n, H] not yet in the row's state
        self.handed = 0  # trailing text vectors in the row's state (the batch reads this)
        self.closed = False  # tts_eos is among them: from here the row never pauses
        self._eos_pending = False

    @property
    def ready(self) -> bool:
        return self.need is not None and (self.finished or len(self.ids) >= self.need)

    def size_for(self, clone, tokenizer):
        """An in-context clone's prefill lays (1 + reference frames) text rows over the reference:
        the reference text and then that many target tokens (the official streaming layout)."""
        self.need = 1
        if clone is not None and clone.ref_codes is not None:
            ref_ids = tokenizer.encode_template(REF_TEMPLATE, text=clone.ref_text)[3:-2]
            self.need = max(1, 1 + clone.ref_codes.shape[0] - len(ref_ids))

    def start(self, model, request: Request, clone) -> object:
        """The row's prompt from the ids released so far (open unless the input has ended)."""
        self.prompt = build_prompt(model, self.ids, voice=request.voice, language=request.language,
                                   instruct=request.instruct, non_streaming_text=False, clone=clone,
                                   open_text=not self.finished)
        self.handed, self.closed = self.prompt.trailing.shape[1], self.finished
        self._embedded = len(self.ids)
        return self.prompt

    def release(self, model, pieces: list[str], finished: bool):
        """Tokenize new text; once the row has started, embed the new ids (engine thread)."""
        for piece in pieces:
            self.ids += self.holdback.push(piece)
        if finished and not self.finished:
            self.ids += self.holdback.finish()
            self.finished = True
        if self.prompt is None or self.closed or self._eos_pending:
            return
        new = self.ids[self._embedded:]
        if new:
            vectors = model.talker.embed_text(mx.array(np.asarray(new, dtype=np.int32))[None])
            self.pending.append(vectors)
            self._embedded += len(new)
            self.prompt.text_tokens += len(new)  # the runaway budget follows the text
        if self.finished:
            ids = model.config.ids
            self.pending.append(model.talker.embed_text(mx.array([[ids.tts_eos]])))
            self._eos_pending = True

    def take(self) -> mx.array | None:
        """The vectors that arrived since the last call, [1, n, H] (the batch writes them)."""
        if not self.pending:
            return None
        vectors = mx.concatenate(self.pending, axis=1) if len(self.pending) > 1 else self.pending[0]
        self.pending = []
        self.handed += vectors.shape[1]
        self.closed = self._eos_pending
        return vectors


class LiveSynthesis(Synthesis):
    """A synthesis whose text arrives while it runs: `feed(text)` any number of times (from any
    thread), then `finish()`; `cancel()` stops it. Iterate it for float32 audio chunks."""

    def __init__(self, request: Request, tokenizer, stats: SynthesisStats | None = None,
                 codes_out: list | None = None, idle_timeout: float | None = DEFAULT_IDLE_TIMEOUT_S):
        super().__init__(request, stats, codes_out)
        cloning = request.clone is not None or request.ref_audio is not None or request.voice_file is not None
        self.live = LiveText(tokenizer, need=None if cloning else 1)
        self.idle_timeout = idle_timeout
        self.input_event = threading.Event()  # set whenever input arrives
        self.on_input = None  # also called then (the Engine wakes its thread)
        self._lock = threading.Lock()
        self._inbox: list[str] = []
        self._input_done = False
        self._input_error: BaseException | None = None
        self._last_input = time.monotonic()
        self._has_text = False

    def feed(self, text: str):
        """Append text (any piece: mid-word, mid-number, a single character)."""
        if not isinstance(text, str):
            raise TypeError(f"feed() takes a str, got {type(text).__name__}")
        with self._lock:
            if self._input_done:
                raise RuntimeError("the input is finished; open a new stream for more text")
            if not text or self.finished or self.cancelled:
                return  # nothing to add, or nobody listens any more
            self._inbox.append(text)
            self._has_text = self._has_text or not text.isspace()
            self._last_input = time.monotonic()
        self._signal()

    def finish(self):
        """The text is complete: the row reads tts_eos after its last token and ends as usual."""
        with self._lock:
            self._input_done = True
        self._signal()

    def fail_input(self, error: BaseException):
        """The text source failed (e.g. the generator that produced the pieces): end with its error."""
        with self._lock:
            self._input_error, self._input_done = error, True
        self._signal()

    def cancel(self):
        super().cancel()
        self._signal()

    def _signal(self):
        self.input_event.set()
        if self.on_input is not None:
            self.on_input()

    def pump(self, model):
        """Move the input to the engine's side (engine thread; called once per frame)."""
        with self._lock:
            self.input_event.clear()
            pieces, self._inbox = self._inbox, []
            done, error, last, has_text = self._input_done, self._input_error, self._last_input, self._has_text
        if error is not None:
            raise error
        live = self.live
        if live.need is None:  # a clone: its voice decides how much text the prefill holds
            if self.prepared is None:  # (the Engine prepares it beside generation)
                self.prepared = prepare(model, self.request)
            live.size_for(self.prepared.clone, model.tokenizer)
        if done and not has_text:
            raise ValueError("text is empty: nothing to say")
        live.release(model, pieces, done)
        idle = time.monotonic() - last
        if not done and self.idle_timeout is not None and idle > self.idle_timeout:
            raise InputIdle(f"no text for {idle:.0f} s while the input is open (idle timeout "
                            f"{self.idle_timeout:g} s); call finish() once the text is complete")
