"""The Python API: `synthesize` (whole result), `stream` (audio chunks as they are made) and
`synthesize_batch` (many texts as rows of one batch).

All of them run the engine's scheduler (engine/scheduler.py) on the caller's thread: the one
compiled frame step, the streaming codec, long text split into sentence segments that are
generated as rows of one batch and decoded in order. For a long-lived service use
`mlx_qwen_tts.Engine`, which runs the same scheduler in a background thread.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Iterator

import numpy as np

from mlx_qwen_tts.engine.live import DEFAULT_IDLE_TIMEOUT_S, LIVE_FIRST_CHUNK_FRAMES
from mlx_qwen_tts.engine.request import make_request
from mlx_qwen_tts.engine.scheduler import Scheduler, Synthesis, SynthesisStats
from mlx_qwen_tts.text import SEGMENT_TOKENS

__all__ = ["SynthesisResult", "SynthesisStats", "stream", "stream_text", "synthesize", "synthesize_batch"]

# Keywords of `synthesize` that `synthesize_batch` also takes as one value per text.
PER_TEXT = ("voice", "language", "instruct", "greedy", "seed", "non_streaming_text", "max_frames", "temperature",
            "top_k", "top_p", "ref_audio", "ref_text", "voice_file")
DEFAULT_MAX_BATCH = 8


@dataclass
class SynthesisResult:
    audio: np.ndarray  # float32 mono
    codes: np.ndarray  # int32 [frames, 16]
    sample_rate: int
    stats: SynthesisStats


def _run(scheduler: Scheduler, syntheses: list[Synthesis]):
    """Drive the scheduler until every synthesis ended; yields (index, chunk) as they come."""
    try:
        while scheduler.busy:
            scheduler.run_once()
            for i, synthesis in enumerate(syntheses):
                for chunk in synthesis.ready()[0]:
                    yield i, chunk
                if synthesis.error is not None:
                    raise synthesis.error
    finally:  # a consumer that stops early (or an error) frees every row
        if scheduler.busy:
            for synthesis in syntheses:
                synthesis.cancel()
            scheduler.run_once()


def stream_text(model, pieces: Iterable[str], *, first_chunk_frames: int = LIVE_FIRST_CHUNK_FRAMES,
                chunk_frames: int = 8,
                stats: SynthesisStats | None = None, codes_out: list | None = None,
                idle_timeout: float | None = DEFAULT_IDLE_TIMEOUT_S, **kwargs) -> Iterator[np.ndarray]:
    """Like `stream`, for text that is still being written: `pieces` is any iterable of str (e.g.
    an LLM's tokens). Speech starts after the first complete token, pauses when the text runs out
    and resumes when more arrives (engine/live.py); the same keywords as `stream` (the text layout
    is always the streaming one; the first chunk is one frame). Generation runs on its own thread;
    `pieces` is read on the calling thread between chunks, so a source that runs MLX itself
    (mlx-lm's `stream_generate`) works. A source that blocks for long holds back the chunks made
    meanwhile: feed such a source from a thread of its own into `Engine.open_text_stream`.
    `idle_timeout` (s) ends a stalled feed."""
    from mlx_qwen_tts.engine.service import Engine

    with Engine(model, max_batch=1) as engine:
        speech = engine.open_text_stream(first_chunk_frames=first_chunk_frames, chunk_frames=chunk_frames,
                                         stats=stats, codes_out=codes_out, idle_timeout=idle_timeout, **kwargs)
        ended = False
        try:
            for piece in pieces:
                speech.feed(piece)
                chunks, ended = speech.ready()
                yield from chunks
                if ended:  # the model ended the speech (EOS, a limit) or it failed: stop reading
                    break
            speech.finish()
        except BaseException:
            speech.cancel()
            raise
        if not ended:
            yield from speech
        elif speech.error is not None:
            raise speech.error


def stream(model, text: str, *, first_chunk_frames: int = 2, chunk_frames: int = 8,
           max_segment_tokens: int = SEGMENT_TOKENS,
           stats: SynthesisStats | None = None, codes_out: list | None = None,
           max_batch: int = DEFAULT_MAX_BATCH, **kwargs) -> Iterator[np.ndarray]:
    """Yield float32 mono audio chunks (24 kHz) while generating. The first chunk is decoded
    after `first_chunk_frames` frames, later ones every `chunk_frames` frames. Keywords: voice,
    language, instruct, greedy, seed, non_streaming_text, max_frames, temperature, top_k, top_p,
    ref_audio, ref_text, voice_file."""
    request = make_request(model.config, text, first_chunk_frames=first_chunk_frames, chunk_frames=chunk_frames,
                           max_segment_tokens=max_segment_tokens, **kwargs)
    scheduler = Scheduler(model, max_batch)
    synthesis = Synthesis(request, stats, codes_out)
    scheduler.submit(synthesis)
    for _, chunk in _run(scheduler, [synthesis]):
        yield chunk


def synthesize(model, text: str, **kwargs) -> SynthesisResult:
    """Synthesize `text` in one go; takes the same options as `stream`."""
    return synthesize_batch(model, [text], **kwargs)[0]


def synthesize_batch(model, texts: list[str], *, max_batch: int = DEFAULT_MAX_BATCH, first_chunk_frames: int = 2,
                     chunk_frames: int = 8, max_segment_tokens: int = SEGMENT_TOKENS, stats=None,
                     **kwargs) -> list[SynthesisResult]:
    """Synthesize every text as rows of one batch; results in order. Each keyword of `synthesize`
    is one value for all texts or a list with one value per text (None in a list: unset)."""
    if isinstance(texts, str):
        raise ValueError("texts must be a list of strings; use synthesize() for one text")
    texts = list(texts)
    unknown = sorted(set(kwargs) - set(PER_TEXT) - {"ignore_eos"})
    if unknown:
        raise TypeError(f"unexpected keyword argument(s): {', '.join(unknown)}")
    per_text = []
    for i in range(len(texts)):
        args = {}
        for key, value in kwargs.items():
            if isinstance(value, (list, tuple)) and key in PER_TEXT:
                if len(value) != len(texts):
                    raise ValueError(f"{key} has {len(value)} values for {len(texts)} texts")
                value = value[i]
            if value is not None:
                args[key] = value
        per_text.append(args)
    syntheses, codes = [], []
    for i, (text, args) in enumerate(zip(texts, per_text)):
        try:
            request = make_request(model.config, text, first_chunk_frames=first_chunk_frames,
                                   chunk_frames=chunk_frames, max_segment_tokens=max_segment_tokens, **args)
        except ValueError as e:
            raise ValueError(f"text {i}: {e}" if len(texts) > 1 else str(e)) from None
        codes.append([])
        syntheses.append(Synthesis(request, stats if len(texts) == 1 else None, codes[-1]))
    if not syntheses:
        return []
    scheduler = Scheduler(model, max_batch)
    for synthesis in syntheses:
        scheduler.submit(synthesis)
    audio = [[] for _ in syntheses]
    for i, chunk in _run(scheduler, syntheses):
        audio[i].append(chunk)
    groups = model.config.num_code_groups
    return [SynthesisResult(audio=np.concatenate(a) if a else np.zeros(0, np.float32),
                            codes=np.array(c, dtype=np.int32).reshape(-1, groups), sample_rate=model.sample_rate,
                            stats=s.stats) for a, c, s in zip(audio, codes, syntheses)]
