"""The engine plus small MLX jobs (voice encoding, voice checks) run on the engine's own thread.

MLX is not safe for concurrent evaluation from two threads, and the engine's thread does all
MLX work; so instead of a lock that would hold generation off, a job is queued and the engine
thread runs it between two frames (running rows pause for that long, nothing else changes).

This stands outside `mlx_qwen_tts/engine` on purpose: it wakes the engine through its inbox
(a `None` item, which the engine takes as "nothing new") and runs jobs from `_take_new`, which
the engine calls before every frame and when it wakes up. An `Engine.call` in the engine itself
would be the clean home for it.
"""

from __future__ import annotations

import queue
from concurrent.futures import Future

from mlx_qwen_tts.engine.scheduler import Engine


class ServingEngine(Engine):
    def __init__(self, model, max_batch: int = 8, max_queue: int | None = None):
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        super().__init__(model, max_batch=max_batch, max_queue=max_queue)

    def call(self, fn, *args) -> Future:
        """Run `fn(*args)` on the engine thread; the future holds its result or exception."""
        future: Future = Future()
        if self._closed.is_set():
            future.set_exception(RuntimeError("the engine is closed"))
            return future
        self._jobs.put((future, fn, args))
        self._inbox.put(None)  # wakes an idle engine
        return future

    def _run_jobs(self):
        while True:
            try:
                future, fn, args = self._jobs.get_nowait()
            except queue.Empty:
                return
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn(*args))
            except BaseException as e:  # handed to the caller
                future.set_exception(e)

    def _take_new(self, block: bool):
        self._run_jobs()
        super()._take_new(block)
        self._run_jobs()

    def close(self, timeout: float | None = None):
        super().close(timeout)
        while True:
            try:
                future, _, _ = self._jobs.get_nowait()
            except queue.Empty:
                return
            if future.set_running_or_notify_cancel():
                future.set_exception(RuntimeError("the engine is closed"))
