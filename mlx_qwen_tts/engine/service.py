"""`Engine`: continuous batching as a long-lived service (the server uses it).

One background thread owns the scheduler and generates; `submit`, `cancel`, `call` and
`call_aside` are thread-safe. Requests join the running batch at the next frame and leave it when
they end. A second thread, with its own MLX stream, does the set-up that would otherwise pause
every stream for longer than a frame: encoding reference recordings, reading voice files, priming
the codec with a reference, registering voices. Its results are evaluated before they are handed
over, so no lazy graph crosses threads (MLX >= 0.31.2 allows one stream per thread).
"""

from __future__ import annotations

import atexit
import queue
import threading
import time
from concurrent.futures import Future

import mlx.core as mx

from mlx_qwen_tts.engine.live import DEFAULT_IDLE_TIMEOUT_S, LiveSynthesis, make_live_request
from mlx_qwen_tts.engine.request import make_request
from mlx_qwen_tts.engine.scheduler import END, Scheduler, Synthesis, prepare


class QueueFull(RuntimeError):
    """The engine's waiting queue is full; try again later."""


class Engine:
    """Continuous batching in a background thread that owns all MLX work.

    `submit` (thread-safe) validates a request and returns a `Synthesis` at once; its rows join
    the running batch at the next frame. `cancel()` frees them within one frame.
    """

    def __init__(self, model, max_batch: int = 8, max_queue: int | None = None):
        self.model, self.max_queue = model, max_queue
        self._scheduler = Scheduler(model, max_batch)
        # A lazy array belongs to the stream of the thread that made it, and the engine's thread
        # has its own: build and evaluate here the voice-clone encoders it may use.
        if model.config.model_type == "base":
            from mlx_qwen_tts.voice import model_fingerprint

            model_fingerprint(model)
        self._calls: queue.SimpleQueue = queue.SimpleQueue()
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        self._aside: queue.SimpleQueue = queue.SimpleQueue()  # Synthesis to prepare, or (future, fn, args)
        self._lock = threading.Lock()
        self._waiting = 0  # submitted, no row yet (being prepared + inbox + scheduler)
        self._in_inbox = 0  # requests (not wake-ups) in the inbox
        self._preparing = 0
        self._active_rows = 0
        self._idle, self._turn = True, time.monotonic()  # for lag_s
        self._closed = threading.Event()
        self._device = mx.default_device()
        self._thread = threading.Thread(target=self._run, name="mlx-qwen-tts-engine", daemon=True)
        self._aside_thread = threading.Thread(target=self._run_aside, name="mlx-qwen-tts-prepare", daemon=True)
        self._thread.start()
        self._aside_thread.start()
        atexit.register(self.close)  # a live MLX thread at interpreter exit aborts the process

    @property
    def max_batch(self) -> int:
        return self._scheduler.max_batch

    @property
    def lag_s(self) -> float:
        """Seconds since the engine's thread last came round its loop (a turn: calls, then a frame
        or a prefill); 0 while it waits for work. A large value means a stuck engine (/health)."""
        return 0.0 if self._idle else time.monotonic() - self._turn

    @property
    def active_rows(self) -> int:
        """Rows generating now, or paused for live text (as of the last frame)."""
        return self._active_rows

    @property
    def queued(self) -> int:
        return self._waiting

    def submit(self, text: str, **kwargs) -> Synthesis:
        if self._closed.is_set():
            raise RuntimeError("the engine is closed")
        stats = kwargs.pop("stats", None)
        return self._enqueue(Synthesis(make_request(self.model.config, text, **kwargs), stats))

    def open_text_stream(self, *, idle_timeout: float | None = DEFAULT_IDLE_TIMEOUT_S, stats=None, codes_out=None,
                         **kwargs) -> LiveSynthesis:
        """A synthesis whose text arrives while it runs (engine/live.py): call `feed(text)` from
        any thread as the text is written, then `finish()`; iterate the handle for audio chunks.
        Same keywords as `submit` except the text (and the layout, always the streaming one)."""
        request = make_live_request(self.model.config, **kwargs)
        synthesis = LiveSynthesis(request, self.model.tokenizer, stats, codes_out, idle_timeout)
        synthesis.on_input = lambda: self._inbox.put(None)  # wakes an engine waiting for text
        return self._enqueue(synthesis)

    def _enqueue(self, synthesis: Synthesis) -> Synthesis:
        if self._closed.is_set():
            raise RuntimeError("the engine is closed")
        with self._lock:
            if self.max_queue is not None and self._waiting >= self.max_queue:
                raise QueueFull(f"{self._waiting} requests are already waiting")
            self._waiting += 1
            request = synthesis.request
            cloning = request.clone is not None or request.ref_audio is not None or request.voice_file is not None
            self._preparing += cloning
            self._in_inbox += not cloning
        (self._aside if cloning else self._inbox).put(synthesis)
        return synthesis

    def warm_up(self):
        """Trace the frame step for every batch size up to max_batch, on the engine's thread
        (a server does this before it reports ready); returns when done."""
        self.call(self._scheduler.warm_up).result()

    def call(self, fn, *args) -> Future:
        """Run `fn(*args)` on the engine's thread between two frames (MLX work that must see no
        generation in flight, e.g. tracing); the future holds its result. Every stream waits for it."""
        future = self._queue_call(self._calls, fn, args)
        self._inbox.put(None)  # wakes an idle engine
        return future

    def call_aside(self, fn, *args) -> Future:
        """Run `fn(*args)` on the side thread, beside generation (streams do not pause): MLX work
        such as encoding or checking a voice. Evaluate what it returns (mx.eval) before returning it."""
        return self._queue_call(self._aside, fn, args)

    def _queue_call(self, calls: queue.SimpleQueue, fn, args) -> Future:
        future: Future = Future()
        if self._closed.is_set():
            future.set_exception(RuntimeError("the engine is closed"))
        else:
            calls.put((future, fn, args))
        return future

    def close(self, timeout: float | None = None):
        """Stop: every unfinished request and call is cancelled; waits for the threads."""
        atexit.unregister(self.close)
        self._closed.set()
        self._inbox.put(None)
        self._thread.join(timeout)
        self._aside.put(None)
        self._aside_thread.join(timeout)
        self._run_calls(self._calls, closed=True)
        self._run_calls(self._aside, closed=True)
        self._cancel_inbox()  # handed over by the side thread after the engine stopped

    @staticmethod
    def _run_calls(calls: queue.SimpleQueue, closed: bool = False):
        """Run the queued calls (or, once closed, fail them and cancel the requests to prepare)."""
        while True:
            try:
                item = calls.get_nowait()
            except queue.Empty:
                return
            if isinstance(item, Synthesis):
                _cancel(item)
            elif item is not None:
                _run_call(*item, closed=closed)

    def _run_aside(self):
        with mx.stream(mx.new_stream(self._device)):
            while True:
                item = self._aside.get()
                if item is None:
                    break
                if isinstance(item, Synthesis):
                    self._prepare(item)
                else:
                    _run_call(*item, closed=self._closed.is_set())
            mx.synchronize()
        mx.clear_streams()

    def _prepare(self, synthesis: Synthesis):
        """Encode the voice of a cloning request, then hand it to the engine's thread."""
        try:
            if not (synthesis.cancelled or self._closed.is_set()):
                synthesis.prepared = prepare(self.model, synthesis.request)
        except Exception as e:  # bad reference audio, a broken voice file: this request only
            synthesis.error = e
            _cancel(synthesis, cancelled=False)
        with self._lock:
            self._preparing -= 1
            self._in_inbox += not synthesis.finished
        self._inbox.put(None if synthesis.finished else synthesis)  # None: wakes the engine to recount

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc):
        self.close()

    def _run(self):
        # MLX streams belong to a thread: this one gets its own on the model's device.
        with mx.stream(mx.new_stream(self._device)):
            self._serve()
            self._scheduler.batch = None
            mx.synchronize()
        mx.clear_streams()  # a thread's streams left to process exit make MLX abort

    def _serve(self):
        scheduler = self._scheduler
        while not self._closed.is_set():
            # idle, or every row waits for live text: sleep until a request or text arrives
            self._take_new(block=not scheduler.busy or scheduler.waiting_for_text,
                           timeout=1.0 if scheduler.busy else None)  # the timeout runs the idle-input check
            if scheduler.busy and not self._closed.is_set():
                try:
                    scheduler.run_once()
                except Exception as e:  # a fault of the whole batch: end its requests, keep serving
                    scheduler.fail_all(e)
            with self._lock:
                self._waiting = scheduler.waiting + self._in_inbox + self._preparing
            rows = scheduler.batch.rows + list(scheduler.batch.parked)  # a parked live row keeps its slot
            self._active_rows = sum(1 for row in rows if not (row.done or row.cancelled))
        for job in list(scheduler.jobs):
            job.synthesis.cancelled = True
            scheduler._fail(job, None)
        self._cancel_inbox()

    def _cancel_inbox(self):
        """Requests that arrived while closing."""
        while True:
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                return
            if item is not None:
                _cancel(item)

    def _take_new(self, block: bool, timeout: float | None = None):
        self._run_calls(self._calls)
        self._idle = block  # waiting for work is not a stuck turn
        try:
            item = self._inbox.get(block=block, timeout=timeout)
        except queue.Empty:
            return
        finally:
            self._idle, self._turn = False, time.monotonic()
        self._run_calls(self._calls)
        while True:  # every request in the inbox joins now; wake-ups (None) only woke us
            if item is not None:
                with self._lock:
                    self._in_inbox -= 1
                self._scheduler.submit(item)
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                return


def _run_call(future: Future, fn, args, closed: bool):
    if not future.set_running_or_notify_cancel():
        return
    if closed:
        future.set_exception(RuntimeError("the engine is closed"))
        return
    try:
        future.set_result(fn(*args))
    except BaseException as e:  # handed to the caller
        future.set_exception(e)


def _cancel(synthesis: Synthesis, cancelled: bool = True):
    """End a request that gets no row: as cancelled, or with its error set."""
    synthesis.cancelled, synthesis.finished = cancelled, True
    synthesis.push(END)
