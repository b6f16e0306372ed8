"""A small progress bar with rate and ETA: redrawn in place on a terminal, a few plain lines in logs.

tqdm is not on every GPU machine we use, and the science library keeps its dependencies minimal.
"""

from __future__ import annotations

import sys
import time


class Progress:
    def __init__(self, total: int, desc: str, unit: str = "it", stream=None, every_s: float = 0.5):
        self.total, self.desc, self.unit = max(int(total), 1), desc, unit
        self.stream = stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.every_s = every_s if self.tty else 30.0  # logs and CI get a line every 30 s at most
        self.start = self.last = time.perf_counter()
        self.done = 0
        self.postfix = ""

    def update(self, n: int = 1, postfix: str = "") -> None:
        self.done += n
        if postfix:
            self.postfix = postfix
        now = time.perf_counter()
        if now - self.last >= self.every_s or self.done >= self.total:
            self.last = now
            self._draw(now)

    def _draw(self, now: float) -> None:
        elapsed = now - self.start
        rate = self.done / elapsed if elapsed > 0 else 0.0
        eta = (self.total - self.done) / rate if rate > 0 else float("inf")
        frac = min(self.done / self.total, 1.0)
        bar = "#" * int(frac * 20) + "-" * (20 - int(frac * 20))
        line = (f"{self.desc} [{bar}] {self.done}/{self.total} {rate:,.1f} {self.unit}/s "
                f"elapsed {_fmt(elapsed)} eta {_fmt(eta)} {self.postfix}").rstrip()
        if self.tty:
            end = "\n" if self.done >= self.total else ""
            self.stream.write("\r\033[K" + line + end)
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.done < self.total and self.tty:
            self.stream.write("\n")


def _fmt(seconds: float) -> str:
    if seconds == float("inf"):
        return "?"
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"
