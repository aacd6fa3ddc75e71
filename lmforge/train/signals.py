"""Stopping cleanly on SIGTERM/SIGINT, and a training clock that excludes pauses."""

from __future__ import annotations

import contextlib
import signal
import time
from collections.abc import Iterator
from typing import Any

from lmforge.train.distributed import DistInfo, agree_any


class StopSignals:
    """SIGTERM and SIGINT set a flag instead of killing the process; the loop saves and exits.

    A second SIGINT restores Python's default behaviour (KeyboardInterrupt), for an impatient Ctrl-C.
    """

    def __init__(self) -> None:
        self.received: str | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "StopSignals":
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: signals stay as they are
                pass
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.received is not None and signum == signal.SIGINT:
            signal.signal(signal.SIGINT, signal.default_int_handler)
        self.received = signal.Signals(signum).name

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def requested(self, dist: DistInfo) -> bool:
        """True on all ranks once any rank got a signal (torchrun forwards SIGTERM to every rank)."""
        return agree_any(self.received is not None, dist)


class TrainClock:
    """Seconds spent training: `with clock.paused():` around evaluation, sampling and saving.

    While paused the clock stands still, so records written during an evaluation carry the
    training time at which it started.
    """

    def __init__(self, already: float = 0.0) -> None:
        self._offset = already
        self._started = time.perf_counter()
        self._paused = 0.0
        self._pause_began: float | None = None

    @property
    def seconds(self) -> float:
        now = self._pause_began if self._pause_began is not None else time.perf_counter()
        return self._offset + now - self._started - self._paused

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        if self._pause_began is not None:  # already paused: nested pauses change nothing
            yield
            return
        self._pause_began = time.perf_counter()
        try:
            yield
        finally:
            self._paused += time.perf_counter() - self._pause_began
            self._pause_began = None
