"""A synthesis request as one value, validated once, in one place.

The CLI, `synthesize`, `synthesize_batch`, `Engine.submit` and the server all build a `Request`
with `make_request`; nothing downstream re-checks the user's values. Validation here is host
work only (no MLX), so it can run on any thread: encoding a reference recording or reading a
saved voice happens later, where the MLX work is done.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, replace

from mlx_qwen_tts.config import GenerationConfig, ModelConfig
from mlx_qwen_tts.engine.prompt import (MAX_INSTRUCT_CHARS, MAX_REF_TEXT_CHARS, PROMPT_OVERHEAD_TOKENS, VoiceClone,
                                        check_positions, check_text_limit, resolve_language, resolve_voice)
from mlx_qwen_tts.engine.sampling import SamplerSettings
from mlx_qwen_tts.text import MIN_SEGMENT_TOKENS, SEGMENT_TOKENS, split_text

MAX_SEED = 2**64 - 1  # sampling noise is keyed by a 64-bit seed


@dataclass(frozen=True)
class GenerationSettings:
    """Sampling and limits of one generation (one batch row)."""

    talker: SamplerSettings = SamplerSettings()
    predictor: SamplerSettings = SamplerSettings()
    repetition_penalty: float = 1.05
    max_frames: int | None = None  # hard cap; None: the runaway budget from the text length
    max_new_tokens: int = 8192  # the model's own ceiling (generation_config.json)
    seed: int | None = None
    ignore_eos: bool = False  # EOS made impossible (benchmarks, guard tests)

    @classmethod
    def from_config(cls, gen: GenerationConfig, *, greedy=False, temperature=None, top_k=None, top_p=None,
                    subtalker_temperature=None, subtalker_top_k=None, subtalker_top_p=None,
                    repetition_penalty=None, **kw) -> "GenerationSettings":
        """Explicit arguments win over generation_config.json, as in the official wrapper.
        A temperature of 0 means greedy (a common convention)."""
        def pick(value, default):
            return default if value is None else value

        if temperature == 0:
            greedy = True
        talker = SamplerSettings(do_sample=gen.do_sample and not greedy,
                                 temperature=pick(temperature, gen.temperature), top_k=pick(top_k, gen.top_k),
                                 top_p=pick(top_p, gen.top_p))
        predictor = SamplerSettings(do_sample=gen.subtalker_do_sample and not greedy,
                                    temperature=pick(subtalker_temperature, gen.subtalker_temperature),
                                    top_k=pick(subtalker_top_k, gen.subtalker_top_k),
                                    top_p=pick(subtalker_top_p, gen.subtalker_top_p))
        return cls(talker=talker, predictor=predictor,
                   repetition_penalty=pick(repetition_penalty, gen.repetition_penalty),
                   max_new_tokens=gen.max_new_tokens, **kw)


@dataclass(frozen=True)
class Request:
    """What to say and how. `segments` are the sentence pieces generated as separate rows."""

    text: str
    segments: tuple[str, ...]
    settings: GenerationSettings
    voice: str | None = None
    language: str = "auto"
    instruct: str | None = None
    non_streaming_text: bool = True
    ref_audio: object = None  # a path or a float array; encoded where the MLX work runs
    ref_text: str | None = None
    voice_file: object = None
    clone: VoiceClone | None = None  # an already encoded voice
    first_chunk_frames: int = 2
    chunk_frames: int = 8

    def segment_settings(self, index: int) -> GenerationSettings:
        """Distinct but reproducible randomness per segment."""
        seed = self.settings.seed
        return self.settings if index == 0 or seed is None else replace(self.settings,
                                                                         seed=(seed + index) % (MAX_SEED + 1))


def _int(name, value, low, high=None):
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < low or (high is not None and value > high):
        raise ValueError(f"{name} must be in [{low}, {high}], got {value}" if high is not None
                         else f"{name} must be at least {low}, got {value}")
    return int(value)


def _float(name, value, low, high, *, low_open=False):
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if value < low or (low_open and value == low) or value > high:
        raise ValueError(f"{name} must be in {'(' if low_open else '['}{low}, {high}], got {value}")
    return float(value)


def _text(name, value):
    if value is not None and not isinstance(value, str):
        raise ValueError(f"{name} must be a string, got {type(value).__name__}")
    if value is not None:
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as e:
            raise ValueError(f"{name} is not valid Unicode text (a lone surrogate at character {e.start})") from None
    return value


def _worst_prompt_tokens(request_segments, instruct, ref_text, ref_frames) -> int:
    """An upper bound on the longest segment's prompt, from UTF-8 bytes (byte-level BPE: at most
    one token per byte) without tokenizing."""
    def size(value):
        return len(value.encode("utf-8")) if value else 0

    return (PROMPT_OVERHEAD_TOKENS + max(map(size, request_segments)) + size(instruct) + size(ref_text)
            + ref_frames)


def make_request(cfg: ModelConfig, text, *, voice=None, language="auto", instruct=None, greedy=False,
                 seed=None, non_streaming_text=True, max_frames=None, temperature=None, top_k=None, top_p=None,
                 ref_audio=None, ref_text=None, voice_file=None, clone: VoiceClone | None = None,
                 first_chunk_frames: int = 2, chunk_frames: int = 8, max_segment_tokens: int = SEGMENT_TOKENS,
                 ignore_eos: bool = False) -> Request:
    """Check every user value against the model's configuration and the limits; raise a one-line
    ValueError. Text of any length is split into segments of at most `max_segment_tokens` tokens;
    instruct and ref_text, which go whole into every prompt, have their own limits."""
    for name, value in (("text", text), ("voice", voice), ("language", language), ("instruct", instruct),
                        ("ref_text", ref_text)):
        _text(name, value)
    check_text_limit("instruct", instruct, MAX_INSTRUCT_CHARS)
    check_text_limit("ref_text", ref_text, MAX_REF_TEXT_CHARS)
    segments = tuple(split_text(text or "", _int("max_segment_tokens", max_segment_tokens, MIN_SEGMENT_TOKENS)))
    if not segments:
        raise ValueError("text is empty: nothing to say")
    cloning = clone is not None or ref_audio is not None or voice_file is not None
    if voice_file is not None and ref_audio is not None:
        raise ValueError("give either ref_audio or voice_file, not both")
    if ref_text is not None and ref_audio is None:
        raise ValueError("ref_text needs ref_audio")
    if cloning and cfg.model_type != "base":
        raise ValueError(f"voice cloning needs a Base model; this one is {cfg.model_type}")
    if not cloning and cfg.model_type == "base":
        raise ValueError("this Base model needs a reference voice (ref_audio or voice_file) to clone")
    if clone is not None and clone.ref_codes is not None and not clone.ref_text:
        raise ValueError("in-context cloning needs the reference text (ref_text)")
    voice = resolve_voice(cfg, voice)
    language = resolve_language(cfg, language)
    if clone is not None:
        check_text_limit("ref_text", clone.ref_text, MAX_REF_TEXT_CHARS)
        ref_text_in_prompt, ref_frames = clone.ref_text, 0 if clone.ref_codes is None else clone.ref_codes.shape[0]
    else:
        ref_text_in_prompt, ref_frames = ref_text, 0
        if ref_text is not None:
            from mlx_qwen_tts.voice import MAX_REF_FRAMES

            ref_frames = MAX_REF_FRAMES
    check_positions(cfg, _worst_prompt_tokens(segments, instruct, ref_text_in_prompt, ref_frames), estimate=True)
    settings = GenerationSettings.from_config(
        cfg.generation, greedy=bool(greedy), seed=_int("seed", seed, 0, MAX_SEED),
        max_frames=_int("max_frames", max_frames, 1), temperature=_float("temperature", temperature, 0, 100),
        top_k=_int("top_k", top_k, 0), top_p=_float("top_p", top_p, 0, 1, low_open=True), ignore_eos=ignore_eos)
    return Request(text=text, segments=segments, settings=settings, voice=voice, language=language,
                   instruct=instruct or None, non_streaming_text=bool(non_streaming_text), ref_audio=ref_audio,
                   ref_text=ref_text, voice_file=voice_file, clone=clone,
                   first_chunk_frames=_int("first_chunk_frames", first_chunk_frames, 1),
                   chunk_frames=_int("chunk_frames", chunk_frames, 1))


def resolve_clone(model, request: Request) -> VoiceClone | None:
    """The request's voice clone, encoding the reference or reading the saved voice (MLX work)."""
    if request.clone is not None:
        return request.clone
    if request.voice_file is not None:
        from mlx_qwen_tts.voice import load_voice
        return load_voice(request.voice_file, model)
    if request.ref_audio is not None:
        from mlx_qwen_tts.voice import make_voice_clone
        return make_voice_clone(model, request.ref_audio, request.ref_text)
    return None
