"""What an endpoint answers; the server turns each kind into bytes on the wire."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class JsonResponse:
    body: Any
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class StreamResponse:
    """A body of unknown length, sent chunked (timeseries.get_range)."""

    chunks: Iterator[bytes]
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class FileResponse:
    """`length` bytes of a file on disk from `offset`, sent with a Content-Length (batch files).

    Files can be far larger than memory, so the server reads them piece by piece as it sends.
    """

    path: Path
    offset: int
    length: int
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)


Response = JsonResponse | StreamResponse | FileResponse
