"""One model, one worker thread, a bounded FIFO queue of jobs.

A request becomes a Job: its work runs on the worker thread (generation is blocking NumPy and
runtime calls) and sends events back to the request's event loop. ``submit`` refuses a job with a
503 once ``max_queue`` jobs already wait behind the running one. ``Job.cancel`` (the client went
away) makes a waiting job be skipped and a running one stop at its next piece.
"""

from __future__ import annotations

import asyncio
import math
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from edgegen.serve.errors import ApiError


@dataclass(frozen=True)
class Failed:
    """The work raised: the error, as the job's last event."""

    error: BaseException


END = object()  # a job's final event


class Job:
    """One request's work and the channel its events come back on."""

    def __init__(self, work: Callable[[Job], None], loop: asyncio.AbstractEventLoop) -> None:
        self.work = work
        self._loop = loop
        self._events: asyncio.Queue[Any] = asyncio.Queue()
        self._cancelled = threading.Event()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def cancel(self) -> None:
        self._cancelled.set()

    def emit(self, event: Any) -> None:
        """Send an event to the request (called on the worker thread)."""
        try:
            self._loop.call_soon_threadsafe(self._events.put_nowait, event)
        except RuntimeError:  # the event loop is gone (server shutting down): nobody is listening
            self.cancel()

    async def next(self) -> Any:
        return await self._events.get()


class Engine:
    """Runs jobs one at a time, in arrival order, on one worker thread."""

    def __init__(self, max_queue: int) -> None:
        if max_queue < 0:
            raise ValueError("max_queue must be >= 0")
        self.max_queue = max_queue
        self._jobs: queue.Queue[Job | None] = queue.Queue()
        self._lock = threading.Lock()
        self._pending = 0  # waiting + running
        self._running: Job | None = None
        self._mean_s = 1.0  # moving average of a job's duration (Retry-After)
        self.completed = 0
        self.cancelled = 0  # jobs stopped or skipped because their client went away
        self._thread: threading.Thread | None = None

    def submit(self, work: Callable[[Job], None]) -> Job:
        """Queue ``work``; a 503 ApiError (with Retry-After) when the queue is full."""
        job = Job(work, asyncio.get_running_loop())
        with self._lock:
            if self._pending > self.max_queue:
                wait = max(1, math.ceil(self._mean_s * self._pending))
                raise ApiError(503, f"the server is busy ({self._pending - 1} requests queued, the limit is "
                               f"{self.max_queue}); retry later", kind="server_error", code="server_busy",
                               headers={"Retry-After": str(wait)})
            self._pending += 1
            if self._thread is None:
                self._thread = threading.Thread(target=self._serve, name="edgegen-serve-worker", daemon=True)
                self._thread.start()
        self._jobs.put(job)
        return job

    def state(self) -> dict[str, Any]:
        with self._lock:
            running = self._running is not None
            return {"running": running, "queued": self._pending - running,
                    "max_queue": self.max_queue, "completed": self.completed, "cancelled": self.cancelled}

    def close(self) -> None:
        """Stop the worker: the running job stops at its next piece, jobs still waiting are cancelled."""
        with self._lock:
            thread, self._thread = self._thread, None
            if self._running is not None:
                self._running.cancel()
        if thread is not None:
            while True:
                try:
                    waiting = self._jobs.get_nowait()
                except queue.Empty:
                    break
                if waiting is not None:
                    waiting.cancel()
                    waiting.emit(END)
            self._jobs.put(None)
            thread.join(timeout=30)

    def _serve(self) -> None:
        while (job := self._jobs.get()) is not None:
            start = time.perf_counter()
            with self._lock:
                self._running = job
            try:
                if not job.cancelled:
                    job.work(job)
            except Exception as e:  # delivered to the request, which answers with an error
                job.emit(Failed(e))
            finally:
                with self._lock:
                    self._running = None
                    self._pending -= 1
                    self.cancelled += job.cancelled
                    self.completed += not job.cancelled
                    self._mean_s = 0.8 * self._mean_s + 0.2 * (time.perf_counter() - start)
                job.emit(END)
