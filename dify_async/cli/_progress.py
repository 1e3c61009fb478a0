"""Progress on standard error: a tqdm bar, a counter, or periodic lines."""

from __future__ import annotations

import contextlib
import importlib
import time
from typing import Any, Final, Literal, TextIO

__all__ = ["Progress"]

_BAR_REFRESH: Final = 0.1
_LINE_REPORT_EVERY: Final = 5.0


def _isatty(stream: TextIO) -> bool:
    isatty = getattr(stream, "isatty", None)
    return bool(isatty is not None and isatty())


class Progress:
    """Shows how many rows are done while a batch runs.

    On a terminal it is a tqdm bar when tqdm is installed (the ``cli``
    extra), else a counter updated in place; off a terminal, a line at every
    tenth of the work and at least every five seconds. Messages (failures,
    retries) are printed above it without garbling it.

    Args:
        total: How many rows there are, when known.
        enabled: Whether to show anything but messages.
        stream: Where to show it.
    """

    def __init__(self, total: int | None, *, enabled: bool, stream: TextIO) -> None:
        self.total = total
        self.done = 0
        self.failed = 0
        self._stream = stream
        self._bar: Any = None
        self._tqdm: Any = None
        self._last = time.monotonic()
        self._last_decile = 0
        self._mode: Literal["bar", "counter", "lines", "off"] = "off"
        if not enabled:
            return
        if _isatty(stream):
            self._mode = "counter"
            with contextlib.suppress(ImportError):
                self._tqdm = importlib.import_module("tqdm")
                self._bar = self._tqdm.tqdm(
                    total=total,
                    desc="renaming",
                    unit=" conv",
                    file=stream,
                    dynamic_ncols=True,
                )
                self._mode = "bar"
        else:
            self._mode = "lines"

    def advance(self, *, failed: bool = False) -> None:
        """Count one finished row.

        Args:
            failed: Whether it failed.
        """
        self.done += 1
        if failed:
            self.failed += 1
        if self._mode == "bar":
            self._bar.update(1)
            if failed:
                self._bar.set_postfix(failed=self.failed)
        elif self._mode == "counter":
            now = time.monotonic()
            if now - self._last >= _BAR_REFRESH or self.done == self.total:
                self._last = now
                self._stream.write("\r\x1b[K" + self._status())
                self._stream.flush()
        elif self._mode == "lines":
            self._maybe_line()

    def _maybe_line(self) -> None:
        now = time.monotonic()
        decile = self.done * 10 // self.total if self.total else 0
        if decile > self._last_decile or now - self._last >= _LINE_REPORT_EVERY:
            self._last_decile = decile
            self._last = now
            self._stream.write(f"progress: {self._status()}\n")
            self._stream.flush()

    def _status(self) -> str:
        done = f"{self.done:,}"
        if self.total:
            done += f"/{self.total:,} ({self.done * 100 // self.total}%)"
        return f"{done} done, {self.failed:,} failed"

    def message(self, text: str) -> None:
        """Print a line without garbling the progress display.

        Args:
            text: The line, without its end.
        """
        if self._mode == "bar":
            self._tqdm.tqdm.write(text, file=self._stream)
            return
        if self._mode == "counter":
            self._stream.write("\r\x1b[K" + text + "\n" + self._status())
        else:
            self._stream.write(text + "\n")
        self._stream.flush()

    def close(self) -> None:
        """Leave the display in its final state; harmless twice."""
        if self._mode == "bar":
            self._bar.close()
        elif self._mode == "counter":
            self._stream.write("\r\x1b[K" + self._status() + "\n")
        elif self._mode == "lines" and self._last_decile < 10:  # noqa: PLR2004
            self._stream.write(f"progress: {self._status()}\n")
        self._stream.flush()
        self._mode = "off"
