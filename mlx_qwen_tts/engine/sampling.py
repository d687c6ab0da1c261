"""Sampling with the official (Hugging Face 4.57.3) semantics, per batch row, on the device.

Code group 0: repetition penalty over every code-0 id generated so far, EOS blocked until two
frames exist, codec ids [vocab-1024, vocab) suppressed except EOS; then temperature, top-k,
top-p. The code predictor uses only temperature / top-k / top-p. Greedy = argmax after the
processors.

Every setting is an array with one value per row, so one compiled frame step serves any mix of
settings (mlx-lm's samplers take Python scalars, which a traced graph would bake in). Random
draws are Gumbel-max over counter-based noise: a row's draw depends only on its own seed, the
frame and the code group, never on which rows share the batch or when the row joined.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import mlx.core as mx


@dataclass(frozen=True)
class SamplerSettings:
    """One sampler's settings as validated host values (talker or code predictor)."""

    do_sample: bool = True
    temperature: float = 0.9
    top_k: int = 50
    top_p: float = 1.0

    def __post_init__(self):
        if self.do_sample and not (math.isfinite(self.temperature) and self.temperature > 0):
            raise ValueError(f"temperature must be a finite number > 0 (0 means greedy), got {self.temperature}")
        if not (isinstance(self.top_p, (int, float)) and 0 < self.top_p <= 1):
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 0:
            raise ValueError(f"top_k must be an integer >= 0 (0 = off), got {self.top_k}")


class SamplerArrays(NamedTuple):
    """SamplerSettings of every row: greedy [B] bool, temperature [B], top_k [B] int32, top_p [B]."""

    greedy: mx.array
    temperature: mx.array
    top_k: mx.array
    top_p: mx.array

    @classmethod
    def of(cls, settings: list[SamplerSettings]) -> "SamplerArrays":
        return cls(mx.array([not s.do_sample for s in settings]),
                   mx.array([s.temperature if s.do_sample else 1.0 for s in settings], dtype=mx.float32),
                   mx.array([s.top_k for s in settings], dtype=mx.int32),
                   mx.array([s.top_p for s in settings], dtype=mx.float32))


def warp_logits(logits: mx.array, s: SamplerArrays, top_p: bool = True) -> mx.array:
    """Temperature, then top-k, then top-p, as the official warpers; returns log-probabilities [B, V].
    One sort serves both filters (top-p as mlx-lm's apply_top_p, on the top-k survivors).
    top_p=False: no row filters by top-p, so its work is skipped (the floor is then the top-k one)."""
    vocab = logits.shape[-1]
    logits = logits / s.temperature[:, None]
    ascending = mx.sort(logits, axis=-1)
    # top-k keeps every score >= the k-th largest; k = 0 (off) or k >= V keeps all
    kth = mx.where((s.top_k > 0) & (s.top_k < vocab), vocab - s.top_k, 0)
    floor = k_floor = mx.take_along_axis(ascending, kth[:, None], axis=-1)
    if top_p:
        kept = mx.where(ascending >= k_floor, ascending, -mx.inf)
        probs = mx.exp(kept - mx.logsumexp(kept, axis=-1, keepdims=True))
        mass_above = mx.cumsum(probs, axis=-1, reverse=True, inclusive=False)
        dropped = (mass_above >= s.top_p[:, None] * (mass_above[:, :1] + probs[:, :1])).sum(axis=-1, keepdims=True)
        dropped = mx.where(s.top_p[:, None] < 1.0, dropped, 0)  # rounding must not drop tails when off
        floor = mx.maximum(k_floor, mx.take_along_axis(kept, dropped, axis=-1))
    logits = mx.where(logits < floor, -mx.inf, logits)
    return logits - mx.logsumexp(logits, axis=-1, keepdims=True)


def uniform_noise(seeds: mx.array, counter: mx.array, stream: int, ids: mx.array) -> mx.array:
    """Uniform (0, 1) noise for token `ids` ([B, N] or [1, N] uint32) from per-row seeds [B, 2]
    uint32, a per-row counter [B] (the frame) and a stream id (the code group): a murmur3-style
    integer hash, so a row's noise for a token is the same whatever else is computed."""
    return unit_interval(_hash(seeds[:, 0], seeds[:, 1], counter, mx.array(stream + 1, mx.uint32), ids))


def noise_table(seeds: mx.array, counter: mx.array, streams: int, vocab: int) -> mx.array:
    """Gumbel noise [B, streams, vocab] of streams 1..`streams` for every token id: one fused
    chain per frame instead of one hash per draw; entry [:, g - 1, i] equals the noise
    `uniform_noise` gives stream g and token i (the same integer and float operations)."""
    ids = mx.arange(vocab, dtype=mx.uint32)[None, None]
    keys = mx.arange(2, streams + 2, dtype=mx.uint32)[None]  # stream + 1, as uniform_noise
    return gumbel(unit_interval(_hash(seeds[:, :1], seeds[:, 1:], counter[:, None], keys, ids)))


def _hash(seed0, seed1, counter, stream_key, ids):
    def mix(x):
        x = x ^ (x >> 16)
        x = x * mx.array(0x85EBCA6B, mx.uint32)
        x = x ^ (x >> 13)
        x = x * mx.array(0xC2B2AE35, mx.uint32)
        return x ^ (x >> 16)

    golden = mx.array(0x9E3779B9, mx.uint32)
    # (frame, stream) -> one word, so the whole key takes two rounds per row and one per token
    step = (counter.astype(mx.uint32) * mx.array(64, mx.uint32) + stream_key) * golden
    row = mix(seed0 ^ mix(seed1 ^ step))
    return mix(row[..., None] ^ (ids.astype(mx.uint32) * golden))


def gumbel(uniform: mx.array) -> mx.array:
    return -mx.log(-mx.log(uniform))


def unit_interval(bits: mx.array) -> mx.array:
    """uint32 -> float32 strictly inside (0, 1): 23 bits, so 1 - 2**-24 is the largest value
    (24 bits would round up to exactly 1.0, an infinite Gumbel draw)."""
    return ((bits >> 9).astype(mx.float32) + 0.5) * (1.0 / (1 << 23))


GREEDY, FULL_VOCAB = -1, 0  # sampling plans besides a candidate count


def sampling_plan(settings: list[SamplerSettings]) -> int:
    """How a batch's draws are computed, fixed when the step is traced: GREEDY (no row samples),
    FULL_VOCAB (some row samples without a top-k), or K candidates: every sampling row has
    top_k <= K, so only the K best tokens can be drawn (K a power of two, few traced variants)."""
    sampled = [s for s in settings if s.do_sample]
    if not sampled:
        return GREEDY
    if any(s.top_k == 0 for s in sampled):
        return FULL_VOCAB
    k = max(s.top_k for s in sampled)
    candidates = 64
    while candidates < k:
        candidates *= 4
    return candidates if candidates <= 1024 else FULL_VOCAB


class DrawPlan(NamedTuple):
    """What a batch's draws need, fixed when the step is traced (the work changes, never a draw)."""

    candidates: int  # sampling_plan()
    top_p: bool  # some sampling row filters by top-p
    greedy_rows: bool  # some row is greedy


def draw_plan(settings: list[SamplerSettings]) -> DrawPlan:
    return DrawPlan(sampling_plan(settings), any(s.do_sample and s.top_p < 1 for s in settings),
                    any(not s.do_sample for s in settings))


def sample(logits: mx.array, s: SamplerArrays, seeds: mx.array, counter: mx.array, stream: int,
           plan: int, *, top_p: bool = True, greedy_rows: bool = True, noise=None) -> mx.array:
    """logits [B, V] (processors applied; float32, or bfloat16: cast after the candidates are
    taken, which is exact) -> ids [B] int32: argmax for greedy rows, a draw from the warped
    distribution (Gumbel-max over per-token noise) for the others. The plan changes the work,
    never the draw (the noise is keyed by token id). `top_p` / `greedy_rows` False: no row
    uses top-p / is greedy (DrawPlan). `noise`: the Gumbel noise [B, V] of this draw for every
    token id (a noise_table slice), instead of hashing the candidates' ids here."""
    if plan == GREEDY:
        return mx.argmax(logits, axis=-1).astype(mx.int32)
    vocab = logits.shape[-1]
    if plan == FULL_VOCAB or plan >= vocab:
        ids = mx.arange(vocab, dtype=mx.int32)[None]
        scores = _float32(logits)
        gumbels = noise if noise is not None else gumbel(uniform_noise(seeds, counter, stream, ids))
    else:
        ids = mx.argpartition(-logits, plan - 1, axis=-1)[:, :plan].astype(mx.int32)
        scores = _float32(mx.take_along_axis(logits, ids, axis=-1))
        gumbels = (mx.take_along_axis(noise, ids, axis=-1) if noise is not None
                   else gumbel(uniform_noise(seeds, counter, stream, ids)))
    pick = mx.argmax(warp_logits(scores, s, top_p) + gumbels, axis=-1)
    drawn = mx.take_along_axis(mx.broadcast_to(ids, scores.shape), pick[:, None], axis=-1)[:, 0]
    if not greedy_rows:
        return drawn
    return mx.where(s.greedy, mx.argmax(logits, axis=-1).astype(mx.int32), drawn)


def _float32(x: mx.array) -> mx.array:
    return x if x.dtype == mx.float32 else x.astype(mx.float32)


def repetition_penalty(logits: mx.array, seen: mx.array, penalty: mx.array) -> mx.array:
    """Divide positive, multiply negative scores of every id already generated (seen [B, V]);
    penalty [B] (1.0 = off)."""
    p = penalty[:, None]
    return mx.where(seen, mx.where(logits < 0, logits * p, logits / p), logits)


def code0_bias(vocab_size: int, eos_id: int) -> tuple[mx.array, mx.array]:
    """Additive masks: (always: control ids suppressed except EOS, early: EOS also blocked)."""
    ids = mx.arange(vocab_size)
    neg = mx.array(-mx.inf, dtype=mx.float32)
    always = mx.where((ids >= vocab_size - 1024) & (ids != eos_id), neg, 0.0)
    early = mx.where(ids == eos_id, neg, always)
    return always, early
