"""The frame step: one compiled function that advances every row of a batch by one 80 ms frame.

`FrameStep(model)(consts, state) -> (frames [B, 16], state)` finishes each row's current frame
(code groups 1..15 from the code predictor, sampled with the row's own settings), feeds the
frame plus the row's next text vector to the talker, and samples code 0 of the next frame. It
is device work only (no host reads), and every per-row value, sampler settings included, is an
array of the state: one traced graph per (batch size, KV capacity, text capacity) serves every
mix of settings. The talker's KV cache is a fixed-capacity buffer shared by all rows: rows step
together, so they write at one position, and a row with a shorter history is left-padded (the
layout of mlx-lm's BatchKVCache, whose Python-indexed update cannot be traced at a fixed shape).
"""

from __future__ import annotations

from typing import NamedTuple

import mlx.core as mx
from mlx_lm.models.cache import KVCache

from mlx_qwen_tts.engine.sampling import SamplerArrays, code0_bias, repetition_penalty, sample

KV_BLOCK = 256  # KV capacities are KV_BLOCK * 2**n positions: few shapes, few traced graphs
TEXT_BLOCK = 32  # the same for the per-row trailing text


class StepConstants(NamedTuple):
    tts_pad: mx.array  # [1, 1, H] text-track filler once a row's trailing text is used up
    always: mx.array  # [V] code-0 bias: control ids suppressed except EOS
    early: mx.array  # [V] the same with EOS blocked (first two frames, ignore_eos)


class BatchState(NamedTuple):
    """Everything the step reads and writes; batch-shaped along axis 0 except `write`."""

    keys: tuple  # per talker layer [B, kv heads, capacity, head dim]
    values: tuple
    write: mx.array  # [1] int32: the KV position this step writes
    left_pad: mx.array  # [B] int32: a row's first valid KV position
    hidden: mx.array  # [B, 1, H] talker state that predicts the current frame
    code0: mx.array  # [B] int32 code 0 of the current frame
    seen: mx.array  # [B, V] bool: code-0 ids generated so far (repetition penalty)
    frames: mx.array  # [B] int32: index of the current frame
    trailing: mx.array  # [B, T, H] text vectors fed one per frame (streaming text mode)
    trailing_len: mx.array  # [B] int32
    seeds: mx.array  # [B, 2] uint32
    talker: SamplerArrays
    predictor: SamplerArrays
    penalty: mx.array  # [B] repetition penalty
    allow_eos: mx.array  # [B] bool (False: EOS never sampled)


def capacity_for(n: int, block: int) -> int:
    size = block
    while size < n:
        size *= 2
    return size


def step_constants(model) -> StepConstants:
    ids, talker = model.config.ids, model.talker
    always, early = code0_bias(model.config.talker.vocab_size, ids.codec_eos)
    tts_pad = talker.embed_text(mx.array([[ids.tts_pad]])).astype(talker.norm.weight.dtype)
    consts = StepConstants(tts_pad, always, early)
    mx.eval(consts)  # a lazy array belongs to its thread's stream; the engine's thread must read it
    return consts


class _BufferCache:
    """The cache interface mlx-lm's attention uses, over a fixed buffer written at `write`."""

    def __init__(self, keys, values, write, positions):
        self.keys, self.values, self.write, self.offset = keys, values, write, positions

    def update_and_fetch(self, keys, values):
        self.keys = mx.slice_update(self.keys, keys, self.write, axes=(2,))
        self.values = mx.slice_update(self.values, values, self.write, axes=(2,))
        return self.keys, self.values


def pick_code0(logits: mx.array, consts: StepConstants, seen, frames, penalty, allow_eos, sampler, seeds,
               plan: int):
    """Code 0 of frame `frames` per row from talker logits [B, V], with the official processors."""
    allow = allow_eos & (frames >= 2)
    bias = mx.where(allow[:, None], consts.always, consts.early)
    logits = repetition_penalty(logits.astype(mx.float32), seen, penalty) + bias
    code = sample(logits, sampler, seeds, frames, 0, plan)
    return code, seen | (mx.arange(seen.shape[-1])[None] == code[:, None])


class FrameStep:
    """The compiled step of one model. `traces` counts the graphs traced so far."""

    def __init__(self, model):
        self.model = model
        self.traces = 0
        self._compiled = mx.compile(self._step, inputs=[model.talker.state, model.code_predictor.state])

    def __call__(self, consts: StepConstants, state: BatchState, plans: tuple[int, int]):
        """plans: the talker's and the code predictor's sampling plans (sampling.sampling_plan)."""
        return self._compiled(consts, state, plans)

    def _step(self, consts: StepConstants, s: BatchState, plans: tuple[int, int]):
        self.traces += 1  # runs only while tracing
        talker, predictor = self.model.talker, self.model.code_predictor
        dtype = talker.norm.weight.dtype
        code0_vec = talker.codec_embedding(s.code0)[:, None]

        # Code groups 1..15 of the current frame, each predictor step on a fresh 16-slot cache.
        cache = [KVCache() for _ in predictor.layers]
        x = mx.concatenate([s.hidden, code0_vec], axis=1)
        codes, embed_sum = [s.code0], 0
        for g in range(1, len(predictor.lm_head) + 1):
            logits = predictor.step_logits(x, cache, g).astype(mx.float32)  # sample in float32 under bf16
            code = sample(logits, s.predictor, s.seeds, s.frames, g, plans[1])
            x = predictor.codec_embedding[g - 1](code)[:, None]
            embed_sum = embed_sum + x
            codes.append(code)

        # The talker consumes the frame plus the row's next text vector and predicts code 0.
        batch, text_cap = s.trailing.shape[:2]
        text = s.trailing[mx.arange(batch), mx.minimum(s.frames, text_cap - 1)][:, None]
        text = mx.where((s.frames < s.trailing_len)[:, None, None], text, consts.tts_pad)
        positions = s.write - s.left_pad
        caches = [_BufferCache(k, v, s.write, positions) for k, v in zip(s.keys, s.values)]
        slots = mx.arange(s.keys[0].shape[2])[None]
        mask = ((slots >= s.left_pad[:, None]) & (slots <= s.write))[:, None, None, :]
        hidden = talker((code0_vec + embed_sum + text).astype(dtype), caches, mask)
        frames = s.frames + 1
        code0, seen = pick_code0(talker.codec_head(hidden[:, 0]), consts, s.seen, frames, s.penalty,
                                 s.allow_eos, s.talker, s.seeds, plans[0])
        state = s._replace(keys=tuple(c.keys for c in caches), values=tuple(c.values for c in caches),
                           write=s.write + 1, hidden=hidden, code0=code0, seen=seen, frames=frames)
        return mx.stack(codes, axis=1), state
