"""Progress on the terminal, and plain lines where there is none.

On a terminal, a tqdm bar counts the finished units (tasks, steps) and its postfix says what is
happening now (``group 2/5 · train step 12/50 · 20,439 tok/s · budget left 3m12s``), redrawn at most
``every`` seconds. Where stderr is not a terminal (a pipe, a log file, a notebook's captured output,
``script``), no carriage returns and no blank lines: a plain line when asked for (a finished task),
at the end, and otherwise at most one line per ``plain_every`` seconds.
"""
from __future__ import annotations

import sys
import time
from typing import Optional, TextIO


class Progress:
    """Progress of ``total`` units (``initial`` already done).

    ``update(n)`` marks units finished; ``status(text)`` says what is in progress (shown with the
    count); ``close()`` ends the display. ``stream`` defaults to stderr; ``tty`` overrides the
    terminal detection (for tests)."""

    def __init__(self, total: int, initial: int = 0, desc: str = "", unit: str = "it",
                 stream: Optional[TextIO] = None, tty: Optional[bool] = None, every: float = 0.5,
                 plain_every: float = 30.0, clock=time.monotonic):
        self.total, self.done, self.desc, self.unit = int(total), int(initial), desc, unit
        self.stream = stream if stream is not None else sys.stderr
        if tty is None:
            isatty = getattr(self.stream, "isatty", None)
            tty = bool(isatty and isatty())
        self.tty, self.every, self.plain_every, self.clock = tty, every, plain_every, clock
        self.text = ""
        self._shown = -float("inf")
        self._bar = None
        if tty:
            from tqdm import tqdm

            self._bar = tqdm(total=self.total, initial=self.done, unit=unit, desc=desc, file=self.stream,
                             dynamic_ncols=True, mininterval=every)

    def _line(self) -> str:
        head = f"{self.desc}: " if self.desc else ""
        return f"{head}{self.done}/{self.total} {self.unit}" + (f" · {self.text}" if self.text else "")

    def status(self, text: str, force: bool = False) -> None:
        """What is in progress now; shown at most every ``every`` (terminal) or ``plain_every``
        seconds (plain lines) unless ``force``."""
        self.text = text
        now = self.clock()
        if self._bar is not None:
            if force or now - self._shown >= self.every:
                self._bar.set_postfix_str(text, refresh=True)
                self._shown = now
            else:
                self._bar.set_postfix_str(text, refresh=False)
        elif force or now - self._shown >= self.plain_every:
            self._print()

    def update(self, n: int = 1, text: Optional[str] = None, force: bool = False) -> None:
        """``n`` more units finished. As plain lines: shown when ``force`` (a finished task is
        news), at the last unit, or when ``plain_every`` seconds have passed (a training step is
        not)."""
        self.done += int(n)
        if text is not None:
            self.text = text
        if self._bar is not None:
            self._bar.update(int(n))
            self._bar.set_postfix_str(self.text, refresh=False)
        elif force or self.done >= self.total or self.clock() - self._shown >= self.plain_every:
            self._print()

    def _print(self) -> None:
        print(self._line(), file=self.stream, flush=True)
        self._shown = self.clock()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


__all__ = ["Progress"]
