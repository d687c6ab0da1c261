"""`Engine`: continuous batching as a long-lived service (the server uses it).

One background thread owns the scheduler and all MLX work; `submit`, `cancel` and `call` are
thread-safe. Requests join the running batch at the next frame and leave it when they end.
"""

from __future__ import annotations

import atexit
import queue
import threading
from concurrent.futures import Future

import mlx.core as mx

from mlx_qwen_tts.engine.request import make_request
from mlx_qwen_tts.engine.scheduler import END, Scheduler, Synthesis


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
        self._lock = threading.Lock()
        self._waiting = 0  # submitted, no row yet (inbox + scheduler)
        self._active_rows = 0
        self._closed = threading.Event()
        self._device = mx.default_device()
        self._thread = threading.Thread(target=self._run, name="mlx-qwen-tts-engine", daemon=True)
        self._thread.start()
        atexit.register(self.close)  # a live MLX thread at interpreter exit aborts the process

    @property
    def max_batch(self) -> int:
        return self._scheduler.max_batch

    @property
    def active_rows(self) -> int:
        """Rows generating now (as of the last frame)."""
        return self._active_rows

    @property
    def queued(self) -> int:
        return self._waiting

    def submit(self, text: str, **kwargs) -> Synthesis:
        if self._closed.is_set():
            raise RuntimeError("the engine is closed")
        stats = kwargs.pop("stats", None)
        request = make_request(self.model.config, text, **kwargs)
        with self._lock:
            if self.max_queue is not None and self._waiting >= self.max_queue:
                raise QueueFull(f"{self._waiting} requests are already waiting")
            self._waiting += 1
        synthesis = Synthesis(request, stats)
        self._inbox.put(synthesis)
        return synthesis

    def warm_up(self):
        """Trace the frame step for every batch size up to max_batch, on the engine's thread
        (a server does this before it reports ready); returns when done."""
        self.call(self._scheduler.warm_up).result()

    def call(self, fn, *args) -> Future:
        """Run `fn(*args)` on the engine's thread between two frames (MLX work that must not run
        beside generation, e.g. encoding a reference voice); the future holds its result."""
        future: Future = Future()
        if self._closed.is_set():
            future.set_exception(RuntimeError("the engine is closed"))
            return future
        self._calls.put((future, fn, args))
        self._inbox.put(None)  # wakes an idle engine
        return future

    def close(self, timeout: float | None = None):
        """Stop: every unfinished request and call is cancelled; waits for the thread."""
        atexit.unregister(self.close)
        self._closed.set()
        self._inbox.put(None)
        self._thread.join(timeout)
        self._run_calls(closed=True)

    def _run_calls(self, closed: bool = False):
        """Run the queued calls (or, once closed, fail them)."""
        while True:
            try:
                future, fn, args = self._calls.get_nowait()
            except queue.Empty:
                return
            if not future.set_running_or_notify_cancel():
                continue
            if closed:
                future.set_exception(RuntimeError("the engine is closed"))
                continue
            try:
                future.set_result(fn(*args))
            except BaseException as e:  # handed to the caller
                future.set_exception(e)

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
            self._take_new(block=not scheduler.busy)  # idle: sleep until a request arrives
            if scheduler.busy and not self._closed.is_set():
                try:
                    scheduler.run_once()
                except Exception as e:  # a fault of the whole batch: end its requests, keep serving
                    scheduler.fail_all(e)
            with self._lock:
                self._waiting = scheduler.waiting + self._inbox.qsize()
            self._active_rows = sum(1 for row in scheduler.batch.rows if not (row.done or row.cancelled))
        for job in list(scheduler.jobs):
            job.synthesis.cancelled = True
            scheduler._fail(job, None)
        while True:  # requests that arrived while closing
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                return
            if item is not None:
                item.cancelled = item.finished = True
                item.push(END)

    def _take_new(self, block: bool):
        self._run_calls()
        try:
            item = self._inbox.get(block=block)
        except queue.Empty:
            return
        self._run_calls()
        while item is not None:
            self._scheduler.submit(item)
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                return
