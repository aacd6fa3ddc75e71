"""PNG plots without pyplot: a standalone `matplotlib.figure.Figure`, saved atomically.

pyplot keeps global state (a current figure, a chosen backend); a library that calls it, or
`matplotlib.use`, changes the caller's notebook or GUI. A `Figure` made directly renders with the
Agg canvas on `savefig` and is freed like any object, so plotting here leaves the caller alone.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from lmforge.core.files import replace_atomically

__all__ = ["new_figure", "save_figure"]


def new_figure(width: float, height: float, dpi: int = 110) -> tuple[Any, Any]:
    """(figure, axes): a standalone figure of `width` x `height` inches with one set of axes."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=dpi)
    return figure, figure.subplots()


def save_figure(figure: Any, path: str | os.PathLike) -> Path:
    """Lay out `figure` and write it to `path` (format from the suffix) atomically; returns the path."""
    figure.tight_layout()
    return replace_atomically(path, figure.savefig)
