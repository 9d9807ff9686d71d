"""The only reader of the environment: API key, gateway, data folder, budget."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from backend.jobs.errors import InvalidInputError

REPO_DATA_DIR = Path(__file__).resolve().parents[2] / "data"
API_KEY_ENV = "DATABENTO_API_KEY"


class Secret:
    """A string that never shows itself in reprs, logs or tracebacks."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('**********')"

    __str__ = __repr__


@dataclass(frozen=True)
class Settings:
    api_key: Secret | None
    gateway: str | None
    data_dir: Path
    max_cost: float | None

    @classmethod
    def from_env(
        cls,
        environ: Mapping[str, str] | None = None,
        *,
        gateway: str | None = None,
        data_dir: Path | None = None,
        max_cost: float | None = None,
    ) -> Settings:
        """Flags win over the environment, which wins over the defaults."""
        env = os.environ if environ is None else environ
        key = env.get(API_KEY_ENV, "").strip()
        return cls(
            api_key=Secret(key) if key else None,
            gateway=normalize_gateway(gateway or env.get("DATABENTO_GATEWAY") or None),
            data_dir=Path(data_dir or env.get("DATA_DIR") or REPO_DATA_DIR).expanduser(),
            max_cost=max_cost if max_cost is not None else parse_max_cost(env),
        )

    def require_key(self) -> Secret:
        from backend.jobs.errors import CredentialsError

        if self.api_key is None:
            raise CredentialsError(
                f"{API_KEY_ENV} is not set: export your Databento API key "
                f"(export {API_KEY_ENV}=db-...) and run again"
            )
        return self.api_key


def parse_max_cost(env: Mapping[str, str]) -> float | None:
    raw = env.get("DATABENTO_MAX_COST", "").strip()
    if not raw:
        return None
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value >= 0:
        raise InvalidInputError(
            f"DATABENTO_MAX_COST={raw!r} is not a number of USD >= 0: set it like 25.00 or unset it"
        )
    return value


def normalize_gateway(raw: str | None) -> str | None:
    """`127.0.0.1:8443`, `host:port` or an https URL -> `https://host[:port]` for the SDK.

    The SDK rewrites any gateway to https and mangles `localhost:8443` (read as a URL scheme),
    so we hand it a full URL without a trailing slash.
    """
    if raw is None:
        return None
    text = raw.strip()
    fix = "use HOST:PORT or https://HOST[:PORT], e.g. --gateway 127.0.0.1:8443"
    if "://" not in text:
        text = f"https://{text}"
    parts = urlsplit(text)
    if parts.username or parts.password or parts.query or parts.fragment:
        raise InvalidInputError(
            f"gateway must not carry credentials, a query or a fragment: {fix}; "
            "the API key is read from DATABENTO_API_KEY only"
        )
    try:
        port = parts.port
    except ValueError:
        raise InvalidInputError(f"gateway {raw!r} has an invalid port: {fix}") from None
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        raise InvalidInputError(f"gateway {raw!r} is not a host or URL: {fix}")
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    netloc = f"{host}:{port}" if port else host
    return f"https://{netloc}{parts.path.rstrip('/')}"
