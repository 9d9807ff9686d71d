"""A local S3-compatible server for tests, `make demo-s3` and the benchmarks: moto in server mode.

The real S3 protocol over HTTP on a free loopback port, with the conditional writes the object
cache relies on (`If-None-Match: *`, `If-Match` on an ETag; a test checks moto still honours
them). Every request is recorded (method, key, query), so a test can prove what a run did to
the bucket, e.g. that a cached re-run read no object body; `refuse` answers the requests it picks
with S3's 403 AccessDenied instead (a fault a test injects, e.g. in the middle of an upload).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

REGION = "us-east-1"
ACCESS_KEY = "sandbox-access-key"
SECRET_KEY = "sandbox-secret-key"  # noqa: S105  a local test server's, never a real secret
ACCESS_DENIED = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>AccessDenied</Code>'
    b"<Message>Access Denied (refused by the test)</Message></Error>"
)


@dataclass(frozen=True)
class S3Request:
    method: str
    bucket: str
    key: str  # "" for bucket-level requests (listings, multipart listings)
    query: str

    @property
    def reads_body(self) -> bool:
        """A GET of an object (its body), as opposed to HEAD, listings and writes."""
        return self.method == "GET" and bool(self.key)


class LocalS3Server:
    """`with LocalS3Server() as s3:` then `s3.env()` for a client process or `monkeypatch`."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._host, self._port = host, port
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.requests: list[S3Request] = []
        self.refuse: Callable[[S3Request], bool] | None = None

    def start(self) -> LocalS3Server:
        from moto.moto_server.werkzeug_app import (
            DomainDispatcherApplication,
            MotoRequestHandler,
            create_backend_app,
        )
        from werkzeug.serving import make_server

        class QuietHandler(MotoRequestHandler):
            def log_request(self, *_args: object) -> None:
                """No line per request on stderr."""

        app = DomainDispatcherApplication(create_backend_app)
        self._server = make_server(
            self._host,
            self._port,
            self._recording(app),
            threaded=True,
            request_handler=QuietHandler,
        )
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="local-s3", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = self._thread = None

    def __enter__(self) -> LocalS3Server:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    @property
    def endpoint(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def env(self) -> dict[str, str]:
        """The standard AWS variables that point any S3 client at this server."""
        return {
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_DEFAULT_REGION": REGION,
            "AWS_REGION": REGION,
            "AWS_ENDPOINT_URL": self.endpoint,
        }

    def client(self) -> Any:
        """A boto3 client of this server (for tests and the demo: buckets, objects)."""
        import boto3

        return boto3.session.Session().client(
            "s3",
            endpoint_url=self.endpoint,
            region_name=REGION,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
        )

    def create_bucket(self, name: str) -> None:
        self.client().create_bucket(Bucket=name)

    def reset(self) -> None:
        """Forget every bucket and object, the recorded requests and any refusal."""
        from moto.backends import get_backend

        for account in get_backend("s3").values():
            for backend in account.values():
                backend.reset()
        with self._lock:
            self.requests.clear()
        self.refuse = None

    def recorded(self, method: str | None = None) -> list[S3Request]:
        with self._lock:
            return [r for r in self.requests if method is None or r.method == method]

    def _recording(self, app: Callable[..., Iterable[bytes]]) -> Callable[..., Iterable[bytes]]:
        def record(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
            path = unquote(environ.get("PATH_INFO", "")).lstrip("/")
            bucket, _, key = path.partition("/")
            request = S3Request(
                environ.get("REQUEST_METHOD", ""), bucket, key, environ.get("QUERY_STRING", "")
            )
            if not bucket.startswith("moto-api"):
                with self._lock:
                    self.requests.append(request)
            if self.refuse is not None and self.refuse(request):
                start_response("403 Forbidden", [("Content-Type", "application/xml")])
                return [ACCESS_DENIED]
            return app(environ, start_response)

        return record
