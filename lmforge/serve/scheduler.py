"""Continuous batching: one thread owns the Engine and shares its decode steps among requests.

Requests (`Job`s, one sequence per choice) are admitted between steps into free KV-cache rows,
every step advances all running sequences at once, and finished or abandoned sequences leave at
once, freeing their rows for the next request. The engine is not thread-safe; only this thread
calls `add`, `step` and `release`. Results travel to the asyncio side as events on each job's
`asyncio.Queue` (via `loop.call_soon_threadsafe`).

Capacity is counted in sequences: a job needing more rows than are free is refused at once
(`busy` -> HTTP 429) instead of waiting in a queue, so a client always learns where it stands.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from dataclasses import dataclass, field
from typing import Any

import torch

from lmforge.infer.engine import Constraint, Engine, Sequence, TokenLogprob
from lmforge.infer.sampling import SamplingParams
from lmforge.serve.errors import APIError, busy, invalid, server_error

log = logging.getLogger("lmforge.serve")


# Events a job receives, in order: Delta* / Finished per choice, then exactly one Done or Failed.
@dataclass
class Delta:
    choice: int
    text: str
    logprobs: list[TokenLogprob]


@dataclass
class Finished:
    choice: int
    finish_reason: str
    completion_tokens: int


@dataclass
class Done:
    pass


@dataclass
class Failed:
    error: APIError


@dataclass(eq=False)
class Job:
    """One request: a prompt, sampling parameters and optional constraint per choice."""

    prompts: list[list[int]]
    params: list[SamplingParams]
    constraints: list[Constraint | None]
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)
    cancelled: bool = False
    # Scheduler-thread state.
    seqs: dict[int, Sequence] = field(default_factory=dict)
    sent_logprobs: dict[int, int] = field(default_factory=dict)
    open_choices: int = 0
    closed: bool = False

    @property
    def size(self) -> int:
        return len(self.prompts)

    def cancel(self) -> None:
        """Called from the event loop when the client goes away; the scheduler frees the rows."""
        self.cancelled = True

    def _post(self, event: Any) -> None:
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, event)
        except RuntimeError:  # the event loop is closed: nobody is listening any more
            self.cancelled = True


class Scheduler:
    """Runs the engine in a background thread; `submit` jobs from any thread."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.capacity = engine.max_batch_size
        self._cond = threading.Condition()
        self._pending: list[Job] = []
        self._jobs: list[Job] = []  # admitted, still generating (scheduler thread only)
        self._reserved = 0  # rows promised to submitted, unfinished jobs
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.steps = 0

    # -- any thread ----------------------------------------------------------------------------
    @property
    def in_use(self) -> int:
        return self._reserved

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="lmforge-scheduler", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None

    def submit(self, job: Job) -> None:
        """Reserve rows for `job` and queue it; raises APIError 429 when they are not free."""
        if job.size > self.capacity:
            raise invalid(f"this request needs {job.size} sequences but the server runs at most {self.capacity} at once", "n")
        with self._cond:
            if self._stopping:
                raise APIError(503, "the server is shutting down", type="server_error", code="shutting_down")
            if self._reserved + job.size > self.capacity:
                raise busy(self.capacity)
            self._reserved += job.size
            self._pending.append(job)
            self._cond.notify_all()

    # -- scheduler thread ----------------------------------------------------------------------
    def _run(self) -> None:
        # Inference mode for everything this thread does with the engine (its tensors are inference tensors).
        with torch.inference_mode():
            while True:
                with self._cond:
                    while not self._pending and not self._jobs and not self._stopping:
                        self._cond.wait()
                    if self._stopping:
                        break
                    pending, self._pending = self._pending, []
                try:
                    self._admit(pending)
                    self._drop_cancelled()
                    self._emit()
                    if self.engine.active:
                        self.engine.step()
                        self.steps += 1
                except Exception as exc:  # a bug, not a bad request: fail what is running, keep serving
                    log.exception("scheduler step failed")
                    error = server_error(f"generation failed: {type(exc).__name__}")
                    self._fail_all(error)
                    for job in pending:  # taken off the queue but not admitted: answer them too
                        self._close(job, Failed(error))
            self._fail_all(APIError(503, "the server is shutting down", type="server_error", code="shutting_down"))
            for job in self._pending:
                self._close(job, Failed(APIError(503, "the server is shutting down", type="server_error")))

    def _admit(self, jobs: list[Job]) -> None:
        """Check every new job's sequences (a bad request fails alone), then prefill them all together."""
        joining = []
        for job in jobs:
            if job.cancelled:
                self._close(job, None)
                continue
            try:
                seqs = [self.engine.prepare(prompt, params, constraint)
                        for prompt, params, constraint in zip(job.prompts, job.params, job.constraints)]
            except ValueError as exc:  # e.g. the prompt does not fit the context
                self._close(job, Failed(invalid(str(exc))))
                continue
            except Exception as exc:  # a fault (e.g. out of memory) fails this request, not the queue behind it
                log.exception("preparing a request failed")
                self._close(job, Failed(server_error(f"generation failed: {type(exc).__name__}")))
                continue
            for choice, seq in enumerate(seqs):
                job.seqs[choice] = seq
                job.sent_logprobs[choice] = 0
            job.open_choices = job.size
            self._jobs.append(job)  # before the prefill, so that a failure there reaches the job
            joining += seqs
        self.engine.admit(joining)

    def _drop_cancelled(self) -> None:
        for job in [j for j in self._jobs if j.cancelled]:
            self._release(job)
            self._jobs.remove(job)
            self._close(job, None)

    def _emit(self) -> None:
        """Hand out new text of every sequence; retire the finished ones."""
        for job in list(self._jobs):
            for choice, seq in list(job.seqs.items()):
                delta = seq.take_delta()
                new_logprobs: list[TokenLogprob] = []
                if seq.logprobs is not None:
                    sent = job.sent_logprobs[choice]
                    new_logprobs = seq.logprobs[sent:]
                    job.sent_logprobs[choice] = sent + len(new_logprobs)
                if delta or new_logprobs:
                    job._post(Delta(choice, delta, new_logprobs))
                if seq.finished:
                    self.engine.release(seq)
                    del job.seqs[choice]
                    job._post(Finished(choice, seq.finish_reason or "stop", len(seq.token_ids)))
                    job.open_choices -= 1
            if job.open_choices == 0:
                self._jobs.remove(job)
                self._close(job, Done())

    def _release(self, job: Job) -> None:
        for seq in job.seqs.values():
            self.engine.release(seq)
        job.seqs.clear()

    def _close(self, job: Job, event: Any) -> None:
        """Free the job's rows (before telling the client, so its next request finds them free)."""
        if job.closed:
            return
        job.closed = True
        with self._cond:
            self._reserved -= job.size
        if event is not None:
            job._post(event)

    def _fail_all(self, error: APIError) -> None:
        for job in self._jobs:
            job.seqs.clear()
            self._close(job, Failed(error))
        self._jobs.clear()
        for seq in list(self.engine.active):
            self.engine.release(seq)
