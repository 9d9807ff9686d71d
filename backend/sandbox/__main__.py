"""`python -m backend.sandbox serve --state-dir DIR`: run the sandbox gateway until SIGTERM/SIGINT.

DIR/ca.pem gets the CA certificate, then DIR/gateway the "127.0.0.1:PORT" string (written
atomically and last, so a waiter can poll for it). While serving, DIR/batch-jobs.json holds the
batch jobs and their files; on the stop, DIR/requests.json the requests per endpoint and
DIR/requests-log.json every request in order, with its arrival time.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import signal
import sys
import threading
from collections import Counter
from datetime import UTC, date, datetime
from pathlib import Path
from types import FrameType

from backend.sandbox.gateway import SandboxGateway

logger = logging.getLogger("backend.sandbox")


def _utc_date(text: str) -> datetime:
    day = date.fromisoformat(text)
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m backend.sandbox", description="Local stand-in of the Databento HTTP API."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="serve until SIGTERM/SIGINT")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=0)
    serve.add_argument("--state-dir", type=Path, required=True)
    serve.add_argument("--records-per-day", type=int, default=20)
    serve.add_argument("--throttle-bytes-per-s", type=float, default=None)
    serve.add_argument(
        "--latency-s",
        type=float,
        default=0.0,
        help="server-side query latency: delay the first byte of every get_range answer",
    )
    serve.add_argument(
        "--batch-processing-s",
        type=float,
        default=0.0,
        help="a batch job is done this long after its submission (once its files are written)",
    )
    serve.add_argument(
        "--available-end",
        type=_utc_date,
        default=None,
        help="exclusive end of data, YYYY-MM-DD (default: today 00:00 UTC)",
    )
    serve.add_argument("--frames", choices=("single", "per_day"), default="single")
    serve.add_argument(
        "--no-session-answer",
        choices=("empty", "422"),
        default="empty",
        help="a range with no session day (e.g. a weekend): empty stream, or 422 unresolved",
    )
    serve.add_argument(
        "--frame-cache-mb",
        type=int,
        default=0,
        help="per_day only: keep compressed day frames in memory across requests",
    )
    serve.add_argument(
        "--prewarm",
        action="append",
        default=[],
        metavar="DATASET/SYMBOL/SCHEMA/YEAR",
        help="build these days into the frame cache before serving (repeatable)",
    )
    return parser


def _write_atomically(path: Path, text: str) -> None:
    partial = path.with_name(f".{path.name}.tmp")
    partial.write_text(text)
    partial.replace(path)


def _batch_snapshot(gateway: SandboxGateway) -> str:
    """The batch jobs as get_job_details answers them now, each with its written files."""
    jobs = [
        {**details, "files": gateway.batch_job_files(details["id"])}
        for details in gateway.batch_jobs()
    ]
    return json.dumps(jobs, indent=2)


def _request_log(gateway: SandboxGateway) -> str:
    """Every request in arrival order: method, endpoint, params and at_ns (no API key)."""
    return json.dumps(
        [
            {
                "method": request.method,
                "endpoint": request.endpoint,
                "params": request.params,
                "at_ns": request.at_ns,
            }
            for request in list(gateway.requests)
        ],
        indent=1,
    )


def run_until_stopped(gateway: SandboxGateway, state_dir: Path) -> None:
    """Serve until SIGTERM or SIGINT.

    Writes STATE/ca.pem, then STATE/gateway (atomically, last: its presence means ready);
    while serving, STATE/batch-jobs.json whenever a batch job changes (atomically); on the
    stop, STATE/requests.json (requests per endpoint) and STATE/requests-log.json (each
    request with its arrival time) before the server closes.
    """
    stop_requested = threading.Event()

    def request_stop(_signum: int, _frame: FrameType | None) -> None:
        stop_requested.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    state_dir.mkdir(parents=True, exist_ok=True)
    with gateway:
        shutil.copyfile(gateway.ca_path, state_dir / "ca.pem")
        _write_atomically(state_dir / "gateway", gateway.gateway)
        logger.info(
            "sandbox gateway serving https://%s (CA %s)", gateway.gateway, state_dir / "ca.pem"
        )
        # Wake up periodically so signals are handled promptly on every platform.
        written = ""
        while not stop_requested.wait(0.25):
            if gateway.batch_book.jobs() and (snapshot := _batch_snapshot(gateway)) != written:
                _write_atomically(state_dir / "batch-jobs.json", snapshot)
                written = snapshot
        endpoints = Counter(request.endpoint for request in list(gateway.requests))
        _write_atomically(state_dir / "requests.json", json.dumps(dict(endpoints), indent=2))
        _write_atomically(state_dir / "requests-log.json", _request_log(gateway))
        if gateway.batch_book.jobs():
            _write_atomically(state_dir / "batch-jobs.json", _batch_snapshot(gateway))


def serve(args: argparse.Namespace) -> int:
    gateway = SandboxGateway(
        records_per_day=args.records_per_day,
        available_end=args.available_end,
        throttle_bytes_per_s=args.throttle_bytes_per_s,
        latency_s=args.latency_s,
        batch_processing_s=args.batch_processing_s,
        frames=args.frames,
        frame_cache_mb=args.frame_cache_mb,
        no_session_answer=args.no_session_answer,
        host=args.host,
        port=args.port,
    )
    for spec in args.prewarm:
        dataset, symbol, schema, year = spec.split("/")
        cached = gateway.prewarm(dataset, symbol, schema, int(year))
        logger.info("prewarmed %s: %.1f MB of frames", spec, cached / 1e6)
    run_until_stopped(gateway, args.state_dir)
    return 0


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    args = _parser().parse_args(argv)
    return serve(args)


if __name__ == "__main__":
    sys.exit(main())
