"""Progress that reads well in a terminal and in a log file.

:func:`progress_bar` is a tqdm bar when the output is a terminal; otherwise (a log file, a
pipe, CI) it writes plain lines, no cursor movement: the first step, then about every
``every_s`` seconds, and the last, each as ``desc: i/total (p%) elapsed, eta``. Set
``PYRO_PRUNE_PROGRESS=bar`` or ``=lines`` to force one or the other, ``=off`` to silence both.
"""

from __future__ import annotations

import enum
import math
import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import IO, Any, TypeVar

__all__ = ["ProgressStyle", "plain_lines", "progress_bar", "progress_style"]

T = TypeVar("T")
ENV = "PYRO_PRUNE_PROGRESS"


class ProgressStyle(enum.Enum):
    """How progress is shown (``$PYRO_PRUNE_PROGRESS``; ``auto`` by default)."""

    AUTO = "auto"  # a bar on a terminal, lines elsewhere
    BAR = "bar"
    LINES = "lines"
    OFF = "off"


def progress_style(stream: IO[str] | None = None) -> ProgressStyle:
    """The style in force for ``stream`` (default ``sys.stderr``)."""
    raw = os.environ.get(ENV, "auto").strip().lower() or "auto"
    try:
        style = ProgressStyle(raw)
    except ValueError:
        raise ValueError(f"{ENV} must be one of {[s.value for s in ProgressStyle]}, got {raw!r}") from None
    if style is not ProgressStyle.AUTO:
        return style
    stream = stream if stream is not None else sys.stderr
    isatty = getattr(stream, "isatty", None)
    return ProgressStyle.BAR if callable(isatty) and isatty() else ProgressStyle.LINES


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60}:{seconds % 60:02d}" if seconds < 3600 else \
        f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def plain_lines(iterable: Iterable[T], *, desc: str, total: int | None = None,
                every_s: float = 10.0, stream: IO[str] | None = None) -> Iterator[T]:
    """Yield from ``iterable``, writing a plain progress line at the first item, about every
    ``every_s`` seconds and at the end."""
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)  # type: ignore[arg-type]
    out = stream if stream is not None else sys.stderr
    start = last = time.perf_counter()
    i = 0

    def line(done: int) -> None:
        elapsed = time.perf_counter() - start
        if total:
            eta = elapsed / done * (total - done) if done else math.nan
            text = (f"{desc}: {done}/{total} ({100 * done / total:.0f}%) {_clock(elapsed)} elapsed"
                    + (f", {_clock(eta)} left" if done and done < total else ""))
        else:
            text = f"{desc}: {done} {_clock(elapsed)} elapsed"
        print(text, file=out, flush=True)

    for i, item in enumerate(iterable, 1):
        yield item
        now = time.perf_counter()
        if i == 1 or now - last >= every_s or (total is not None and i == total):
            line(i)
            last = now
    if total is None or i != total:
        line(i)


class _Lines:
    """A tqdm-like object (``update``, ``set_postfix``, ``close``) that writes plain lines."""

    def __init__(self, desc: str, total: int | None, every_s: float, stream: IO[str] | None) -> None:
        self.desc, self.total, self.every_s = desc, total, every_s
        self.stream = stream if stream is not None else sys.stderr
        self.n = 0
        self.postfix = ""
        self._start = self._last = time.perf_counter()
        self._closed = False
        self._updates = 0

    def _line(self) -> None:
        elapsed = time.perf_counter() - self._start
        done = f"{self.n}/{self.total} ({100 * self.n / self.total:.0f}%)" if self.total else f"{self.n}"
        post = f" {self.postfix}" if self.postfix else ""
        print(f"{self.desc}: {done} {_clock(elapsed)} elapsed{post}", file=self.stream, flush=True)
        self._last = time.perf_counter()

    def update(self, n: int = 1) -> None:
        self.n += n
        self._updates += 1
        if self._updates == 1 or time.perf_counter() - self._last >= self.every_s or self.n == self.total:
            self._line()

    def set_postfix(self, ordered_dict: Any = None, refresh: bool = True, **kwargs: Any) -> None:
        items = {**(dict(ordered_dict) if ordered_dict else {}), **kwargs}
        self.postfix = " ".join(f"{k}={v}" for k, v in items.items())

    def set_description(self, desc: str | None = None, refresh: bool = True) -> None:
        if desc:
            self.desc = desc

    def write(self, text: str) -> None:
        print(text, file=self.stream, flush=True)

    def close(self) -> None:
        if not self._closed and self._updates and self.n != self.total:
            self._line()
        self._closed = True

    def __iter__(self) -> Iterator[Any]:
        raise TypeError("iterate over progress_bar(iterable, ...) instead")

    def __enter__(self) -> _Lines:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class _Off:
    n = 0

    def update(self, n: int = 1) -> None:
        self.n += n

    def set_postfix(self, *args: Any, **kwargs: Any) -> None:
        pass

    def set_description(self, *args: Any, **kwargs: Any) -> None:
        pass

    def write(self, text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    def close(self) -> None:
        pass

    def __enter__(self) -> _Off:
        return self

    def __exit__(self, *exc: Any) -> None:
        pass


def progress_bar(iterable: Iterable[T] | None = None, *, desc: str, total: int | None = None,
                 initial: int = 0, enabled: bool = True, leave: bool = False,
                 every_s: float = 10.0, stream: IO[str] | None = None) -> Any:
    """Progress over ``iterable`` (an iterator is returned) or, with ``iterable=None``, a
    handle with ``update(n)``, ``set_postfix(...)`` and ``close()`` (``total`` steps).

    A tqdm bar on a terminal, plain lines elsewhere (see the module docstring); nothing when
    ``enabled`` is false.
    """
    style = progress_style(stream) if enabled else ProgressStyle.OFF
    if style is ProgressStyle.BAR:
        from tqdm.auto import tqdm

        return tqdm(iterable, desc=desc, total=total, initial=initial, leave=leave, file=stream)
    if style is ProgressStyle.OFF:
        return iter(iterable) if iterable is not None else _Off()
    if iterable is not None:
        return plain_lines(iterable, desc=desc, total=total, every_s=every_s, stream=stream)
    bar = _Lines(desc, total, every_s, stream)
    bar.n = initial
    return bar
