"""The frame step: one compiled function that advances every row of a batch by one 80 ms frame.

`FrameStep(model)(consts, state) -> (frames [B, 16], state)` finishes each row's current frame
(code groups 1..15 from the code predictor, sampled with the row's own settings), feeds the
frame plus the row's next text vector to the talker, and samples code 0 of the next frame. It
is device work only (no host reads), and every per-row value, sampler settings included, is an
array of the state: one traced graph per (batch size, KV capacity, text capacity) serves every
mix of settings. The talker's KV cache is a fixed-capacity buffer shared by all rows: rows step
together, so they write at one position, and a row with a shorter history is left-padded (the
layout of mlx-lm's BatchKVCache, whose Python-indexed update cannot be traced at a fixed shape).

Kernel economy (a frame is ~100 sequential one-position layer calls, so on a GPU the kernel
count sets the pace; bench/frame_kernels.py counts them): the talker's KV write is one scatter
at the shared slot; the code predictor's 16-position cache is a buffer carried in the state and
overwritten every frame (no fresh zero-filled cache); the predictor's sampling noise is hashed
once per frame for all groups; the draws skip the work no row needs (sampling.DrawPlan).
"""

from __future__ import annotations

from typing import NamedTuple

import mlx.core as mx
import numpy as np

from mlx_qwen_tts.engine.sampling import (GREEDY, DrawPlan, SamplerArrays, code0_bias, noise_table,
                                          repetition_penalty, sample)

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
    predictor_keys: tuple  # per predictor layer [B, kv heads, 16, head dim]: rewritten every frame
    predictor_values: tuple


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


def predictor_buffers(model, batch: int) -> dict:
    """The code predictor's per-frame KV buffers of a new state (BatchState fields)."""
    c = model.config.code_predictor
    shape = (batch, c.num_key_value_heads, model.config.num_code_groups, c.head_dim)
    dtype = model.code_predictor.norm.weight.dtype
    keys = tuple(mx.zeros(shape, dtype) for _ in model.code_predictor.layers)
    return dict(predictor_keys=keys, predictor_values=tuple(mx.zeros(shape, dtype) for _ in keys))


class _BufferCache:
    """The cache interface mlx-lm's attention uses, over a fixed buffer written at one slot
    (`slot`: the write position broadcast to a written key's shape): one scatter (put_along_axis)
    per write, the same values slice_update at an array offset writes with two kernels on Metal."""

    def __init__(self, keys, values, slot, positions):
        self.keys, self.values, self.slot, self.offset = keys, values, slot, positions

    def update_and_fetch(self, keys, values):
        self.keys = mx.put_along_axis(self.keys, self.slot, keys, axis=2)
        self.values = mx.put_along_axis(self.values, self.slot, values, axis=2)
        return self.keys, self.values


class _FrameCache:
    """The code predictor's cache for one frame over a carried buffer: positions written in order
    from 0 (static slots, one scatter each); only the positions written this frame are read."""

    def __init__(self, keys, values):
        self.keys, self.values, self.offset = keys, values, 0

    def update_and_fetch(self, keys, values):
        end = self.offset + keys.shape[2]
        slots = np.broadcast_to(np.arange(self.offset, end, dtype=np.int32)[:, None], keys.shape)
        slots = mx.array(slots)  # a constant of the traced graph
        self.keys = mx.put_along_axis(self.keys, slots, keys, axis=2)
        self.values = mx.put_along_axis(self.values, slots, values, axis=2)
        self.offset = end
        return self.keys[:, :, :end], self.values[:, :, :end]


def pick_code0(logits: mx.array, consts: StepConstants, seen, frames, penalty, allow_eos, sampler, seeds,
               plan: DrawPlan):
    """Code 0 of frame `frames` per row from talker logits [B, V], with the official processors."""
    allow = allow_eos & (frames >= 2)
    bias = mx.where(allow[:, None], consts.always, consts.early)
    logits = repetition_penalty(logits.astype(mx.float32), seen, penalty) + bias
    code = sample(logits, sampler, seeds, frames, 0, plan.candidates, top_p=plan.top_p,
                  greedy_rows=plan.greedy_rows)
    return code, seen | (mx.arange(seen.shape[-1])[None] == code[:, None])


class FrameStep:
    """The compiled step of one model. `traces` counts the graphs traced so far."""

    def __init__(self, model):
        self.model = model
        self.traces = 0
        self._compiled = mx.compile(self._step, inputs=[model.talker.state, model.code_predictor.state])

    def __call__(self, consts: StepConstants, state: BatchState, plans: tuple[DrawPlan, DrawPlan]):
        """plans: the talker's and the code predictor's draw plans (sampling.draw_plan)."""
        return self._compiled(consts, state, plans)

    def _step(self, consts: StepConstants, s: BatchState, plans: tuple[DrawPlan, DrawPlan]):
        self.traces += 1  # runs only while tracing
        talker, predictor = self.model.talker, self.model.code_predictor
        dtype = talker.norm.weight.dtype
        code0_vec = talker.codec_embedding(s.code0)[:, None]

        # Code groups 1..15 of the current frame, the predictor's cache rewritten from position 0.
        cache = [_FrameCache(k, v) for k, v in zip(s.predictor_keys, s.predictor_values)]
        x = mx.concatenate([s.hidden, code0_vec], axis=1)
        codes, embed_sum = [s.code0], 0
        groups, plan = len(predictor.lm_head), plans[1]
        noise = None if plan.candidates == GREEDY else noise_table(s.seeds, s.frames, groups,
                                                                   self.model.config.code_predictor.vocab_size)
        for g in range(1, groups + 1):
            logits = predictor.step_logits(x, cache, g)  # sample() casts to float32 where it is exact
            code = sample(logits, s.predictor, s.seeds, s.frames, g, plan.candidates, top_p=plan.top_p,
                          greedy_rows=plan.greedy_rows, noise=None if noise is None else noise[:, g - 1])
            x = predictor.codec_embedding[g - 1](code)[:, None]
            embed_sum = embed_sum + x
            codes.append(code)

        # The talker consumes the frame plus the row's next text vector and predicts code 0.
        batch, text_cap = s.trailing.shape[:2]
        text = s.trailing[mx.arange(batch), mx.minimum(s.frames, text_cap - 1)][:, None]
        text = mx.where((s.frames < s.trailing_len)[:, None, None], text, consts.tts_pad)
        positions = s.write - s.left_pad
        _, kv_heads, _, head_dim = s.keys[0].shape
        slot = mx.broadcast_to(s.write.reshape(1, 1, 1, 1), (batch, kv_heads, 1, head_dim))  # shared by all layers
        caches = [_BufferCache(k, v, slot, positions) for k, v in zip(s.keys, s.values)]
        slots = mx.arange(s.keys[0].shape[2])[None]
        mask = ((slots >= s.left_pad[:, None]) & (slots <= s.write))[:, None, None, :]
        hidden = talker((code0_vec + embed_sum + text).astype(dtype), caches, mask)
        frames = s.frames + 1
        code0, seen = pick_code0(talker.codec_head(hidden[:, 0]), consts, s.seen, frames, s.penalty,
                                 s.allow_eos, s.talker, s.seeds, plans[0])
        state = s._replace(keys=tuple(c.keys for c in caches), values=tuple(c.values for c in caches),
                           write=s.write + 1, hidden=hidden, code0=code0, seen=seen, frames=frames,
                           predictor_keys=tuple(c.keys for c in cache), predictor_values=tuple(c.values for c in cache))
        return mx.stack(codes, axis=1), state
