"""Shared pytest fixtures."""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from backend.jobs.cli.app import app
from backend.sandbox import SandboxGateway
from backend.sandbox.s3server import LocalS3Server

SANDBOX_AVAILABLE_END = datetime(2025, 6, 1, tzinfo=UTC)


@pytest.fixture(scope="session")
def sandbox() -> Iterator[SandboxGateway]:
    """One sandbox gateway for the whole session (20 records/day, data until 2025-06-01)."""
    gateway = SandboxGateway(records_per_day=20, available_end=SANDBOX_AVAILABLE_END)
    with gateway:
        yield gateway


@pytest.fixture
def api_key() -> str:
    """A recognisable random 32-character API key."""
    return "db-" + secrets.token_hex(15)[:29]


@pytest.fixture
def gateway(
    sandbox: SandboxGateway, api_key: str, monkeypatch: pytest.MonkeyPatch
) -> SandboxGateway:
    """The reset sandbox, with the SDK's environment (CA bundle, gateway, key) pointing at it."""
    sandbox.reset()
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(sandbox.ca_path))
    monkeypatch.setenv("SSL_CERT_FILE", str(sandbox.ca_path))
    monkeypatch.setenv("DATABENTO_GATEWAY", sandbox.gateway)
    monkeypatch.setenv("DATABENTO_API_KEY", api_key)
    return sandbox


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The cache root for one test (DATA_DIR), not created in advance."""
    folder = tmp_path / "data"
    monkeypatch.setenv("DATA_DIR", str(folder))
    return folder


@pytest.fixture
def cli() -> Callable[..., Result]:
    """Run the Typer app in-process; unexpected exceptions fail the test loudly."""
    runner = CliRunner()

    def invoke(*args: str) -> Result:
        return runner.invoke(app, list(args), catch_exceptions=False)

    return invoke


@dataclass
class ProcessGateway:
    """A sandbox for CLI subprocesses: `env` carries the key, gateway and CA bundle."""

    sandbox: SandboxGateway
    env: dict[str, str]

    def reset(self) -> None:
        self.sandbox.reset()

    def count(self, endpoint: str) -> int:
        return self.sandbox.count(endpoint)


@pytest.fixture(scope="session")
def slow_sandbox() -> Iterator[SandboxGateway]:
    """A throttled gateway: a year of trades takes several seconds, so runs can be interrupted."""
    gateway = SandboxGateway(
        records_per_day=250, throttle_bytes_per_s=60_000, available_end=SANDBOX_AVAILABLE_END
    )
    with gateway:
        yield gateway


@pytest.fixture
def slow_gateway(slow_sandbox: SandboxGateway) -> ProcessGateway:
    slow_sandbox.reset()
    env = {
        **os.environ,
        "REQUESTS_CA_BUNDLE": str(slow_sandbox.ca_path),
        "SSL_CERT_FILE": str(slow_sandbox.ca_path),
        "DATABENTO_GATEWAY": slow_sandbox.gateway,
        "DATABENTO_API_KEY": "db-" + secrets.token_hex(15)[:29],
    }
    return ProcessGateway(slow_sandbox, env)


@pytest.fixture(scope="session")
def s3_server() -> Iterator[LocalS3Server]:
    """One local S3 server (moto in server mode on a free loopback port) for the session;
    tests reset it through their own bucket fixtures."""
    with LocalS3Server() as server:
        yield server


@pytest.fixture
def s3(
    s3_server: LocalS3Server, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> LocalS3Server:
    """The reset server with one empty bucket (the test module's `BUCKET`); the standard AWS
    variables point at it."""
    s3_server.reset()
    s3_server.create_bucket(request.module.BUCKET)
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    return s3_server
