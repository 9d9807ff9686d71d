"""HTTPS/1.1 transport: TLS per connection, chunked streaming, file bodies, throttling and
injected faults."""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import logging
import socket
import socketserver
import ssl
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlsplit

from backend.sandbox import errors
from backend.sandbox.batchapi import FILE_ENDPOINT, file_request_params
from backend.sandbox.endpoints import ApiCall, dispatch
from backend.sandbox.faults import Fault
from backend.sandbox.responses import FileResponse, JsonResponse, Response, StreamResponse

if TYPE_CHECKING:
    from backend.sandbox.gateway import SandboxGateway

logger = logging.getLogger(__name__)

API_PREFIX = "/v0/"
LATENCY_ENDPOINT = "timeseries.get_range"  # the endpoint SandboxGateway.latency_s delays
HANDSHAKE_TIMEOUT_S = 10.0
IDLE_TIMEOUT_S = 120.0
_MAX_FORM_BYTES = 1 << 20
FILE_READ_BYTES = 128 * 1024


class ConnectionDroppedError(Exception):
    """Drop the connection now: a fault cut the response, or the gateway is stopping."""


class TokenBucket:
    """Caps one connection's body bytes per second; `take` blocks until `n` bytes are allowed."""

    def __init__(self, bytes_per_s: float, stopping: threading.Event) -> None:
        self.rate = float(bytes_per_s)
        # Small bursts keep the rate smooth at any scale (a 20th of a second, 1 KiB..64 KiB).
        self.burst = int(min(max(self.rate / 20, 1024), 64 * 1024))
        self._tokens = float(self.burst)
        self._last = time.monotonic()
        self._stopping = stopping

    def take(self, n: int) -> None:
        while True:
            now = time.monotonic()
            self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
            self._last = now
            if self._tokens >= n:
                self._tokens -= n
                return
            if self._stopping.wait((n - self._tokens) / self.rate):
                raise ConnectionDroppedError


def _stall(seconds: float, release: threading.Event, stopping: threading.Event) -> None:
    """Send nothing for `seconds`; drop the connection if reset()/stop() ends the wait early."""
    if release.wait(seconds) or stopping.is_set():
        raise ConnectionDroppedError


class _MidBodyStall:
    """A pause of `seconds` once `after_bytes` body bytes have been sent."""

    def __init__(
        self,
        after_bytes: int,
        seconds: float,
        release: threading.Event,
        stopping: threading.Event,
    ) -> None:
        self.remaining = after_bytes
        self.done = False
        self._seconds = seconds
        self._release = release
        self._stopping = stopping

    def run(self) -> None:
        self.done = True
        _stall(self._seconds, self._release, self._stopping)


@dataclass
class _BodyFaults:
    """What an injected fault does to a response body: cut it, pause it, flip one byte."""

    cut_after: int | None = None
    stall: _MidBodyStall | None = None
    corrupt_at: int | None = None

    def clamp_to(self, length: int) -> None:
        """A fixed-length body must stop, or pause, before its last byte to look broken."""
        last = max(length - 1, 0)
        if self.cut_after is not None:
            self.cut_after = min(self.cut_after, last)
        if self.stall is not None:
            self.stall.remaining = min(self.stall.remaining, last)


class _BodyWriter:
    """Writes a body (chunked or fixed-length), throttled, and damaged as `faults` say."""

    def __init__(
        self,
        sock_file: Any,
        *,
        chunked: bool,
        bucket: TokenBucket | None,
        faults: _BodyFaults,
        stopping: threading.Event,
    ) -> None:
        self._file = sock_file
        self._stopping = stopping
        self._chunked = chunked
        self._bucket = bucket
        self._remaining_before_cut = faults.cut_after
        self._stall = faults.stall
        self._corrupt_at = faults.corrupt_at
        self._sent = 0

    def write(self, data: bytes | memoryview) -> None:
        if self._stopping.is_set():
            raise ConnectionDroppedError
        view = memoryview(data)
        stall = self._stall
        if stall is not None and not stall.done:
            if stall.remaining < len(view):
                # Send up to the stall point, pause, then go on with the rest.
                self._send(view[: stall.remaining])
                stall.run()
                view = view[stall.remaining :]
            else:
                stall.remaining -= len(view)
        self._send(view)

    def _send(self, view: memoryview) -> None:
        step = self._bucket.burst if self._bucket else len(view) or 1
        for offset in range(0, len(view), step):
            piece = view[offset : offset + step]
            cut_now = False
            if self._remaining_before_cut is not None:
                if len(piece) >= self._remaining_before_cut:
                    piece = piece[: self._remaining_before_cut]
                    cut_now = True
                self._remaining_before_cut -= len(piece)
            if self._bucket and len(piece):
                self._bucket.take(len(piece))
            self._emit(piece)
            if cut_now:
                raise ConnectionDroppedError

    def finish(self) -> None:
        if self._stall is not None and not self._stall.done:
            self._stall.run()
        if self._remaining_before_cut is not None:
            raise ConnectionDroppedError
        if self._chunked:
            self._file.write(b"0\r\n\r\n")

    def _emit(self, piece: memoryview | bytearray) -> None:
        if not len(piece):
            return
        offset, self._sent = self._sent, self._sent + len(piece)
        if self._corrupt_at is not None and offset <= self._corrupt_at < self._sent:
            piece = bytearray(piece)
            piece[self._corrupt_at - offset] ^= 0xFF
        if self._chunked:
            self._file.write(b"%X\r\n%b\r\n" % (len(piece), piece))
        else:
            self._file.write(piece)


class SandboxHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "sandbox-gateway"
    sys_version = ""
    timeout = IDLE_TIMEOUT_S
    server: SandboxHttpServer

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: no per-request lines on stderr."""

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_PUT(self) -> None:
        self._handle("PUT")

    def do_PATCH(self) -> None:
        self._handle("PATCH")

    def do_DELETE(self) -> None:
        self._handle("DELETE")

    def _handle(self, method: str) -> None:
        url = urlsplit(self.path)
        endpoint = (
            url.path.removeprefix(API_PREFIX) if url.path.startswith(API_PREFIX) else url.path
        )
        path_params = file_request_params(endpoint)
        if path_params is not None:
            endpoint = FILE_ENDPOINT
        try:
            # In flight from now until the response is fully sent or the connection dropped.
            with self.server.gateway.track_in_flight(endpoint):
                self._serve(method, url.query, endpoint, path_params)
        except ConnectionDroppedError:
            self.close_connection = True
            _shutdown_socket(self.connection, socket.SHUT_WR)
        except OSError:  # client went away (BrokenPipe, ConnectionReset, TLS errors)
            self.close_connection = True

    def _serve(
        self, method: str, query: str, endpoint: str, path_params: dict[str, str] | None
    ) -> None:
        gateway = self.server.gateway
        params = dict(parse_qsl(query, keep_blank_values=True))
        form = self._read_body()
        if method == "POST":
            params.update(parse_qsl(form, keep_blank_values=True))
        range_header = self.headers.get("Range") or ""
        if path_params is not None:
            params.update(path_params, range=range_header)
        key = _basic_auth_username(self.headers.get("Authorization"))
        # Taken before the request is recorded: a reset() from now on ends this request's stalls.
        release = gateway.stall_release()
        gateway.record_request(method, endpoint, params, key)

        fault = gateway.faults.take(endpoint, params)
        if fault is not None and fault.delay_s > 0:
            _stall(fault.delay_s, release, self.server.stopping)
        latency_s = gateway.latency_s
        if endpoint == LATENCY_ENDPOINT and latency_s > 0:
            _stall(latency_s, release, self.server.stopping)
        call = ApiCall(method, params, key, range_header)
        response = self._respond(gateway, fault, endpoint, call)
        faults = self._body_faults(fault, release)
        if isinstance(response, StreamResponse):
            self._send_stream(response, gateway.throttle_bytes_per_s, faults)
        elif isinstance(response, FileResponse):
            self._send_file(response, gateway.throttle_bytes_per_s, faults)
        else:
            self._send_json(response, faults)

    def _body_faults(self, fault: Fault | None, release: threading.Event) -> _BodyFaults:
        if fault is None:
            return _BodyFaults()
        stall = None
        if fault.stall_after_bytes is not None:
            stall = _MidBodyStall(
                fault.stall_after_bytes, fault.stall_s, release, self.server.stopping
            )
        return _BodyFaults(fault.cut_after_bytes, stall, fault.corrupt_at_byte)

    def _respond(
        self, gateway: SandboxGateway, fault: Fault | None, endpoint: str, call: ApiCall
    ) -> Response:
        if fault is not None and fault.status is not None:
            error = errors.fault_error(fault.status, fault.detail, fault.retry_after_header)
            return JsonResponse(error.body, error.status, error.headers)
        try:
            return dispatch(gateway, endpoint, call)
        except errors.ApiError as error:
            return JsonResponse(error.body, error.status, error.headers)
        except Exception:
            logger.exception("sandbox endpoint %s failed", endpoint)
            return JsonResponse({"detail": "Internal Server Error"}, 500)

    def _read_body(self) -> str:
        length = int(self.headers.get("Content-Length") or 0)
        if length > _MAX_FORM_BYTES:
            raise ConnectionDroppedError
        return self.rfile.read(length).decode("utf-8", "replace") if length else ""

    def _start(self, status: int, headers: dict[str, str]) -> None:
        self.send_response(status)
        self.send_header("request-id", str(uuid.uuid4()))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()

    def _send_json(self, response: JsonResponse, faults: _BodyFaults) -> None:
        payload = json.dumps(response.body).encode()
        headers = {
            "Content-Type": "application/json",
            "Content-Length": str(len(payload)),
            **response.headers,
        }
        self._start(response.status, headers)
        faults.clamp_to(len(payload))
        self._body_writer(chunked=False, throttle=None, faults=faults).write(payload)

    def _send_file(
        self, response: FileResponse, throttle: float | None, faults: _BodyFaults
    ) -> None:
        """The file's bytes [offset, offset + length) with a Content-Length, read as sent."""
        with response.path.open("rb") as source:
            source.seek(response.offset)
            self._start(
                response.status, {"Content-Length": str(response.length), **response.headers}
            )
            faults.clamp_to(response.length)
            writer = self._body_writer(chunked=False, throttle=throttle, faults=faults)
            remaining = response.length
            while remaining > 0:
                piece = source.read(min(FILE_READ_BYTES, remaining))
                if not piece:  # the file shrank under us: the client must see a short read
                    raise ConnectionDroppedError
                writer.write(piece)
                remaining -= len(piece)
        writer.finish()

    def _body_writer(
        self, *, chunked: bool, throttle: float | None, faults: _BodyFaults
    ) -> _BodyWriter:
        """A body writer for this connection, throttled per connection when asked."""
        bucket = TokenBucket(throttle, self.server.stopping) if throttle else None
        return _BodyWriter(
            self.wfile, chunked=chunked, bucket=bucket, faults=faults, stopping=self.server.stopping
        )

    def _send_stream(
        self, response: StreamResponse, throttle: float | None, faults: _BodyFaults
    ) -> None:
        self._start(response.status, {"Transfer-Encoding": "chunked", **response.headers})
        writer = self._body_writer(chunked=True, throttle=throttle, faults=faults)
        try:
            for chunk in response.chunks:
                writer.write(chunk)
        except (ConnectionDroppedError, OSError):
            raise
        except Exception:
            logger.exception("sandbox stream failed mid-body; dropping the connection")
            raise ConnectionDroppedError from None
        writer.finish()


class SandboxHttpServer(ThreadingHTTPServer):
    """One daemon thread per connection; the TLS handshake runs in that thread, not the acceptor."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(
        self, address: tuple[str, int], ssl_context: ssl.SSLContext, gateway: SandboxGateway
    ) -> None:
        self.ssl_context = ssl_context
        self.gateway = gateway
        self.stopping = threading.Event()
        self._connections: set[ssl.SSLSocket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, SandboxHandler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind resolves the host's FQDN, which can stall without DNS.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)

    def finish_request(self, request: Any, client_address: Any) -> None:
        request.settimeout(HANDSHAKE_TIMEOUT_S)
        try:
            connection = self.ssl_context.wrap_socket(request, server_side=True)
        except OSError:
            return
        with self._connections_lock:
            self._connections.add(connection)
        try:
            self.RequestHandlerClass(connection, client_address, self)
        except OSError:
            pass
        finally:
            with self._connections_lock:
                self._connections.discard(connection)
            _shutdown_socket(connection, socket.SHUT_RDWR)
            connection.close()

    def abort_connections(self) -> None:
        """Wake every handler blocked on its socket so stop() never waits for a client."""
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            _shutdown_socket(connection, socket.SHUT_RDWR)

    def handle_error(self, _request: Any, client_address: Any) -> None:
        logger.debug("sandbox connection from %s failed: %r", client_address, sys.exc_info()[1])


def _shutdown_socket(connection: socket.socket, how: int) -> None:
    """Shut the TCP socket down under TLS: no close_notify, so the peer sees a broken stream."""
    with contextlib.suppress(OSError):
        socket.socket.shutdown(connection, how)


def _basic_auth_username(header: str | None) -> str | None:
    if not header:
        return None
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return decoded.partition(":")[0]
