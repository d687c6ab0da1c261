"""Sampling with the official (Hugging Face 4.57.3) semantics, run on the device.

Code group 0: repetition penalty over every code-0 id generated so far, EOS blocked until two
frames exist, codec ids [vocab-1024, vocab) suppressed except EOS; then temperature, top-k,
top-p. The code predictor uses only temperature / top-k / top-p. Greedy = argmax after the
processors. All functions are pure (explicit PRNG keys) so they can live inside mx.compile.
"""

from __future__ import annotations

from dataclasses import dataclass

import mlx.core as mx
from mlx_lm.sample_utils import apply_top_k, apply_top_p


@dataclass(frozen=True)
class SamplerSettings:
    do_sample: bool = True
    temperature: float = 0.9
    top_k: int = 50
    top_p: float = 1.0

    def __post_init__(self):
        if self.do_sample and not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")


def warp_logits(logits: mx.array, s: SamplerSettings) -> mx.array:
    """Temperature, then top-k, then top-p, as the official warpers; returns log-probabilities."""
    if s.temperature != 1.0:
        logits = logits / s.temperature
    if 0 < s.top_k < logits.shape[-1]:
        logits = apply_top_k(logits, s.top_k)
    logprobs = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
    if s.top_p < 1.0:
        logprobs = apply_top_p(logprobs, s.top_p)
    return logprobs


def sample(logits: mx.array, s: SamplerSettings, key: mx.array) -> mx.array:
    """logits [B, V] -> token ids [B] (int32)."""
    if not s.do_sample:
        return mx.argmax(logits, axis=-1).astype(mx.int32)
    return mx.random.categorical(warp_logits(logits, s), axis=-1, key=key).astype(mx.int32)


def repetition_penalty(logits: mx.array, seen: mx.array, penalty: float) -> mx.array:
    """Divide positive, multiply negative scores of every id already generated (seen [B, V])."""
    if penalty == 1.0:
        return logits
    return mx.where(seen, mx.where(logits < 0, logits * penalty, logits / penalty), logits)


def code0_bias(vocab_size: int, eos_id: int) -> tuple[mx.array, mx.array]:
    """Additive masks: (always: control ids suppressed except EOS, early: EOS also blocked)."""
    ids = mx.arange(vocab_size)
    neg = mx.array(-mx.inf, dtype=mx.float32)
    always = mx.where((ids >= vocab_size - 1024) & (ids != eos_id), neg, 0.0)
    early = mx.where(ids == eos_id, neg, always)
    return always, early
