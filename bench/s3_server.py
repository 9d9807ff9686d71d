"""The local S3 server in its own process, for the bench (scenarios 11-13).

    python -m bench.s3_server serve --state-dir DIR [--bucket bench]
        LocalS3Server (moto in server mode, on a free loopback port) with the bucket created;
        DIR/s3.json gets the standard AWS variables that reach it (written atomically and last:
        its presence means ready). Serves until SIGTERM/SIGINT. On SIGUSR1, and on the stop,
        DIR/s3-requests.json gets every request so far, in order (method, bucket, key, query,
        reads_body, at_ns: arrival, time.time_ns(); done_ns: when the server had its answer,
        None while it works) and `as_of_ns`, when it was written.

    python -m bench.s3_server same --bucket B --key K --file F
        Whether object K equals local file F byte for byte, streamed in blocks through boto3
        (the AWS variables from the environment); prints one JSON object, exit 0 either way.

Run apart from the measured command, so the server's CPU and memory are not counted in it, and
the comparison's boto3 never raises the bench process's own peak RSS (see bench.harness).
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from types import FrameType
from typing import Any
from urllib.parse import unquote

from backend.sandbox.s3server import REGION, LocalS3Server, S3Request

READY_FILE = "s3.json"
REQUESTS_FILE = "s3-requests.json"
COMPARE_BLOCK = 4 * 2**20

logger = logging.getLogger("bench.s3_server")


class LoggedS3Server(LocalS3Server):
    """LocalS3Server whose requests also carry their arrival time and the time its answer was
    ready (time.time_ns(); moto computes the whole answer before it returns from the app)."""

    def __init__(self) -> None:
        super().__init__()
        self.log: list[dict[str, Any]] = []  # list.append: atomic across the server's threads

    def _recording(self, app: Callable[..., Iterable[bytes]]) -> Callable[..., Iterable[bytes]]:
        recorded = super()._recording(app)

        def timed(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
            at_ns = time.time_ns()
            path = unquote(environ.get("PATH_INFO", "")).lstrip("/")
            bucket, _, key = path.partition("/")
            entry: dict[str, Any] = {}
            if not bucket.startswith("moto-api"):
                method = environ.get("REQUEST_METHOD", "")
                query = environ.get("QUERY_STRING", "")
                request = S3Request(method, bucket, key, query)
                entry.update(
                    method=method,
                    bucket=bucket,
                    key=key,
                    query=query,
                    reads_body=request.reads_body,
                    at_ns=at_ns,
                    done_ns=None,
                )
                self.log.append(entry)
            answer = recorded(environ, start_response)
            if entry:
                entry["done_ns"] = time.time_ns()
            return answer

        return timed


def _write_atomically(path: Path, text: str) -> None:
    partial = path.with_name(f".{path.name}.tmp")
    partial.write_text(text)
    partial.replace(path)


def _dump(server: LoggedS3Server, state_dir: Path) -> None:
    as_of = time.time_ns()
    requests = [dict(entry) for entry in list(server.log) if entry["at_ns"] <= as_of]
    _write_atomically(
        state_dir / REQUESTS_FILE, json.dumps({"as_of_ns": as_of, "requests": requests}, indent=1)
    )


def serve(state_dir: Path, bucket: str) -> int:
    stop, dump = threading.Event(), threading.Event()

    def on_stop(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    def on_dump(_signum: int, _frame: FrameType | None) -> None:
        dump.set()

    signal.signal(signal.SIGTERM, on_stop)
    signal.signal(signal.SIGINT, on_stop)
    signal.signal(signal.SIGUSR1, on_dump)
    state_dir.mkdir(parents=True, exist_ok=True)
    with LoggedS3Server() as server:
        server.create_bucket(bucket)
        server.log.clear()  # the bucket's creation is not a request of a measured run
        _write_atomically(state_dir / READY_FILE, json.dumps(server.env(), indent=2))
        logger.info("local S3 server at %s, bucket %s", server.endpoint, bucket)
        while not stop.wait(0.05):
            if dump.is_set():
                dump.clear()
                _dump(server, state_dir)
        _dump(server, state_dir)
    return 0


def same(bucket: str, key: str, file: Path) -> int:
    """Stream the object and the file side by side; print where they first differ, if they do."""
    import boto3

    client = boto3.session.Session().client("s3", region_name=REGION)
    body = client.get_object(Bucket=bucket, Key=key)["Body"]
    offset, first_difference = 0, None
    with file.open("rb") as local:
        while True:
            theirs = body.read(COMPARE_BLOCK)
            ours = local.read(COMPARE_BLOCK)
            if theirs != ours and first_difference is None:
                common = min(len(theirs), len(ours))
                first_difference = offset + next(
                    (i for i in range(common) if theirs[i] != ours[i]), common
                )
            offset += max(len(theirs), len(ours))
            if not theirs and not ours:
                break
    object_bytes = client.head_object(Bucket=bucket, Key=key)["ContentLength"]
    answer = {
        "equal": first_difference is None,
        "object_bytes": object_bytes,
        "file_bytes": file.stat().st_size,
        "first_difference": first_difference,
    }
    sys.stdout.write(json.dumps(answer) + "\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    parser = argparse.ArgumentParser(prog="python -m bench.s3_server", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    serving = commands.add_parser("serve", help="serve until SIGTERM/SIGINT")
    serving.add_argument("--state-dir", type=Path, required=True)
    serving.add_argument("--bucket", default="bench")
    comparing = commands.add_parser("same", help="object == file, byte for byte?")
    comparing.add_argument("--bucket", required=True)
    comparing.add_argument("--key", required=True)
    comparing.add_argument("--file", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.command == "serve":
        return serve(args.state_dir, args.bucket)
    return same(args.bucket, args.key, args.file)


if __name__ == "__main__":
    sys.exit(main())
