"""`make demo`: the real `data` command, offline, against the bundled sandbox gateway.

Starts the sandbox in a subprocess, runs a dry run, the download, a cached re-run, `status` and
`verify` into data/demo/ (never the real cache), shows what the files hold, stops the sandbox.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEMO_DIR = REPO / "data" / "demo"
SYMBOL, YEAR = "AAPL", "2023"
RECORDS_PER_DAY = 2_000
STARTUP_TIMEOUT_S = 30


def start_sandbox(state_dir: Path) -> tuple[subprocess.Popen[bytes], str]:
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "backend.sandbox",
            "serve",
            "--state-dir",
            str(state_dir),
            "--records-per-day",
            str(RECORDS_PER_DAY),
        ],
        cwd=REPO,
    )
    gateway_file = state_dir / "gateway"
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while not gateway_file.exists():
        if server.poll() is not None or time.monotonic() > deadline:
            server.kill()
            sys.exit("demo: the sandbox gateway did not start; see the lines above")
        time.sleep(0.1)
    return server, gateway_file.read_text().strip()


def run(step: str, *args: str, env: dict[str, str]) -> int:
    print(f"\n$ python -m backend.jobs.cli {' '.join(args)}    # {step}", flush=True)
    return subprocess.call([sys.executable, "-m", "backend.jobs.cli", *args], cwd=REPO, env=env)


def stamp(ns: int) -> str:
    from backend.jobs.plan import format_ns

    return format_ns(int(ns))


def describe(folder: Path) -> None:
    """What a downstream user sees, read back with the SDK itself."""
    import databento

    print(f"\nFiles in {folder.relative_to(REPO)}:")
    for path in sorted(folder.glob("*.dbn.zst")):
        store = databento.DBNStore.from_bytes(path.read_bytes())
        ts_recv = store.to_ndarray()["ts_recv"]
        first, last = (stamp(ts_recv[0]), stamp(ts_recv[-1])) if len(ts_recv) else ("-", "-")
        print(
            f"  {path.name:<16} {path.stat().st_size:>12,} bytes  {len(ts_recv):>9,} records  "
            f"schema={store.schema}  ts_recv {first} .. {last}"
        )
    print(f"  manifest.json    {(folder / 'manifest.json').stat().st_size:>12,} bytes")


def main() -> int:
    shutil.rmtree(DEMO_DIR / "raw", ignore_errors=True)
    DEMO_DIR.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="sandbox-") as state:
        server, gateway = start_sandbox(Path(state))
        ca = str(Path(state) / "ca.pem")
        env = {
            **os.environ,
            "DATABENTO_API_KEY": "db-demo" + secrets.token_hex(12),
            "DATABENTO_GATEWAY": gateway,
            "REQUESTS_CA_BUNDLE": ca,
            "SSL_CERT_FILE": ca,
            "DATA_DIR": str(DEMO_DIR),
        }
        try:
            common = ["--symbol", SYMBOL, "--year", YEAR]
            steps = [
                ("what would it cost?", ["data", *common, "--dry-run"]),
                ("download, chunked and merged", ["data", *common]),
                ("again: everything cached, no request", ["data", *common]),
                ("what the cache holds", ["status"]),
                ("re-hash against the manifest", ["verify"]),
            ]
            for step, args in steps:
                code = run(step, *args, env=env)
                if code:
                    print(f"demo: step '{step}' exited {code}", file=sys.stderr)
                    return code
            describe(DEMO_DIR / "raw" / "databento" / SYMBOL / YEAR)
        finally:
            server.terminate()
            server.wait(timeout=10)
    print("\nDone. With a real key: make data SYMBOL=AAPL YEAR=2023 (DATABENTO_API_KEY set)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
