"""How long work shows how far it got: one display for training runs and evaluation passes.

    with ProgressDisplay(enabled=True) as display:
        display.start("arc_easy 0-shot", total=len(requests))   # a bar per pass
        ... display.advance(n) ...
        display.update(completed, info="step 40 | loss 2.1")  # or set the position and a status text
        display.message("step 40: val loss 2.05")             # a line printed above the bars

On a terminal it draws rich progress bars; elsewhere (a log file, a pipe, a test) it prints only
the messages and the status lines asked for with `log_line=True`. It is a context manager: leaving
the `with` block, normally or by an exception, stops the bars and gives the terminal its cursor
back. A disabled display does nothing, so callers never need a second, silent kind.
"""

from __future__ import annotations

import sys
from typing import Any, TextIO

__all__ = ["ProgressDisplay"]


class ProgressDisplay:
    """Progress bars on a terminal, plain lines otherwise (see module docstring).

    `stream` is where bars and messages go (default: standard output, read when the display is
    made); pass `sys.stderr` to keep standard output clean for results.
    """

    def __init__(self, enabled: bool = True, stream: TextIO | None = None) -> None:
        self.enabled = enabled
        self.stream = stream if stream is not None else sys.stdout
        self._bars: Any = None  # rich.progress.Progress while bars are drawn
        self._task: Any = None
        self._counted = False
        if enabled and self.stream.isatty():
            from rich.console import Console
            from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn

            self._bars = Progress(TextColumn("[bold]{task.description}"), BarColumn(), TaskProgressColumn(),
                                  TextColumn("{task.fields[info]}"), console=Console(file=self.stream), transient=False)
            self._bars.start()

    @property
    def drawing(self) -> bool:
        """Whether bars are on screen (a terminal, and not closed yet)."""
        return self._bars is not None

    def start(self, description: str, total: float = 1.0, counted: bool = False) -> None:
        """Begin a new bar (the previous one stays on screen, finished or not). A `counted` bar
        shows "done/total" items beside its percentage."""
        if self._bars is not None:
            self._task = self._bars.add_task(description, total=total, info="")
            self._counted = counted

    def advance(self, n: float = 1) -> None:
        """`n` more items done (counted bars show them as "done/total")."""
        if self._bars is not None and self._task is not None:
            self._bars.advance(self._task, n)
            if self._counted:
                task = self._bars.tasks[-1]
                self._bars.update(self._task, info=f"{task.completed:.0f}/{task.total:.0f}")

    def update(self, completed: float, info: str = "", log_line: bool = False) -> None:
        """Move the current bar to `completed` with a status text; without bars, print the text
        as a line when `log_line`."""
        if not self.enabled:
            return
        if self._bars is not None:
            if self._task is not None:
                self._bars.update(self._task, completed=completed, info=info)
        elif log_line and info:
            print(info, file=self.stream, flush=True)

    def message(self, text: str) -> None:
        """A line of text (above the bars on a terminal)."""
        if not self.enabled:
            return
        if self._bars is not None:
            self._bars.console.print(text, markup=False, highlight=False)
        else:
            print(text, file=self.stream, flush=True)

    def close(self) -> None:
        """Stop the bars and restore the terminal's cursor; safe to call twice."""
        if self._bars is not None:
            bars, self._bars, self._task = self._bars, None, None
            bars.stop()

    def __enter__(self) -> "ProgressDisplay":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
