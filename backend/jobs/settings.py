"""The only reader of the environment: API key, gateway, data folder, budget."""

from __future__ import annotations

import math
import os
import re
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from backend.jobs.core.files import writable_folder
from backend.jobs.core.locations import StoreLocation, looks_like_url, redact_url, s3_location
from backend.jobs.core.secret import Secret
from backend.jobs.core.units import Engine, parse_engine
from backend.jobs.errors import IngestError, InvalidInputError

REPO_DATA_DIR = Path(__file__).resolve().parents[2] / "data"
API_KEY_ENV = "DATABENTO_API_KEY"
CLUSTER_ENV = "DASK_SCHEDULER_ADDRESS"  # Dask's own variable: --cluster's default
API_KEY_SHAPE = re.compile(r"db-[A-Za-z0-9]{29}(?![A-Za-z0-9])", re.IGNORECASE)


@dataclass(frozen=True)
class Settings:
    """What the environment and the flags say.

    Each setting is checked only where it is used, so a command (or a fully cached run) never
    fails on a setting it does not need.
    """

    api_key: Secret | None
    data_dir: Path
    gateway_text: str | None = None
    max_cost_flag: float | None = None
    max_cost_env: str = ""
    engine_env: str = ""
    data_url: str | None = None  # the data dir as a URL (s3://bucket/prefix)
    data_source: str = "--data-dir"  # where the data dir was given, for messages: or DATA_DIR
    work_dir: Path | None = None  # --work-dir: local scratch of a bucket's run
    work_dir_url: str | None = None  # --work-dir given as a URL: refused, it is a local folder
    cache_home: Path = Path("~/.cache")  # XDG_CACHE_HOME: the default work dir lives there
    aws_http_endpoint: bool = False  # AWS_ENDPOINT_URL is plain http (a local S3 server)
    aws_profile: bool = False  # credentials come from ~/.aws profiles (boto3's chain)
    cluster_text: str | None = None  # --cluster, else DASK_SCHEDULER_ADDRESS: where work runs

    @classmethod
    def from_env(
        cls,
        environ: Mapping[str, str] | None = None,
        *,
        gateway: str | None = None,
        data_dir: str | Path | None = None,
        max_cost: float | None = None,
        work_dir: str | None = None,
        cluster: str | None = None,
    ) -> Settings:
        """Flags win over the environment, which wins over the defaults; empty means unset."""
        env = os.environ if environ is None else environ
        key = env.get(API_KEY_ENV, "").strip()
        flag = str(data_dir or "").strip()
        folder = flag or env.get("DATA_DIR", "").strip()
        gateway_text = (gateway or "").strip() or env.get("DATABENTO_GATEWAY", "").strip()
        url = folder if looks_like_url(folder) else None
        scratch = (work_dir or "").strip()
        scratch_url = scratch if looks_like_url(scratch) else None
        endpoint = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL") or ""
        return cls(
            api_key=Secret(key) if key else None,
            data_dir=Path(folder).expanduser() if folder and not url else REPO_DATA_DIR,
            gateway_text=gateway_text or None,
            max_cost_flag=max_cost,
            max_cost_env=env.get("DATABENTO_MAX_COST", "").strip(),
            engine_env=env.get("DATABENTO_ENGINE", "").strip(),
            data_url=url,
            data_source="--data-dir" if flag else "DATA_DIR",
            work_dir=Path(scratch).expanduser() if scratch and not scratch_url else None,
            work_dir_url=scratch_url,
            aws_http_endpoint=endpoint.strip().lower().startswith("http://"),
            aws_profile=uses_aws_profile(env),
            cache_home=Path(env.get("XDG_CACHE_HOME") or "~/.cache").expanduser(),
            cluster_text=(cluster or "").strip() or env.get(CLUSTER_ENV, "").strip() or None,
        )

    def store_location(self) -> StoreLocation:
        """The data dir as plain values, for `store.open_store` (no credentials in it)."""
        return StoreLocation(
            self.data_url or str(self.data_dir),
            self.data_source,
            allow_http=self.aws_http_endpoint,
            aws_profile=self.aws_profile,
        )

    def work_root(self) -> Path:
        """The local folder for parts and files being written; flags checked (exit 2).

        A local data dir keeps its parts beside its files; a bucket's go to --work-dir
        (default: a cache folder of this user), one folder per bucket and prefix.
        """
        if self.work_dir_url is not None:
            raise InvalidInputError(
                f"--work-dir {redact_url(self.work_dir_url)!r} is a URL: it takes a local folder "
                "(the scratch for parts and files before upload), e.g. --work-dir /scratch/bento"
            )
        if self.data_url is None:
            if self.work_dir is not None:
                raise InvalidInputError(
                    "--work-dir is for s3:// data dirs: a local data dir keeps its parts beside "
                    "its files; drop --work-dir or point --data-dir at a bucket"
                )
            return self.data_dir
        bucket, prefix = s3_location(self.data_url, self.data_source)
        return (self.work_dir or self.cache_home / "bento-ingest" / "work") / bucket / prefix

    def check_work_root(self, work_root: Path) -> None:
        """Before any request: a bucket's work dir must take files (created if absent), else exit
        2 naming it by its flag. A local data dir is the work root itself: its final paths are
        checked instead (the store's `check_writable`)."""
        if self.data_url is None:
            return
        problem = writable_folder(work_root)
        if problem is None:
            return
        if self.work_dir is not None:
            raise InvalidInputError(
                f"--work-dir {self.work_dir} is not writable: {problem}; pick a writable folder"
            )
        raise InvalidInputError(
            f"the work dir {work_root} is not writable: {problem}; pick a writable folder with "
            "--work-dir"
        )

    def check_work_room(self, work_root: Path, needed: int) -> None:
        """A bucket's run writes its parts and merged files in the work dir before uploading
        them: room for them, up front. (A local data dir keeps what it writes: a full disk is
        said when it happens, naming the folder being written.)"""
        if self.data_url is None:
            return
        work_root.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(work_root).free
        if free < needed:
            raise IngestError(
                f"the work dir {work_root} has {free / 1e6:,.0f} MB free; this run needs up to "
                f"{needed / 1e6:,.0f} MB there (parts and merged files before they are uploaded): "
                "free some space or choose another --work-dir"
            )

    def require_key(self) -> Secret:
        from backend.jobs.errors import CredentialsError

        if self.api_key is None:
            raise CredentialsError(
                f"{API_KEY_ENV} is not set: export your Databento API key "
                f"(export {API_KEY_ENV}=db-...) and run again"
            )
        return self.api_key

    def cluster(self) -> str | None:
        """Where the downloads run: None (this process), `local[:N]` or a scheduler's
        tcp://HOST:PORT; refused (exit 2) if it is none of them."""
        return parse_cluster(self.cluster_text)

    def gateway_url(self) -> str | None:
        """The gateway as the SDK wants it; refused (exit 2) before any connection if malformed."""
        return normalize_gateway(self.gateway_text, self.api_key.reveal() if self.api_key else "")

    def engine(self) -> Engine:
        """DATABENTO_ENGINE (--engine wins over it), else auto; refused (exit 2) if unknown."""
        if not self.engine_env:
            return "auto"
        return parse_engine(self.engine_env, "DATABENTO_ENGINE")

    def budget(self) -> float | None:
        """--max-cost, else DATABENTO_MAX_COST; refused (exit 2) unless a finite USD >= 0."""
        if self.max_cost_flag is not None:
            return valid_budget(self.max_cost_flag, f"--max-cost {self.max_cost_flag}")
        if not self.max_cost_env:
            return None
        try:
            value = float(self.max_cost_env)
        except ValueError:
            value = math.nan
        return valid_budget(value, f"DATABENTO_MAX_COST={self.max_cost_env!r}")


def uses_aws_profile(env: Mapping[str, str]) -> bool:
    """Whether S3 credentials must come from ~/.aws profiles rather than the environment or the
    instance: then boto3's credential chain is used (slower to start, so only then)."""
    if env.get("AWS_PROFILE"):
        return True
    if env.get("AWS_ACCESS_KEY_ID") or env.get("AWS_WEB_IDENTITY_TOKEN_FILE"):
        return False
    files = (
        env.get("AWS_SHARED_CREDENTIALS_FILE") or "~/.aws/credentials",
        env.get("AWS_CONFIG_FILE") or "~/.aws/config",
    )
    return any(Path(name).expanduser().is_file() for name in files)


def parse_cluster(raw: str | None) -> str | None:
    """`local`, `local:N` (N worker processes) or `tcp://HOST:PORT` / `tls://HOST:PORT`."""
    if raw is None:
        return None
    text = raw.strip()
    head, _, count = text.partition(":")
    if head.lower() == "local" and (not count or (count.isdigit() and 1 <= int(count) <= 256)):
        return text.lower()
    parts = urlsplit(text)
    try:
        port = parts.port
    except ValueError:
        port = None
    if parts.scheme in {"tcp", "tls"} and parts.hostname and port and parts.path in {"", "/"}:
        return f"{parts.scheme}://{parts.netloc}"
    raise InvalidInputError(
        f"--cluster {text!r} is not a Dask scheduler address: use tcp://HOST:PORT (e.g. "
        "tcp://10.0.0.5:8786), local or local:N (N worker processes on this machine)"
    )


def valid_budget(value: float, source: str) -> float:
    if not math.isfinite(value) or value < 0:
        raise InvalidInputError(
            f"{source} is not a number of USD >= 0: pass an amount like 25.00 (or leave it unset)"
        )
    return value


def looks_like_api_key(text: str, key: str) -> bool:
    """`db-` and 29 characters, or the configured key itself, in any case."""
    return bool(API_KEY_SHAPE.search(text)) or bool(key and key.lower() in text.lower())


def normalize_gateway(raw: str | None, key: str = "") -> str | None:
    """`127.0.0.1:8443`, `host:port` or an https URL -> `https://host[:port]` for the SDK.

    The SDK rewrites any gateway to https and mangles `localhost:8443` (read as a URL scheme),
    so we hand it a full URL without a trailing slash.
    """
    if raw is None:
        return None
    text = raw.strip()
    fix = "use HOST:PORT or https://HOST[:PORT], e.g. --gateway 127.0.0.1:8443"
    if looks_like_api_key(text, key):
        # Never echoed, and never looked up in DNS: it would leave the machine.
        raise InvalidInputError(
            f"the gateway (--gateway / DATABENTO_GATEWAY) looks like an API key: {fix}; "
            f"the key belongs in {API_KEY_ENV}"
        )
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
