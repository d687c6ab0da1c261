"""The running batch: rows join (prefilled on their own) and leave between two frame steps.

A live row (text still arriving, engine/live.py) that has used up its text while its input is
open is parked: taken out of the batch with its own slice of the state (KV, codec position, frame
counter, sampler position), so it takes no step and is never fed a pad; it re-joins with that
state, as if no time had passed, once more text has arrived.

`Batch.step()` queues the next compiled frame step, then reads the frames of the step queued
before it: exactly one host sync per frame for the whole batch, and the device always has the
next step to work on while the host applies the stop rules. Stop rules stay on the host, per
row: EOS, the frame cap, the runaway guard, cancellation.
"""

from __future__ import annotations

import math
import random
import time
import warnings
from dataclasses import dataclass, field

import mlx.core as mx
import numpy as np

from mlx_qwen_tts.engine.prompt import Prompt
from mlx_qwen_tts.engine.request import MAX_SEED, GenerationSettings
from mlx_qwen_tts.engine.sampling import SamplerArrays, draw_plan
from mlx_qwen_tts.engine.step import (KV_BLOCK, TEXT_BLOCK, BatchState, capacity_for, pick_code0,
                                      predictor_buffers, step_constants)

FRAME_RATE = 12.5
# Runaway guard. The budget allows ~4x the slowest plausible speech (1 s per text token, on
# top of 4 s); a stuck model repeating at most 3 distinct code-0 ids for 5 s is not speech.
BUDGET_BASE_S, BUDGET_PER_TOKEN_S = 4.0, 1.0
STUCK_WINDOW, STUCK_MAX_DISTINCT = 62, 3


def frame_budget(text_tokens: int) -> int:
    return math.ceil(FRAME_RATE * (BUDGET_BASE_S + BUDGET_PER_TOKEN_S * text_tokens))


@dataclass
class GenerationStats:
    frames: int = 0
    host_syncs: int = 0
    prefill_s: float = 0.0
    first_frame_s: float = 0.0  # from the row's start
    elapsed_s: float = 0.0
    stop_reason: str = ""  # eos | max_frames | runaway_budget | runaway_stuck | cancelled
    runaway: bool = False
    runaway_detail: str = ""  # what the guard saw, for this generation's own report


@dataclass(eq=False)
class Row:
    """One generation in the batch (one text segment of a request)."""

    prompt: Prompt
    settings: GenerationSettings
    owner: object = None  # who receives the frames (the scheduler's job)
    segment: int = 0
    stats: GenerationStats = field(default_factory=GenerationStats)
    done: bool = False
    cancelled: bool = False
    recent: list = field(default_factory=list, repr=False)
    started: float = 0.0
    live: object = None  # engine/live.LiveText: the row's text is still arriving
    steps: int = 0  # frame steps queued for the row

    @property
    def starved(self) -> bool:
        """A live row whose next step would read a text vector that has not arrived yet."""
        return self.live is not None and not self.live.closed and self.steps >= self.live.handed

    @property
    def cap(self) -> int:
        s = self.settings
        return min(s.max_new_tokens, s.max_frames or s.max_new_tokens)

    @property
    def limit(self) -> int:
        """The cap, within the runaway budget from the text: a caller's max_frames lowers the budget,
        never lifts it (only a benchmark that turned EOS off gets exactly max_frames)."""
        s = self.settings
        if s.ignore_eos and s.max_frames:
            return self.cap
        return min(self.cap, frame_budget(self.prompt.text_tokens))


def _pad_axis(x: mx.array, axis: int, before: int, after: int) -> mx.array:
    if before == 0 and after == 0:
        return x
    widths = [(0, 0)] * x.ndim
    widths[axis] = (before, after)
    return mx.pad(x, widths)


def _fit(state: BatchState, write: int, to_write: int, capacity: int, text_cap: int) -> BatchState:
    """Move a state's KV content so it ends at `to_write` within `capacity` slots (left-padding
    grows by the shift) and pad its trailing text to `text_cap`."""
    shift = to_write - write

    def move(x):
        x = _pad_axis(x, 2, shift, 0) if shift >= 0 else x[:, :, -shift:]
        return _pad_axis(x, 2, 0, max(capacity - x.shape[2], 0))[:, :, :capacity]

    return state._replace(keys=tuple(map(move, state.keys)), values=tuple(map(move, state.values)),
                          write=mx.array([to_write], dtype=mx.int32), left_pad=state.left_pad + shift,
                          trailing=_pad_axis(state.trailing, 1, 0, text_cap - state.trailing.shape[1]))


def _concat(a: BatchState, b: BatchState) -> BatchState:
    def cat(x, y):
        if isinstance(x, tuple):
            return type(x)(*map(cat, x, y)) if hasattr(x, "_fields") else tuple(map(cat, x, y))
        return mx.concatenate([x, y], axis=0)

    fields = {name: (getattr(a, name) if name == "write" else cat(getattr(a, name), getattr(b, name)))
              for name in BatchState._fields}
    return BatchState(**fields)


def _take(state: BatchState, index: mx.array) -> BatchState:
    def take(x):
        if isinstance(x, tuple):
            return type(x)(*map(take, x)) if hasattr(x, "_fields") else tuple(map(take, x))
        return x[index]

    return BatchState(**{name: (state.write if name == "write" else take(getattr(state, name)))
                         for name in BatchState._fields})


def _append_text(state: BatchState, index: int, vectors: mx.array, length: int) -> BatchState:
    """Write a row's new trailing text vectors [1, n, H] so that its text ends at `length`."""
    cap = state.trailing.shape[1]
    trailing = _pad_axis(state.trailing, 1, 0, max(capacity_for(length, TEXT_BLOCK) - cap, 0))
    start = mx.array([index, length - vectors.shape[1], 0], dtype=mx.int32)
    trailing = mx.slice_update(trailing, vectors.astype(trailing.dtype), start, axes=(0, 1, 2))
    lengths = mx.slice_update(state.trailing_len, mx.array([length], dtype=mx.int32),
                              mx.array([index], dtype=mx.int32), axes=(0,))
    return state._replace(trailing=trailing, trailing_len=lengths)


def _seed_words(seed: int | None) -> list[int]:
    seed = random.getrandbits(64) if seed is None else seed % (MAX_SEED + 1)
    return [seed & 0xFFFFFFFF, seed >> 32]


class Batch:
    """Rows generating together with the model's one compiled frame step."""

    def __init__(self, model):
        self.model = model
        self.step_fn = model.frame_step
        self.consts = step_constants(model)
        self.rows: list[Row] = []
        self.state: BatchState | None = None
        self.write = 0  # host copy of state.write
        self.left_pads: list[int] = []  # host copy of state.left_pad
        self.inflight: tuple[mx.array, list[Row]] | None = None  # frames of the queued step, its rows
        self.host_syncs = 0
        self.parked: dict[Row, tuple[BatchState, int, int]] = {}  # starved live rows: state, write, left pad

    def __len__(self) -> int:
        return len(self.rows)

    def add(self, row: Row):
        """Prefill `row` on its own and join it to the batch (between two frames)."""
        row.started = time.perf_counter()
        state, length = self._prefill(row)
        row.stats.prefill_s = time.perf_counter() - row.started
        if row.starved:
            self.parked[row] = (state, length, 0)
        else:
            self._join(row, state, length, 0)

    @property
    def idle(self) -> bool:
        """Nothing to step and no frames to read (rows may be parked, waiting for text)."""
        return self.state is None and self.inflight is None

    def _join(self, row: Row, state: BatchState, write: int, left_pad: int):
        """Join a one-row state whose KV holds [left_pad, write) to the batch."""
        length = write - left_pad
        if self.state is None:
            self.state, self.write, self.left_pads = state, write, [left_pad]
        else:
            to_write = max(self.write, length)
            capacity = capacity_for(to_write + 1, KV_BLOCK)
            text_cap = max(self.state.trailing.shape[1], state.trailing.shape[1])
            old = _fit(self.state, self.write, to_write, capacity, text_cap)
            new = _fit(state, write, to_write, capacity, text_cap)
            self.left_pads = [p + to_write - self.write for p in self.left_pads] + [to_write - length]
            self.state, self.write = _concat(old, new), to_write
        self.rows.append(row)

    def _feed_live(self):
        """Live rows: new text vectors into their state; parked rows that got text re-join; rows
        that would read text not yet arrived are parked (before the step is queued)."""
        for row in list(self.parked):
            vectors = row.live.take()
            if vectors is not None:
                state, write, left_pad = self.parked.pop(row)
                self._join(row, _append_text(state, 0, vectors, row.live.handed), write, left_pad)
        for i, row in enumerate(self.rows):
            vectors = row.live.take() if row.live is not None else None
            if vectors is not None:
                self.state = _append_text(self.state, i, vectors, row.live.handed)
        starved = [i for i, row in enumerate(self.rows) if row.starved]
        if not starved:
            return
        for i in starved:
            self.parked[self.rows[i]] = (_take(self.state, mx.array([i])), self.write, self.left_pads[i])
        keep = [i for i in range(len(self.rows)) if i not in starved]
        self.rows = [self.rows[i] for i in keep]
        self.left_pads = [self.left_pads[i] for i in keep]
        self.state = _take(self.state, mx.array(keep)) if keep else None

    def _prefill(self, row: Row) -> tuple[BatchState, int]:
        talker, prompt, s = self.model.talker, row.prompt, row.settings
        dtype = talker.norm.weight.dtype
        cache = talker.make_cache()
        hidden = talker(prompt.embeds.astype(dtype), cache)[:, -1:]
        length = prompt.embeds.shape[1]
        talker_arrays, predictor_arrays = SamplerArrays.of([s.talker]), SamplerArrays.of([s.predictor])
        seeds = mx.array([_seed_words(s.seed)], dtype=mx.uint32)
        penalty = mx.array([s.repetition_penalty], dtype=mx.float32)
        allow_eos = mx.array([not s.ignore_eos])
        frames = mx.zeros((1,), dtype=mx.int32)
        vocab = self.model.config.talker.vocab_size
        code0, seen = pick_code0(talker.codec_head(hidden[:, 0]), self.consts, mx.zeros((1, vocab), mx.bool_),
                                 frames, penalty, allow_eos, talker_arrays, seeds, draw_plan([s.talker]))
        capacity = capacity_for(length + 1, KV_BLOCK)
        keys = tuple(_pad_axis(c.keys[:, :, :length], 2, 0, capacity - length) for c in cache)
        values = tuple(_pad_axis(c.values[:, :, :length], 2, 0, capacity - length) for c in cache)
        trailing = prompt.trailing.astype(dtype)
        text_cap = capacity_for(trailing.shape[1], TEXT_BLOCK)
        state = BatchState(keys=keys, values=values, write=mx.array([length], dtype=mx.int32),
                           left_pad=mx.zeros((1,), dtype=mx.int32), hidden=hidden, code0=code0, seen=seen,
                           frames=frames, trailing=_pad_axis(trailing, 1, 0, text_cap - trailing.shape[1]),
                           trailing_len=mx.array([trailing.shape[1]], dtype=mx.int32), seeds=seeds,
                           talker=talker_arrays, predictor=predictor_arrays, penalty=penalty, allow_eos=allow_eos,
                           **predictor_buffers(self.model, 1))
        mx.async_eval(state)
        return state, length

    def _remove_finished(self):
        for row in [row for row in self.parked if row.done or row.cancelled]:
            del self.parked[row]
            if not row.done:
                self._finish(row, "cancelled")
        keep = [i for i, row in enumerate(self.rows) if not (row.done or row.cancelled)]
        if len(keep) == len(self.rows):
            return
        for row in self.rows:
            if row.cancelled and not row.done:
                self._finish(row, "cancelled")
        self.rows = [self.rows[i] for i in keep]
        self.left_pads = [self.left_pads[i] for i in keep]
        if not keep:
            self.state, self.inflight, self.left_pads = None, None, []
            return
        self.state = _take(self.state, mx.array(keep))

    def _make_room(self):
        """Before a step writes at `write`: shift out common padding or double the capacity."""
        capacity = self.state.keys[0].shape[2]
        if self.write < capacity:
            return
        shift = min(self.left_pads)
        to_write = self.write - shift
        new_cap = capacity if to_write < capacity else capacity_for(to_write + 1, KV_BLOCK)
        self.state = _fit(self.state, self.write, to_write, new_cap, self.state.trailing.shape[1])
        self.left_pads = [p - shift for p in self.left_pads]
        self.write = to_write

    def step(self) -> list[tuple[Row, np.ndarray]]:
        """Advance every row one frame; return the frames (int32 [16]) that became known, with
        their rows. Rows that ended are marked done and leave the batch."""
        self._remove_finished()
        self._feed_live()
        previous, self.inflight = self.inflight, None
        if self.state is not None:
            self._make_room()
            plans = (draw_plan([r.settings.talker for r in self.rows]),
                     draw_plan([r.settings.predictor for r in self.rows]))
            frames, self.state = self.step_fn(self.consts, self.state, plans)
            self.write += 1
            for row in self.rows:
                row.steps += 1
            mx.async_eval(frames, self.state)
            self.inflight = (frames, list(self.rows))
        if previous is None:
            return []
        codes = np.array(previous[0])  # the one host sync of this frame
        self.host_syncs += 1
        out = []
        for row, frame in zip(previous[1], codes):
            if row.done or row.cancelled:
                continue
            row.stats.host_syncs += 1
            if self._advance(row, frame):
                out.append((row, frame))
        return out

    def _advance(self, row: Row, frame: np.ndarray) -> bool:
        """Apply the stop rules to a row's new frame; True if the frame is speech to keep."""
        c0 = int(frame[0])
        if c0 == self.model.config.ids.codec_eos:
            self._finish(row, "eos")
            return False
        stats = row.stats
        if stats.frames == 0:
            stats.first_frame_s = time.perf_counter() - row.started
        stats.frames += 1
        row.recent.append(c0)
        if len(row.recent) >= STUCK_WINDOW and len(set(row.recent[-STUCK_WINDOW:])) <= STUCK_MAX_DISTINCT:
            self._runaway(row, "runaway_stuck", f"code 0 cycled through {len(set(row.recent[-STUCK_WINDOW:]))} "
                          f"values for the last {STUCK_WINDOW} frames")
        elif stats.frames >= row.limit:
            if row.limit == row.cap:
                self._finish(row, "max_frames")
            else:
                self._runaway(row, "runaway_budget", f"no end of speech after {row.limit} frames "
                              f"({row.limit / FRAME_RATE:.0f} s) for {row.prompt.text_tokens} text tokens")
        del row.recent[:-STUCK_WINDOW]
        return True

    def _finish(self, row: Row, reason: str):
        row.done = True
        row.stats.stop_reason = reason
        row.stats.elapsed_s = time.perf_counter() - row.started

    def _runaway(self, row: Row, reason: str, detail: str):
        self._finish(row, reason)
        row.stats.runaway = True
        row.stats.runaway_detail = f"generation ran away and was stopped: {detail}; the audio is likely broken " \
                                   "at the end"
        # Python shows a repeated warning once per place; each request's stats keep their own report.
        where = f"segment {row.segment + 1}: " if row.owner is not None else ""
        warnings.warn(where + row.stats.runaway_detail, RuntimeWarning, stacklevel=2)


def generate_frames(model, prompt: Prompt, settings: GenerationSettings,
                    stats: GenerationStats | None = None):
    """Yield the frames (int32 [16] numpy) of one prompt as they are made: a batch of one row."""
    row = Row(prompt, settings, stats=stats if stats is not None else GenerationStats())
    batch = Batch(model)
    batch.add(row)
    while not row.done:
        for _, frame in batch.step():
            yield mx.array(frame)
