"""SandboxGateway: a local HTTPS stand-in of the Databento historical API, for tests and demos."""

from __future__ import annotations

import shutil
import ssl
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import trustme

from backend.sandbox.batch import SYMBOLS_SHAPES, BatchBook
from backend.sandbox.batchfiles import EMPTY_FILES, FILE_HEADERS, EmptyFiles, FileHeaders, JobSource
from backend.sandbox.bodies import BodySettings
from backend.sandbox.catalog import DATASETS, SymbolCatalog, default_catalog
from backend.sandbox.dbnstream import FrameCache, encode_cached_days
from backend.sandbox.faults import Fault, FaultBook
from backend.sandbox.fixtures import Fixture, FixtureKey, load_fixture
from backend.sandbox.records import iter_range_days
from backend.sandbox.server import SandboxHttpServer
from backend.sandbox.timestamps import to_ns, today_midnight_ns

_STOP_JOIN_TIMEOUT_S = 5.0
_THIRTY_DAYS_S = 30 * 86_400.0
SUBMIT_ANSWERS = ("sent", "502", "cut")
FILE_HASHES = ("sha256", "null")


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    endpoint: str  # e.g. "timeseries.get_range"; the raw path when not under /v0/
    params: dict[str, str]
    key: str | None
    # When it arrived (time.time_ns(), the clock of batch job timestamps); not compared.
    at_ns: int = field(default=0, compare=False)


class SandboxGateway:
    """Serves the Databento historical HTTP API on 127.0.0.1 over TLS with synthetic data.

    Point the SDK at it with `databento.Historical(key, gateway=gw.gateway)` and
    `REQUESTS_CA_BUNDLE=gw.ca_path`. Settings are plain attributes; `reset()` restores them.
    """

    def __init__(
        self,
        *,
        records_per_day: int = 20,
        available_end: datetime | date | str | None = None,
        available_start: datetime | date | str = datetime(2018, 5, 1, tzinfo=UTC),
        api_keys: Iterable[str] | None = None,
        throttle_bytes_per_s: float | None = None,
        price_per_gb: float = 1.0,
        frames: Literal["single", "per_day"] = "single",
        compression_level: int = 1,
        frame_cache_mb: int = 0,
        no_session_answer: Literal["empty", "422"] = "empty",
        latency_s: float = 0.0,
        batch_processing_s: float = 0.0,
        batch_expiry_s: float = _THIRTY_DAYS_S,
        batch_symbols: Literal["string", "array"] = "string",
        batch_submit_answer: Literal["sent", "502", "cut"] = "sent",
        batch_empty_files: EmptyFiles = "present",
        batch_file_headers: FileHeaders = "period",
        batch_file_hashes: Literal["sha256", "null"] = "sha256",
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        if frames not in ("single", "per_day"):
            raise ValueError(f"frames must be 'single' or 'per_day', got {frames!r}")
        if no_session_answer not in ("empty", "422"):
            raise ValueError(
                f"no_session_answer must be 'empty' or '422', got {no_session_answer!r}"
            )
        if batch_symbols not in SYMBOLS_SHAPES:
            raise ValueError(
                f"batch_symbols must be one of {SYMBOLS_SHAPES}, got {batch_symbols!r}"
            )
        if batch_submit_answer not in SUBMIT_ANSWERS:
            raise ValueError(
                f"batch_submit_answer must be one of {SUBMIT_ANSWERS}, got {batch_submit_answer!r}"
            )
        for name, value, allowed in (
            ("batch_empty_files", batch_empty_files, EMPTY_FILES),
            ("batch_file_headers", batch_file_headers, FILE_HEADERS),
            ("batch_file_hashes", batch_file_hashes, FILE_HASHES),
        ):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
        self._initial_settings: dict[str, Any] = {
            "records_per_day": records_per_day,
            "available_end": available_end,
            "available_start": available_start,
            "api_keys": None if api_keys is None else frozenset(api_keys),
            "throttle_bytes_per_s": throttle_bytes_per_s,
            "price_per_gb": price_per_gb,
            "frames": frames,
            "compression_level": compression_level,
            "no_session_answer": no_session_answer,
            "latency_s": latency_s,
            "batch_processing_s": batch_processing_s,
            "batch_expiry_s": batch_expiry_s,
            "batch_symbols": batch_symbols,
            "batch_submit_answer": batch_submit_answer,
            "batch_empty_files": batch_empty_files,
            "batch_file_headers": batch_file_headers,
            "batch_file_hashes": batch_file_hashes,
        }
        self.records_per_day: int = records_per_day
        self.available_end: datetime | date | str | None = available_end
        self.available_start: datetime | date | str = available_start
        self.api_keys: frozenset[str] | None = None
        self.throttle_bytes_per_s: float | None = throttle_bytes_per_s
        self.price_per_gb: float = price_per_gb
        self.frames: Literal["single", "per_day"] = frames
        self.compression_level: int = compression_level
        # A range with no session day for its symbols (records.iter_session_days), e.g. a
        # weekend: "empty" streams a header without records (counts 0), "422" refuses it with
        # symbology_invalid_request like a range where no symbol resolves.
        self.no_session_answer: Literal["empty", "422"] = no_session_answer
        # The real service's query latency: every timeseries.get_range answer (errors included)
        # starts this many seconds after the request; reset()/stop() end the wait like delay_s.
        self.latency_s: float = latency_s
        # A batch job submitted now is queued after 10% of this, processing after 20%, done
        # at 100% once its files are written too (they are, on a background thread, from the
        # submission on; 0: written before submit_job answers, so done by the first look),
        # then expires batch_expiry_s later. Both are read at submission.
        self.batch_processing_s: float = batch_processing_s
        self.batch_expiry_s: float = batch_expiry_s
        # How job objects show `symbols`: "string", comma-joined as Databento documents it, or
        # "array" (the official C++ and Rust clients accept both). Read at submission.
        self.batch_symbols: Literal["string", "array"] = batch_symbols
        # Every batch.submit_job creates its job, then: "sent" answers it; "502" answers a
        # proxy's 502 page instead; "cut" resets the connection before the job object is sent.
        self.batch_submit_answer: Literal["sent", "502", "cut"] = batch_submit_answer
        # What Databento does not document about a job's files (batchfiles.py); the first two
        # are read at submission, the third by every list_files:
        # a split period without records gets a header-only file ("present") or none ("absent");
        # each file's DBN header carries its own period ("period") or the job's range ("job");
        # list_files gives each file's `hash` ("sha256") or null for every file ("null").
        self.batch_empty_files: EmptyFiles = batch_empty_files
        self.batch_file_headers: FileHeaders = batch_file_headers
        self.batch_file_hashes: Literal["sha256", "null"] = batch_file_hashes
        self.batch_book = BatchBook()
        # per_day only: serve repeated days from memory, see dbnstream.FrameCache
        self.frame_cache = FrameCache(frame_cache_mb * 2**20) if frame_cache_mb else None
        self.catalog: SymbolCatalog = default_catalog()
        self.fixtures: dict[FixtureKey, Fixture] = {}
        self.degraded_days: set[date] = set()
        self.faults = FaultBook()
        self.requests: list[RecordedRequest] = []
        self._dataset_ranges: dict[str, tuple[int, int]] = {}
        self._requests_lock = threading.Lock()
        # Requests received and not yet fully answered (or dropped), per endpoint, and the
        # most seen at once since the last reset().
        self._in_flight: Counter[str] = Counter()
        self._max_in_flight: Counter[str] = Counter()
        self._in_flight_lock = threading.Lock()
        # Set by reset()/stop() to end the injected stalls in progress, then replaced.
        self._stall_release = threading.Event()
        self._host, self._port = host, port
        self._server: SandboxHttpServer | None = None
        self._thread: threading.Thread | None = None
        self._state_dir: Path | None = None
        self._ca_path: Path | None = None
        self._restore_settings()

    # lifecycle

    def start(self) -> SandboxGateway:
        if self._server is not None:
            return self
        self._state_dir = Path(tempfile.mkdtemp(prefix="bento-sandbox-"))
        authority = trustme.CA()
        certificate = authority.issue_cert("127.0.0.1", "localhost")
        self._ca_path = self._state_dir / "ca.pem"
        authority.cert_pem.write_to_path(str(self._ca_path))
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        certificate.configure_cert(context)
        self._server = SandboxHttpServer((self._host, self._port), context, self)
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="sandbox-gateway",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        server, thread = self._server, self._thread
        if server is None:
            return
        server.stopping.set()
        self._release_stalls()
        server.shutdown()
        server.abort_connections()
        server.server_close()
        if thread is not None:
            thread.join(_STOP_JOIN_TIMEOUT_S)
        self._server = self._thread = None
        self.batch_book.clear()
        if self._state_dir is not None:
            shutil.rmtree(self._state_dir, ignore_errors=True)
        self._state_dir = self._ca_path = None

    def __enter__(self) -> SandboxGateway:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def gateway(self) -> str:
        """`127.0.0.1:PORT`, the value for databento.Historical(gateway=...)."""
        server = self._require_started()
        host, port = server.server_address[:2]
        return f"{host}:{port}"

    @property
    def port(self) -> int:
        return int(self._require_started().server_address[1])

    @property
    def ca_path(self) -> Path:
        """PEM of the CA that signed the gateway's certificate (for REQUESTS_CA_BUNDLE)."""
        self._require_started()
        if self._ca_path is None:
            raise RuntimeError("SandboxGateway has no CA file")
        return self._ca_path

    def _require_started(self) -> SandboxHttpServer:
        if self._server is None:
            raise RuntimeError("SandboxGateway is not started; call start() first")
        return self._server

    # test controls

    def reset(self) -> None:
        """Forget requests, in-flight maxima, faults, added symbols/fixtures, degraded days,
        batch jobs (and their files); restore settings.

        Requests stalled by a fault (`delay_s`, `stall_s`) or waiting out `latency_s` are
        dropped now, not left sleeping.
        """
        self._release_stalls()
        with self._requests_lock:
            self.requests.clear()
        with self._in_flight_lock:
            self._max_in_flight.clear()
        self.faults.clear()
        self.catalog = default_catalog()
        self.fixtures.clear()
        self.degraded_days = set()
        self._dataset_ranges.clear()
        self.batch_book.clear()
        self._restore_settings()

    def _restore_settings(self) -> None:
        for name, value in self._initial_settings.items():
            setattr(self, name, value)

    def add_fault(self, fault: Fault) -> None:
        self.faults.add(fault)

    def add_symbol(
        self,
        symbol: str,
        intervals: Iterable[tuple[date, date, int]],
        dataset: str = "XNAS.ITCH",
    ) -> None:
        """Map `symbol` to instrument_ids over [d0, d1) intervals (replaces earlier ones)."""
        self._check_dataset(dataset)
        self.catalog.set_symbol(dataset, symbol, intervals)

    def add_fixture(self, path: Path | str) -> Fixture:
        """Serve a real DBN file verbatim to the get_range request its metadata describes."""
        fixture = load_fixture(path)
        self._check_dataset(fixture.dataset)
        for symbol, intervals in fixture.mappings.items():
            self.catalog.extend(fixture.dataset, symbol, intervals)
        self.fixtures[fixture.key] = fixture
        return fixture

    def prewarm(self, dataset: str, symbol: str, schema: str, year: int) -> int:
        """Fill the frame cache with a symbol-year so serving it costs no compression.

        Returns the compressed bytes cached; needs frames="per_day" and frame_cache_mb > 0.
        """
        if self.frame_cache is None or self.frames != "per_day":
            raise ValueError("prewarm needs frames='per_day' and frame_cache_mb > 0")
        start, end = date(year, 1, 1), date(year + 1, 1, 1)
        resolution = self.catalog.resolve(dataset, [symbol], start, end)
        days = iter_range_days(
            dataset,
            schema,
            resolution.mappings,
            start_ns=to_ns(start),
            end_ns=to_ns(end),
            records_per_day=self.records_per_day,
        )
        body = encode_cached_days(b"", days, self.frame_cache, self.compression_level)
        return sum(len(piece) for piece in body)

    def set_dataset_range(
        self, dataset: str, start: datetime | date | str, end: datetime | date | str
    ) -> None:
        """Override the available [start, end) of `dataset` (all schemas) until reset()."""
        self._check_dataset(dataset)
        self._dataset_ranges[dataset] = (to_ns(start), to_ns(end))

    def batch_jobs(self) -> list[dict[str, Any]]:
        """Every batch job object as get_job_details would answer it now, oldest first."""
        now_ns = time.time_ns()
        return [job.details(now_ns) for job in self.batch_book.jobs()]

    def batch_job_files(self, job_id: str) -> list[dict[str, Any]] | None:
        """A job's files (filename, size, sha256; data files first) once they are written,
        else None; never waits for them."""
        job = self.batch_book.get(job_id)
        files = job.written_files() if job is not None else None
        if files is None:
            return None
        return [
            {"filename": f.filename, "size": f.size, "sha256": f.sha256, "data": f in files.data}
            for f in files.all
        ]

    def expire_job(self, job_id: str) -> None:
        """Expire a batch job now: its state becomes "expired" and its files answer 404."""
        job = self.batch_book.get(job_id)
        if job is None:
            raise KeyError(f"no batch job {job_id!r}")
        job.expire(time.time_ns())

    def forget_job(self, job_id: str) -> None:
        """Remove a batch job and its files: every batch endpoint answers 404 for it."""
        job = self.batch_book.remove(job_id)
        if job is None:
            raise KeyError(f"no batch job {job_id!r}")
        job.discard_files()

    def count(self, endpoint: str) -> int:
        with self._requests_lock:
            return sum(1 for request in self.requests if request.endpoint == endpoint)

    def in_flight(self, endpoint: str = "timeseries.get_range") -> int:
        """Requests to `endpoint` received and not yet fully answered or dropped."""
        with self._in_flight_lock:
            return self._in_flight[endpoint]

    def max_in_flight(self, endpoint: str = "timeseries.get_range") -> int:
        """The most requests to `endpoint` in flight at once since the last reset()."""
        with self._in_flight_lock:
            return self._max_in_flight[endpoint]

    # used by the endpoints

    def record_request(
        self, method: str, endpoint: str, params: dict[str, str], key: str | None
    ) -> None:
        with self._requests_lock:
            self.requests.append(
                RecordedRequest(method, endpoint, dict(params), key, at_ns=time.time_ns())
            )

    @contextmanager
    def track_in_flight(self, endpoint: str) -> Iterator[None]:
        """Count a request to `endpoint` as in flight for the duration of the block."""
        with self._in_flight_lock:
            self._in_flight[endpoint] += 1
            current = self._in_flight[endpoint]
            self._max_in_flight[endpoint] = max(self._max_in_flight[endpoint], current)
        try:
            yield
        finally:
            with self._in_flight_lock:
                self._in_flight[endpoint] -= 1

    def body_settings(self) -> BodySettings:
        """The settings get_range bodies are built with, as of now."""
        return BodySettings(
            records_per_day=self.records_per_day,
            frames=self.frames,
            compression_level=self.compression_level,
            frame_cache=self.frame_cache,
            fixtures=dict(self.fixtures),
        )

    def job_source(self) -> JobSource:
        """A copy of what a batch job's files are made from, taken at its submission."""
        return JobSource(
            body=self.body_settings(),
            catalog=self.catalog.copy(),
            degraded_days=frozenset(self.degraded_days),
            empty_files=self.batch_empty_files,
            headers=self.batch_file_headers,
        )

    def batch_directory(self, job_id: str) -> Path:
        """Where a batch job's files are written (removed by reset() and stop())."""
        if self._state_dir is None:
            raise RuntimeError("SandboxGateway is not started; call start() first")
        return self._state_dir / "batch" / job_id

    def stall_release(self) -> threading.Event:
        """The event that ends a stall starting now: set by the next reset() or stop()."""
        return self._stall_release

    def _release_stalls(self) -> None:
        released, self._stall_release = self._stall_release, threading.Event()
        released.set()

    def accepts_key(self, key: str) -> bool:
        if self.api_keys is None:
            return key.startswith("db-")
        return key in self.api_keys

    def dataset_range_ns(self, dataset: str) -> tuple[int, int]:
        """Available [start, end) of `dataset` in UTC nanoseconds."""
        if dataset in self._dataset_ranges:
            return self._dataset_ranges[dataset]
        fixed_start = DATASETS[dataset].fixed_start
        start = to_ns(fixed_start or self.available_start)
        end = to_ns(self.available_end) if self.available_end else today_midnight_ns()
        return start, end

    @staticmethod
    def _check_dataset(dataset: str) -> None:
        if dataset not in DATASETS:
            raise ValueError(f"unknown dataset {dataset!r}; known: {', '.join(DATASETS)}")
