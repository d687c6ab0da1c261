"""The generation loop: the only one; synthesis, streaming, the CLI and the benchmarks use it.

Per frame: the compiled code-predictor graph finishes frame k (groups 1..15) and builds the
next talker input, the talker steps once and code 0 of frame k+1 is sampled, all queued with
async_eval before the host reads code 0 of frame k, which was computed during the previous
frame. So there is exactly one host sync per frame and the device never waits for Python.
"""

from __future__ import annotations

import math
import random
import time
import warnings
from dataclasses import dataclass, field
from typing import Iterator

import mlx.core as mx

from mlx_qwen_tts.config import GenerationConfig
from mlx_qwen_tts.engine.prompt import Prompt
from mlx_qwen_tts.engine.sampling import SamplerSettings, code0_bias, repetition_penalty, sample

FRAME_RATE = 12.5
# Runaway guard. The budget allows ~4x the slowest plausible speech (1 s per text token, on
# top of 4 s); a stuck model repeating at most 3 distinct code-0 ids for 5 s is not speech.
BUDGET_BASE_S, BUDGET_PER_TOKEN_S = 4.0, 1.0
STUCK_WINDOW, STUCK_MAX_DISTINCT = 62, 3


@dataclass(frozen=True)
class GenerationSettings:
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
        """Explicit arguments win over generation_config.json, as in the official wrapper."""
        def pick(value, default):
            return default if value is None else value

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


@dataclass
class GenerationStats:
    frames: int = 0
    host_syncs: int = 0
    prefill_s: float = 0.0
    first_frame_s: float = 0.0  # from the start of generation
    elapsed_s: float = 0.0
    stop_reason: str = ""  # eos | max_frames | runaway_budget | runaway_stuck
    runaway: bool = False
    trace: list | None = field(default=None, repr=False)  # (talker logits, predictor logits) per step


def frame_budget(text_tokens: int) -> int:
    return math.ceil(FRAME_RATE * (BUDGET_BASE_S + BUDGET_PER_TOKEN_S * text_tokens))


def _compiled(model, name, settings, builder):
    fn = model.compiled.get((name, settings))
    if fn is None:
        fn = model.compiled[(name, settings)] = builder()
    return fn


def _code0_picker(model, settings: GenerationSettings):
    penalty, talker_sampler = settings.repetition_penalty, settings.talker

    def pick(logits, seen, bias, key):
        logits = repetition_penalty(logits.astype(mx.float32), seen, penalty) + bias
        code = sample(logits, talker_sampler, key)
        return code, seen | (mx.arange(seen.shape[-1])[None] == code[:, None])

    return _compiled(model, "code0", (penalty, talker_sampler), lambda: mx.compile(pick))


def _frame_finisher(model, settings: SamplerSettings):
    predictor = model.code_predictor
    state = [predictor.state]
    return _compiled(model, "predictor", settings, lambda: mx.compile(
        lambda h, e, k: predictor.frame(h, e, k, settings), inputs=state))


def generate_frames(model, prompt: Prompt, settings: GenerationSettings,
                    stats: GenerationStats | None = None) -> Iterator[mx.array]:
    """Yield frames of 16 codes (int32 [16]) as they are made."""
    stats = stats if stats is not None else GenerationStats()
    cfg = model.config
    eos, groups = cfg.ids.codec_eos, cfg.num_code_groups - 1
    talker, embed = model.talker, model.talker.codec_embedding
    dtype = talker.norm.weight.dtype  # norms are never quantized
    cap = min(settings.max_new_tokens, settings.max_frames or settings.max_new_tokens)
    budget = frame_budget(prompt.text_tokens)
    limit = cap if settings.max_frames else min(cap, budget)
    pick, finish = _code0_picker(model, settings), _frame_finisher(model, settings.predictor)
    always, early = code0_bias(cfg.talker.vocab_size, eos)
    seed = settings.seed if settings.seed is not None else random.getrandbits(63)
    key = mx.random.key(seed)
    recent: list[int] = []

    t0 = time.perf_counter()
    cache = talker.make_cache()
    hidden, logits = talker(prompt.embeds.astype(dtype), cache)
    key, sub = mx.random.split(key)
    code0, seen = pick(logits, mx.zeros((1, cfg.talker.vocab_size), dtype=mx.bool_), early, sub)
    mx.async_eval(code0)
    stats.prefill_s = time.perf_counter() - t0
    trailing_len = prompt.trailing.shape[1]
    for k in range(limit):
        key, k_code0, k_frame = mx.random.split(key, 3)
        code0_vec = embed(code0)[:, None]
        rest, rest_sum, predictor_logits = finish(hidden, code0_vec, mx.random.split(k_frame, groups))
        if stats.trace is not None:
            stats.trace.append((logits, predictor_logits))
        if k + 1 < limit:  # queue frame k+1's talker step before reading code 0 of frame k
            text = prompt.trailing[:, k:k + 1] if k < trailing_len else prompt.tts_pad
            hidden, logits = talker(code0_vec + rest_sum + text.astype(dtype), cache)
            bias = early if (k + 1 < 2 or settings.ignore_eos) else always
            next_code0, seen = pick(logits, seen, bias, k_code0)
            mx.async_eval(next_code0, rest)
        else:
            mx.async_eval(rest)
        c0 = code0.item()
        stats.host_syncs += 1
        if c0 == eos:
            stats.stop_reason = "eos"
            break
        if stats.frames == 0:
            stats.first_frame_s = time.perf_counter() - t0
        stats.frames += 1
        yield mx.concatenate([code0, rest[0]])
        recent.append(c0)
        if _stuck(recent):
            _runaway(stats, "runaway_stuck", f"code 0 cycled through {len(set(recent[-STUCK_WINDOW:]))} "
                     f"values for the last {STUCK_WINDOW} frames")
            break
        code0 = next_code0 if k + 1 < limit else None
    else:
        if limit == cap:
            stats.stop_reason = "max_frames"
        else:
            _runaway(stats, "runaway_budget", f"no end of speech after {limit} frames "
                     f"({limit / FRAME_RATE:.0f} s) for {prompt.text_tokens} text tokens")
    stats.elapsed_s = time.perf_counter() - t0


def _stuck(recent: list[int]) -> bool:
    return len(recent) >= STUCK_WINDOW and len(set(recent[-STUCK_WINDOW:])) <= STUCK_MAX_DISTINCT


def _runaway(stats: GenerationStats, reason: str, detail: str):
    stats.stop_reason, stats.runaway = reason, True
    warnings.warn(f"generation ran away and was stopped: {detail}; the audio is likely broken at the end",
                  RuntimeWarning, stacklevel=3)
