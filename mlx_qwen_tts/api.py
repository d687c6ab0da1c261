"""The Python API: `synthesize` (whole result) and `stream` (audio chunks as they are made).

Both run the one generation loop and feed its frames to the stateful streaming codec, so the
concatenated stream equals one causal decode of all codes. Long text is split into sentence
segments, generated in turn with the same voice; the codec state runs on across segments.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Iterator

import mlx.core as mx
import numpy as np

from mlx_qwen_tts.engine.generate import GenerationSettings, GenerationStats, generate_frames
from mlx_qwen_tts.engine.prompt import VoiceClone, build_prompt
from mlx_qwen_tts.text import split_text


@dataclass
class SynthesisStats:
    frames: int = 0
    segments: int = 0
    audio_s: float = 0.0
    elapsed_s: float = 0.0
    first_audio_s: float | None = None  # time to first audio chunk
    frames_before_first_audio: int = 0
    prefill_s: float = 0.0
    host_syncs: int = 0
    peak_memory_gb: float = 0.0
    stop_reasons: list = field(default_factory=list)
    runaway: bool = False
    events: list | None = field(default=None, repr=False)  # ("frame" | "chunk", count) in order, if asked

    @property
    def rtf(self) -> float:
        """Real-time factor: synthesis time / audio duration (below 1 is faster than real time)."""
        return self.elapsed_s / self.audio_s if self.audio_s else float("inf")

    @property
    def frames_per_s(self) -> float:
        return self.frames / self.elapsed_s if self.elapsed_s else 0.0


@dataclass
class SynthesisResult:
    audio: np.ndarray  # float32 mono
    codes: np.ndarray  # int32 [frames, 16]
    sample_rate: int
    stats: SynthesisStats


def _voice_clone(model, ref_audio, ref_text, voice_file) -> VoiceClone | None:
    if voice_file is not None and ref_audio is not None:
        raise ValueError("give either ref_audio or voice_file, not both")
    if voice_file is not None:
        from mlx_qwen_tts.voice import load_voice
        return load_voice(voice_file, model)
    if ref_audio is not None:
        from mlx_qwen_tts.voice import make_voice_clone
        return make_voice_clone(model, ref_audio, ref_text)
    if ref_text is not None:
        raise ValueError("ref_text needs ref_audio")
    return None


def stream(model, text: str, *, voice=None, language="auto", instruct=None, greedy=False, seed=None,
           non_streaming_text=True, max_frames=None, temperature=None, top_k=None, top_p=None,
           ref_audio=None, ref_text=None, voice_file=None, first_chunk_frames: int = 2,
           chunk_frames: int = 8, max_segment_chars: int = 250, stats: SynthesisStats | None = None,
           codes_out: list | None = None) -> Iterator[np.ndarray]:
    """Yield float32 mono audio chunks (24 kHz) while generating. The first chunk is decoded
    after `first_chunk_frames` frames, later ones every `chunk_frames` frames."""
    if model.codec is None:
        raise ValueError("this model was loaded without its codec; load it with codec=True")
    if first_chunk_frames < 1 or chunk_frames < 1:
        raise ValueError("first_chunk_frames and chunk_frames must be at least 1")
    stats = stats if stats is not None else SynthesisStats()
    segments = split_text(text, max_segment_chars)
    if not segments:
        raise ValueError("text is empty: nothing to say")
    clone = _voice_clone(model, ref_audio, ref_text, voice_file)
    settings = GenerationSettings.from_config(model.config.generation, greedy=greedy, seed=seed,
                                              max_frames=max_frames, temperature=temperature, top_k=top_k,
                                              top_p=top_p)
    prompts = [build_prompt(model, s, voice=voice, language=language, instruct=instruct,
                            non_streaming_text=non_streaming_text, clone=clone) for s in segments]
    codec, sr = model.codec, model.sample_rate
    t0 = time.perf_counter()
    state = codec.make_state()
    if clone is not None and clone.ref_codes is not None:
        # In-context cloning decodes reference + generated codes and drops the reference's audio.
        _, state = codec(clone.ref_codes[None], state)
    pending: list[mx.array] = []

    def flush():
        nonlocal state
        wav, state = codec(mx.stack(pending)[None], state)
        audio = np.array(wav[0], dtype=np.float32)
        if stats.first_audio_s is None:
            stats.first_audio_s = time.perf_counter() - t0
            stats.frames_before_first_audio = stats.frames
        stats.audio_s += len(audio) / sr
        if stats.events is not None:
            stats.events.append(("chunk", len(pending)))
        pending.clear()
        return audio

    for i, prompt in enumerate(prompts):
        if i and seed is not None:  # distinct but reproducible randomness per segment
            settings = dataclasses.replace(settings, seed=seed + i)
        gen = GenerationStats()
        for frame in generate_frames(model, prompt, settings, gen):
            pending.append(frame)
            stats.frames += 1
            if codes_out is not None:
                codes_out.append(frame)
            if stats.events is not None:
                stats.events.append(("frame", stats.frames))
            if len(pending) >= (first_chunk_frames if stats.first_audio_s is None else chunk_frames):
                yield flush()
        stats.segments += 1
        stats.prefill_s += gen.prefill_s
        stats.host_syncs += gen.host_syncs
        stats.stop_reasons.append(gen.stop_reason)
        stats.runaway |= gen.runaway
    if pending:
        yield flush()
    stats.elapsed_s = time.perf_counter() - t0
    stats.peak_memory_gb = mx.get_peak_memory() / 1e9


def synthesize(model, text: str, **kwargs) -> SynthesisResult:
    """Synthesize `text` in one go; takes the same options as `stream`."""
    stats = kwargs.pop("stats", None) or SynthesisStats()
    frames: list[mx.array] = []
    chunks = list(stream(model, text, stats=stats, codes_out=frames, **kwargs))
    audio = np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
    codes = np.array(mx.stack(frames)) if frames else np.zeros((0, model.config.num_code_groups), np.int32)
    return SynthesisResult(audio=audio, codes=codes, sample_rate=model.sample_rate, stats=stats)
