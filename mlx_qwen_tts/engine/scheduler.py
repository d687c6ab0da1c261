"""Continuous batching: requests become rows of one running batch, and their frames become audio.

A request's text segments are rows of the batch (so a chapter takes about as long as its longest
sentences); its audio is decoded in segment order by its own streaming codec state, so the
concatenated chunks equal one causal decode of all its codes. `Scheduler` is single-threaded
(`synthesize`, `stream` and `synthesize_batch` drive it directly); `Engine` (engine/service.py)
owns one in a background thread that does all MLX work, for long-lived use (the server).
"""

from __future__ import annotations

import itertools
import queue
import time
from dataclasses import dataclass, field

import mlx.core as mx
import numpy as np

from mlx_qwen_tts.engine.generate import Batch, Row
from mlx_qwen_tts.engine.prompt import Prompt, build_prompt
from mlx_qwen_tts.engine.request import GenerationSettings, Request, resolve_clone

END = object()  # the last item of a Synthesis's chunk queue


@dataclass
class SynthesisStats:
    frames: int = 0
    segments: int = 0
    segment_frames: list = field(default_factory=list)  # frames of each finished segment, in order
    audio_s: float = 0.0
    elapsed_s: float = 0.0
    first_audio_s: float | None = None  # time to first audio chunk, from submission
    frames_before_first_audio: int = 0
    prefill_s: float = 0.0
    host_syncs: int = 0
    peak_memory_gb: float = 0.0
    stop_reasons: list = field(default_factory=list)  # per segment spoken, in order
    runaway: bool = False
    runaways: list = field(default_factory=list)  # one report per runaway segment of this request
    events: list | None = field(default=None, repr=False)  # ("frame" | "chunk", count) in order, if asked

    @property
    def rtf(self) -> float:
        """Real-time factor: synthesis time / audio duration (below 1 is faster than real time)."""
        return self.elapsed_s / self.audio_s if self.audio_s else float("inf")

    @property
    def frames_per_s(self) -> float:
        return self.frames / self.elapsed_s if self.elapsed_s else 0.0


class Synthesis:
    """A submitted request: iterate it for float32 audio chunks as they are made."""

    live = None  # engine/live.LiveText when the text arrives while the synthesis runs (LiveSynthesis)

    def __init__(self, request: Request, stats: SynthesisStats | None = None, codes_out: list | None = None):
        self.request = request
        self.stats = stats if stats is not None else SynthesisStats()
        self.codes_out = codes_out  # receives every frame (int32 [16]) in order, if given
        self.chunks: queue.SimpleQueue = queue.SimpleQueue()
        self.cancelled = False
        self.finished = False
        self.error: BaseException | None = None
        self.submitted = time.perf_counter()
        self.prepared: Prepared | None = None  # the voice set-up, if made before submission (Engine)
        self.on_chunk = None  # called (on the engine's thread) after each new chunk and at the end

    def push(self, item):
        """Hand a chunk (or END) to the consumer and wake it."""
        self.chunks.put(item)
        if self.on_chunk is not None:
            try:
                self.on_chunk()
            except Exception:  # a consumer that went away (a closed event loop) is not our failure
                pass

    def cancel(self):
        """Stop generating; the rows are freed before the next frame."""
        self.cancelled = True

    def ready(self) -> tuple[list[np.ndarray], bool]:
        """The chunks made so far (without waiting) and whether the synthesis has ended."""
        chunks = []
        while True:
            try:
                item = self.chunks.get_nowait()
            except queue.Empty:
                return chunks, False
            if item is END:
                return chunks, True
            chunks.append(item)

    def __iter__(self):
        while True:
            item = self.chunks.get()
            if item is END:
                break
            yield item
        if self.error is not None:
            raise self.error


@dataclass
class Prepared:
    """A request's MLX set-up before its first row: its voice clone, and the codec state to decode
    its audio from (in-context cloning primes it with the reference, whose audio is dropped)."""

    clone: object
    codec_state: object


def prepare(model, request: Request) -> Prepared:
    """Encode the reference or read the voice file, and prime the codec: evaluated here, so a
    thread other than the one generating can do it (Engine)."""
    clone = resolve_clone(model, request)
    state = model.codec.make_state()
    if clone is not None and clone.ref_codes is not None:
        _, state = model.codec(clone.ref_codes[None], state)
    mx.eval(clone.xvector if clone is not None else None, state)
    return Prepared(clone, state)


@dataclass(eq=False)
class _Job:
    """A request's progress inside the scheduler."""

    synthesis: Synthesis
    order: int
    clone: object = None
    codec_state: object = None
    next_segment: int = 0  # next segment to get a row
    out_segment: int = 0  # segment whose frames are being decoded
    rows: dict = field(default_factory=dict)  # segment -> Row
    frames: dict = field(default_factory=dict)  # segment -> frames not yet decoded
    pending: list = field(default_factory=list)  # frames of out_segment waiting for a chunk
    chunks: list = field(default_factory=list)  # full chunks (lists of frames) waiting for the codec
    decoded: int = 0  # chunks decoded so far
    delivered: int = 0  # frames taken into `pending` (the request's max_frames counts these)
    end: int = 0  # segments to speak: all of them, unless max_frames cut the request short
    complete: bool = False  # every frame is in `chunks` or decoded

    @property
    def request(self) -> Request:
        return self.synthesis.request


class Scheduler:
    """Admits rows up to `max_batch`, steps the batch, decodes and delivers audio."""

    def __init__(self, model, max_batch: int = 8):
        if model.codec is None:
            raise ValueError("this model was loaded without its codec; load it with codec=True")
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        self.model, self.max_batch = model, max_batch
        self.batch = Batch(model)
        self.jobs: list[_Job] = []
        self._order = itertools.count()

    @property
    def busy(self) -> bool:
        return bool(self.jobs)

    @property
    def waiting_for_text(self) -> bool:
        """Nothing can run until a live input gets text (every row parked, nothing to admit)."""
        if not self.busy or not self.batch.idle:
            return False
        if len(self.batch.parked) >= self.max_batch:
            return True
        return not any(job.next_segment < job.end and (job.synthesis.live is None or job.synthesis.live.ready)
                       for job in self.jobs)

    @property
    def waiting(self) -> int:
        """Requests that have no row in the batch yet."""
        return sum(1 for job in self.jobs if job.next_segment == 0)

    def warm_up(self, sizes=None):
        """Trace the frame step for every batch size up to max_batch (default sampling settings),
        so a request joining a batch of a size not seen yet does not wait for a compile."""
        pad = self.batch.consts.tts_pad
        prompt = Prompt(embeds=mx.repeat(pad, 4, axis=1), trailing=pad, tts_pad=pad, text_tokens=1)
        settings = GenerationSettings.from_config(self.model.config.generation, ignore_eos=True, max_frames=2,
                                                  seed=0)
        for size in sizes or range(1, self.max_batch + 1):
            batch = Batch(self.model)
            for _ in range(size):
                batch.add(Row(prompt, settings))
            while batch.rows:
                batch.step()

    def submit(self, synthesis: Synthesis):
        self.jobs.append(_Job(synthesis, next(self._order), end=len(synthesis.request.segments)))

    def run_once(self):
        """One frame for every row: admissions, the step, stop rules, audio out."""
        self._drop_cancelled()
        for job in [job for job in self.jobs if job.synthesis.live is not None]:
            try:
                job.synthesis.pump(self.model)
            except Exception as e:  # a failed text source, an idle input: this request only
                self._fail(job, e)
        self._admit()
        for row, frame in self.batch.step():
            row.owner.frames[row.segment].append(frame)
        for job in list(self.jobs):
            try:
                self._deliver(job)
            except Exception as e:  # a failure ends that request only
                self._fail(job, e)
        self._decode_chunks()

    def _drop_cancelled(self):
        for job in list(self.jobs):
            if job.synthesis.cancelled:
                for row in job.rows.values():
                    row.cancelled = True
                self._close(job)

    def _admit(self):
        """Free rows go to pending segments: earlier segments first, then older requests, so a
        new request's first sentence is not stuck behind a long text's later ones. Every first
        segment joins at once; a later one (generated ahead) only on a frame when nothing else
        joins, so prefills of text still far off never delay the first audio. With no free row,
        a new request takes one from a request generating ahead of what it has delivered. A live
        request starts once it has enough text (engine/live.py); its parked row keeps its slot."""
        rows = self.batch.rows + list(self.batch.parked)
        free = self.max_batch - sum(1 for row in rows if not (row.done or row.cancelled))
        admitted = 0
        while True:
            candidates = [job for job in self.jobs if job.next_segment < job.end
                          and (job.synthesis.live is None or job.synthesis.live.ready)]
            job = min(candidates, key=lambda j: (j.next_segment, j.order), default=None)
            if job is None or (job.next_segment > 0 and admitted):
                return
            if free <= 0:
                if job.next_segment > 0 or not self._preempt():
                    return
                free += 1
            admitted += 1
            try:
                self._start_segment(job)
            except Exception as e:  # bad reference audio, a broken voice file: this request only
                self._fail(job, e)
                continue
            free -= 1

    def _preempt(self) -> bool:
        """Free the row of the furthest-ahead segment of the request holding the most rows, if any
        request is generating a segment beyond the one it is delivering. That segment starts again
        later from its prompt (its frames were not delivered; seeded rows repeat exactly)."""
        def ahead(job):
            row = job.rows.get(job.next_segment - 1)
            return row is not None and not (row.done or row.cancelled) and row.segment > job.out_segment

        victims = [job for job in self.jobs if ahead(job)]
        if not victims:
            return False
        job = max(victims, key=lambda j: (len(j.rows), j.order))
        segment = job.next_segment - 1
        job.rows.pop(segment).cancelled = True
        del job.frames[segment]
        job.next_segment = segment
        return True

    def _start_segment(self, job: _Job):
        request, index, live = job.request, job.next_segment, job.synthesis.live
        if index == 0:
            prepared = job.synthesis.prepared or prepare(self.model, request)
            job.clone, job.codec_state = prepared.clone, prepared.codec_state
        prompt = live.start(self.model, request, job.clone) if live is not None else build_prompt(
            self.model, request.segments[index], voice=request.voice, language=request.language,
            instruct=request.instruct, non_streaming_text=request.non_streaming_text, clone=job.clone)
        row = Row(prompt, request.segment_settings(index), owner=job, segment=index, live=live)
        job.next_segment += 1
        job.rows[index], job.frames[index] = row, []
        self.batch.add(row)
        job.synthesis.stats.prefill_s += row.stats.prefill_s

    def _deliver(self, job: _Job):
        """Move finished and current-segment frames into chunks, in segment order."""
        synthesis, request = job.synthesis, job.request
        while job.out_segment in job.rows:
            segment = job.out_segment
            row = job.rows[segment]
            for frame in job.frames[segment]:
                job.pending.append(frame)
                job.delivered += 1
                if synthesis.stats.events is not None:
                    synthesis.stats.events.append(("frame", synthesis.stats.frames + len(job.pending)))
                if synthesis.codes_out is not None:
                    synthesis.codes_out.append(frame)
                size = request.first_chunk_frames if not (job.decoded or job.chunks) else request.chunk_frames
                if len(job.pending) >= size:
                    job.chunks.append(job.pending)
                    job.pending = []
                if job.delivered == request.settings.max_frames:
                    self._stop_at_max_frames(job, row)
                    break
            job.frames[segment] = []
            if not row.done:
                return
            self._segment_done(job, row)
            job.out_segment += 1
        if job.out_segment == job.end:
            if job.pending:
                job.chunks.append(job.pending)
                job.pending = []
            job.complete = True

    def _stop_at_max_frames(self, job: _Job, row: Row):
        """The request's max_frames counts every segment: the one delivering ends here, the rest
        are not spoken (rows generating ahead are freed)."""
        if not row.done or job.end > row.segment + 1:
            row.stats.stop_reason = "max_frames"
        row.done = True
        for segment in list(job.rows):
            if segment != row.segment:
                job.rows.pop(segment).cancelled = True
                del job.frames[segment]
        job.next_segment = job.end = row.segment + 1

    def _segment_done(self, job: _Job, row: Row):
        stats = job.synthesis.stats
        stats.segments += 1
        stats.segment_frames.append(row.stats.frames)
        stats.host_syncs += row.stats.host_syncs
        stats.stop_reasons.append(row.stats.stop_reason)
        stats.runaway |= row.stats.runaway
        if row.stats.runaway:
            stats.runaways.append(f"segment {row.segment + 1}: {row.stats.runaway_detail}")
        del job.rows[row.segment], job.frames[row.segment]

    def _decode_chunks(self):
        """Decode every job's ready chunks in order. Chunks of jobs whose codec states are at the
        same position and of the same length are one batched codec call (the weights are read
        once for all of them; their states have the same shapes)."""
        while True:
            ready = [job for job in self.jobs if job.chunks]
            if not ready:
                break
            groups = {}
            for job in ready:
                groups.setdefault((job.codec_state.offset, len(job.chunks[0])), []).append(job)
            for group in groups.values():
                try:
                    self._decode_group(group)
                except Exception as e:  # a codec failure ends these requests only
                    for job in group:
                        self._fail(job, e)
        for job in list(self.jobs):
            if job.complete and not job.chunks:
                self._close(job)

    def _decode_group(self, group: list[_Job]):
        codes = mx.array(np.stack([np.stack(job.chunks[0]) for job in group]))  # [G, T, 16]
        state = stack_states([job.codec_state for job in group])
        wav, state = self.model.codec(codes, state)
        audio = np.array(wav, dtype=np.float32)
        for i, job in enumerate(group):
            job.codec_state = row_of(state, i) if len(group) > 1 else state
            self._emit(job, job.chunks.pop(0), audio[i])

    def _emit(self, job: _Job, chunk: list, audio: np.ndarray):
        stats = job.synthesis.stats
        if stats.first_audio_s is None:
            stats.first_audio_s = time.perf_counter() - job.synthesis.submitted
            stats.frames_before_first_audio = stats.frames + len(chunk)
        stats.frames += len(chunk)
        stats.audio_s += len(audio) / self.model.sample_rate
        if stats.events is not None:
            stats.events.append(("chunk", len(chunk)))
        job.decoded += 1
        job.synthesis.push(audio)

    def fail_all(self, error: BaseException | None):
        """End every request (with `error`, or as cancelled) and start from an empty batch."""
        for job in list(self.jobs):
            job.synthesis.cancelled = error is None
            self._fail(job, error)
        self.batch = Batch(self.model)

    def _fail(self, job: _Job, error: BaseException | None):
        for row in job.rows.values():
            row.cancelled = True
        job.synthesis.error = error
        self._close(job)

    def _close(self, job: _Job):
        if job in self.jobs:
            self.jobs.remove(job)
        synthesis = job.synthesis
        synthesis.stats.elapsed_s = time.perf_counter() - synthesis.submitted
        synthesis.stats.peak_memory_gb = mx.get_peak_memory() / 1e9
        synthesis.finished = True
        synthesis.push(END)


def stack_states(states: list):
    """Codec states of several requests (same position, same shapes) as one batch state."""
    first = states[0]
    if isinstance(first, mx.array):
        return mx.concatenate(states, axis=0)
    if isinstance(first, tuple):
        parts = [stack_states([s[i] for s in states]) for i in range(len(first))]
        return type(first)(*parts) if hasattr(first, "_fields") else tuple(parts)
    return first  # None, or the shared integer position


def row_of(state, i: int):
    if isinstance(state, mx.array):
        return state[i:i + 1]
    if isinstance(state, tuple):
        parts = [row_of(part, i) for part in state]
        return type(state)(*parts) if hasattr(state, "_fields") else tuple(parts)
    return state
