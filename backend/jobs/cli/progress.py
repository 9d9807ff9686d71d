"""Live download progress on an interactive terminal; nothing at all anywhere else."""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path
from typing import Any, Protocol

from backend.jobs.cache.layout import TEMP_SUFFIX

REFRESH_S = 0.5


class Progress(Protocol):
    def start(self, product: str, parts_dir: Path, chunks: int) -> None: ...
    def advance(self, product: str, part_bytes: int) -> None: ...
    def finish(self, product: str) -> None: ...
    def waiting(self, label: str, state: str, percent: int | None) -> None: ...
    def close(self) -> None: ...


class NullProgress:
    """For pipes, logs, --quiet and tests: the log lines say everything."""

    def start(self, product: str, parts_dir: Path, chunks: int) -> None:
        pass

    def advance(self, product: str, part_bytes: int) -> None:
        pass

    def finish(self, product: str) -> None:
        pass

    def waiting(self, label: str, state: str, percent: int | None) -> None:
        pass

    def close(self) -> None:
        pass


def wants_progress(quiet: bool, json_logs: bool) -> bool:
    """Only for a person watching a real terminal."""
    return (
        sys.stdout.isatty()
        and not quiet
        and not json_logs
        and os.environ.get("TERM", "") not in {"", "dumb"}
    )


class RichProgress:
    """Per product: chunks done/total, bytes on disk (finished parts + parts in flight), rate, ETA.

    Bytes in flight are read from the sizes of the temp files being streamed, so the display
    moves during a chunk, not only between chunks.
    """

    def __init__(self) -> None:
        self._display: Any = None  # rich is imported only once there is something to show
        self._tasks: dict[str, tuple[int, Path, float]] = {}
        self._done_bytes: dict[str, int] = {}
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

    def start(self, product: str, parts_dir: Path, chunks: int) -> None:
        if self._display is None:
            self._show()
        with self._lock:
            task = self._display.add_task(
                product, total=chunks, unit="chunks", size="0.0 MB", rate=""
            )
            self._tasks[product] = (task, parts_dir, time.monotonic())
            self._done_bytes[product] = 0

    def advance(self, product: str, part_bytes: int) -> None:
        with self._lock:
            self._done_bytes[product] += part_bytes
            self._display.advance(self._tasks[product][0])

    def finish(self, product: str) -> None:
        self._refresh(product)

    def waiting(self, label: str, state: str, percent: int | None) -> None:
        """A batch job being prepared by the service: its state and progress out of 100."""
        if self._display is None:
            self._show()
        with self._lock:
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
            for product in list(self._tasks):
                self._refresh(product)

    def _refresh(self, product: str) -> None:
        with self._lock:
            task, parts_dir, began = self._tasks[product]
            in_flight = 0
            temps = [*parts_dir.glob(f".*{TEMP_SUFFIX}"), *parts_dir.glob(f".*{TEMP_SUFFIX}/*")]
            for temp in temps:
                try:
                    in_flight += temp.stat().st_size if temp.is_file() else 0
                except FileNotFoundError:
                    continue
            total = self._done_bytes[product] + in_flight
            elapsed = max(time.monotonic() - began, 1e-6)
            self._display.update(
                task, size=f"{total / 1e6:.1f} MB", rate=f"{total / 1e6 / elapsed:.1f} MB/s"
            )


class OverallProgress:
    """A universe run: one bar for all its symbol-year-products, parts done of parts planned."""

    LABEL = "all"

    def __init__(self, inner: Progress, parts: int) -> None:
        self._inner = inner
        self._parts = parts
        self._started = False

    def start(self, product: str, parts_dir: Path, chunks: int) -> None:  # noqa: ARG002  Progress
        if not self._started:
            self._started = True
            self._inner.start(self.LABEL, parts_dir, self._parts)

    def advance(self, product: str, part_bytes: int) -> None:  # noqa: ARG002  Progress
        self._inner.advance(self.LABEL, part_bytes)

    def finish(self, product: str) -> None:
        pass

    def waiting(self, label: str, state: str, percent: int | None) -> None:
        self._inner.waiting(label, state, percent)

    def close(self) -> None:
        self._inner.close()
