"""Live download progress on an interactive terminal; nothing at all anywhere else.

`RichProgress` implements the engines' `core.progress.Progress`: it is told what happens (chunks
started and done, bytes as they arrive, a batch job's state) and never looks at the disk.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

REFRESH_S = 0.5


def wants_progress(quiet: bool, json_logs: bool) -> bool:
    """Only for a person watching a real terminal."""
    return (
        sys.stdout.isatty()
        and not quiet
        and not json_logs
        and os.environ.get("TERM", "") not in {"", "dumb"}
    )


@dataclass
class Bar:
    """One product's line: its display task and the bytes it was told of."""

    task: int
    began: float = field(default_factory=time.monotonic)
    done_bytes: int = 0  # of the finished parts
    arriving_bytes: int = 0  # received for parts not finished yet

    @property
    def size(self) -> int:
        return self.done_bytes + self.arriving_bytes


class RichProgress:
    """Per product: chunks done/total, bytes (finished parts + parts arriving), rate, ETA.

    Bytes are counted as the engines receive them, so the display moves during a chunk, not
    only between chunks; a finished part's bytes replace what was counted for it as it came.
    """

    def __init__(self) -> None:
        self._display: Any = None  # rich is imported only once there is something to show
        self._bars: dict[str, Bar] = {}
        self._waiting: dict[str, int] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, name="progress", daemon=True)

    def _show(self) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )
        from rich.progress import Progress as RichDisplay

        self._display = RichDisplay(
            TextColumn("{task.description:<6}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[unit]} {task.fields[size]} {task.fields[rate]}"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=Console(soft_wrap=True),  # log lines above the bars stay one line each
            redirect_stdout=True,
            transient=False,
        )
        self._display.start()
        self._thread.start()

    def start(self, product: str, chunks: int) -> None:
        with self._lock:
            if self._display is None:
                self._show()
            task = self._display.add_task(
                product, total=chunks, unit="chunks", size="0.0 MB", rate=""
            )
            self._bars[product] = Bar(task)

    def received(self, product: str, size: int) -> None:
        with self._lock:
            self._bars[product].arriving_bytes += size

    def advance(self, product: str, part_bytes: int) -> None:
        with self._lock:
            bar = self._bars[product]
            bar.done_bytes += part_bytes
            bar.arriving_bytes = max(0, bar.arriving_bytes - part_bytes)
            self._display.advance(bar.task)

    def finish(self, product: str) -> None:
        with self._lock:
            self._refresh(self._bars[product])

    def waiting(self, label: str, state: str, percent: int | None) -> None:
        """A batch job being prepared by the service: its state and progress out of 100."""
        with self._lock:
            if self._display is None:
                self._show()
            if label not in self._waiting:
                self._waiting[label] = self._display.add_task(
                    label, total=100, unit="%", size=state, rate=""
                )
            self._display.update(self._waiting[label], completed=percent or 0, size=state)

    def close(self) -> None:
        if self._thread.is_alive():
            self._stop.set()
            self._thread.join(timeout=2)
            self._display.stop()

    def _poll(self) -> None:
        while not self._stop.wait(REFRESH_S):
            with self._lock:
                for bar in self._bars.values():
                    self._refresh(bar)

    def _refresh(self, bar: Bar) -> None:
        """Size and rate of one bar (the caller holds the lock)."""
        elapsed = max(time.monotonic() - bar.began, 1e-6)
        self._display.update(
            bar.task, size=f"{bar.size / 1e6:.1f} MB", rate=f"{bar.size / 1e6 / elapsed:.1f} MB/s"
        )
