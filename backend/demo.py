"""`make demo`: the real `data` command, offline, against the bundled sandbox gateway.

Starts the sandbox in a subprocess, runs a dry run, the download, a cached re-run, `status` and
`verify` into data/demo/ (never the real cache), shows what the files hold, stops the sandbox.

`make demo-s3` (`--s3`): the same into a bucket of a local S3 server (moto, on a loopback port),
`--data-dir s3://bento-demo/cache`, with data/demo-work/ as the local scratch.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from backend.sandbox.s3server import LocalS3Server

REPO = Path(__file__).resolve().parents[1]
DEMO_DIR = REPO / "data" / "demo"
DEMO_WORK = REPO / "data" / "demo-work"
DEMO_BUCKET, DEMO_PREFIX = "bento-demo", "cache"
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
    from backend.jobs.core.ranges import format_ns

    return format_ns(int(ns))


def describe(where: str, files: dict[str, bytes]) -> None:
    """What a downstream user sees, read back with the SDK itself."""
    import databento

    print(f"\nFiles in {where}:")
    for name, body in sorted(files.items()):
        if not name.endswith(".dbn.zst"):
            continue
        store = databento.DBNStore.from_bytes(body)
        ts_recv = store.to_ndarray()["ts_recv"]
        first, last = (stamp(ts_recv[0]), stamp(ts_recv[-1])) if len(ts_recv) else ("-", "-")
        print(
            f"  {name:<16} {len(body):>12,} bytes  {len(ts_recv):>9,} records  "
            f"schema={store.schema}  ts_recv {first} .. {last}"
        )
    print(f"  manifest.json    {len(files['manifest.json']):>12,} bytes")


def local_files(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in folder.iterdir() if path.is_file()}


def bucket_files(s3: LocalS3Server, prefix: str) -> dict[str, bytes]:
    client = s3.client()
    listed = client.list_objects_v2(Bucket=DEMO_BUCKET, Prefix=prefix)
    return {
        item["Key"].rsplit("/", 1)[-1]: client.get_object(Bucket=DEMO_BUCKET, Key=item["Key"])[
            "Body"
        ].read()
        for item in listed.get("Contents", [])
    }


def main() -> int:
    use_s3 = "--s3" in sys.argv[1:]
    shutil.rmtree(DEMO_DIR / "raw", ignore_errors=True)
    DEMO_DIR.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        state = stack.enter_context(tempfile.TemporaryDirectory(prefix="sandbox-"))
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
        common = ["--symbol", SYMBOL, "--year", YEAR]
        s3 = None
        if use_s3:
            s3 = stack.enter_context(LocalS3Server())
            s3.create_bucket(DEMO_BUCKET)
            env.update(s3.env(), DATA_DIR=f"s3://{DEMO_BUCKET}/{DEMO_PREFIX}")
            shutil.rmtree(DEMO_WORK, ignore_errors=True)
            common += ["--work-dir", str(DEMO_WORK)]
            print(f"local S3 server at {s3.endpoint}, bucket {DEMO_BUCKET}", flush=True)
        try:
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
            relative = f"raw/databento/{SYMBOL}/{YEAR}"
            if s3 is not None:
                where = f"s3://{DEMO_BUCKET}/{DEMO_PREFIX}/{relative}"
                describe(where, bucket_files(s3, f"{DEMO_PREFIX}/{relative}/"))
            else:
                folder = DEMO_DIR / relative
                describe(str(folder.relative_to(REPO)), local_files(folder))
        finally:
            server.terminate()
            server.wait(timeout=10)
    print("\nDone. With a real key: make data SYMBOL=AAPL YEAR=2023 (DATABENTO_API_KEY set)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
