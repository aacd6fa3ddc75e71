"""The one progress display: bars on a terminal (closed even when the work raises), lines elsewhere."""

from __future__ import annotations

import io

import pytest

from lmforge.core.progress import ProgressDisplay

SHOW_CURSOR = "\x1b[?25h"
HIDE_CURSOR = "\x1b[?25l"


class Terminal(io.StringIO):
    """A stream that says it is a terminal, so rich draws live bars into it."""

    def isatty(self) -> bool:
        return True


def test_without_a_terminal_only_messages_and_log_lines_are_printed():
    stream = io.StringIO()
    with ProgressDisplay(stream=stream) as display:
        display.start("work", 10, counted=True)
        display.advance(3)
        display.update(0.5, "half way")  # a status text without log_line stays off the log
        display.update(0.6, "step 6 | loss 1.0", log_line=True)
        display.message("val loss 0.9")
        assert not display.drawing
    assert stream.getvalue() == "step 6 | loss 1.0\nval loss 0.9\n"


def test_a_disabled_display_writes_nothing():
    stream = Terminal()
    with ProgressDisplay(enabled=False, stream=stream) as display:
        display.start("work", 4, counted=True)
        display.advance()
        display.update(1.0, "done", log_line=True)
        display.message("hello")
    assert stream.getvalue() == ""


def test_terminal_bars_count_items_and_give_the_cursor_back():
    stream = Terminal()
    with ProgressDisplay(stream=stream) as display:
        assert display.drawing
        display.start("arc_easy 0-shot", 4, counted=True)
        display.advance(2)
        display.advance(2)
        display.message("a line above the bars")
    assert not display.drawing
    text = stream.getvalue()
    assert text.rfind(SHOW_CURSOR) > text.rfind(HIDE_CURSOR) >= 0
    assert "4/4" in text and "arc_easy 0-shot" in text and "a line above the bars" in text
    display.close()  # closing twice is harmless


def test_an_exception_inside_the_block_still_stops_the_bars():
    stream = Terminal()
    with pytest.raises(RuntimeError, match="boom"):
        with ProgressDisplay(stream=stream) as display:
            display.start("pretrain")
            display.update(0.3, "step 3")
            raise RuntimeError("boom")
    assert not display.drawing
    text = stream.getvalue()
    assert text.rfind(SHOW_CURSOR) > text.rfind(HIDE_CURSOR) >= 0  # the cursor is visible again
