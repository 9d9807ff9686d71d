"""One sha256 per content: a cached file's bytes depend on its metadata and records only.

Downstream derivations key on the manifest's sha256, so the same symbol-year-product must give
the same bytes whatever `--chunk`, `--engine`, grouping or resume history produced it. The file
is framed canonically: the DBN header as one zstd frame, then one frame per UTC day of
`ts_recv`. Real SDK against the sandbox gateway; nothing is mocked.
"""

from __future__ import annotations

import hashlib
import json
import struct
from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest
import zstandard
from typer.testing import CliRunner

from backend.jobs.cli.app import app
from backend.jobs.core import ranges as plan
from backend.jobs.core.dbn import NS_PER_DAY, TS_RECV_OFFSET, DayFrames, HashingWriter, PartFile
from backend.jobs.core.files import ScratchFiles
from backend.jobs.core.ranges import TimeRange, parse_timestamp_ns
from backend.jobs.core.request import RangeRequest
from backend.jobs.engines.merge import MergedWriter, header_from_parts
from backend.jobs.engines.parts import Part, check_part
from backend.jobs.store.local import LocalStore
from backend.sandbox import Fault
from tests.helpers import decompressed, plain_get_range, year_folder

# month chunks: these tests cut, kill and resume a year between its 12 requests
AAPL_TRADES_2023 = ("data", "--symbol", "AAPL", "--year", "2023", "--products", "trades")
AAPL_TRADES_2023 += ("--chunk", "month")
GET_RANGE = "timeseries.get_range"
RECORD_SIZE = 48  # TradeMsg
PREFIX = struct.Struct("<3sBI")  # DBN magic, version, metadata length


@pytest.fixture(scope="module")
def reference(sandbox, tmp_path_factory) -> Path:
    """AAPL 2023 TRADES fetched the default way (--chunk month): the bytes every way must give."""
    data_dir = tmp_path_factory.mktemp("reference")
    sandbox.reset()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("REQUESTS_CA_BUNDLE", str(sandbox.ca_path))
        patch.setenv("SSL_CERT_FILE", str(sandbox.ca_path))
        patch.setenv("DATABENTO_GATEWAY", sandbox.gateway)
        patch.setenv("DATABENTO_API_KEY", "db-" + "r" * 29)
        result = CliRunner().invoke(
            app, [*AAPL_TRADES_2023, "--data-dir", str(data_dir)], catch_exceptions=False
        )
    assert result.exit_code == 0, result.output
    return year_folder(data_dir) / "TRADES.dbn.zst"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def manifest_entry(data_dir: Path, symbol: str = "AAPL") -> dict:
    manifest = json.loads((year_folder(data_dir, symbol) / "manifest.json").read_text())
    return manifest["products"]["TRADES"]


def frames(data: bytes) -> list[bytes]:
    """The decompressed content of each zstd frame, in order."""
    found = []
    while data:
        frame = zstandard.ZstdDecompressor().decompressobj()
        found.append(frame.decompress(data))
        assert frame.eof
        data = frame.unused_data
    return found


def record_days(records: bytes) -> np.ndarray:
    count = len(records) // RECORD_SIZE
    stamps = np.ndarray((count,), "<u8", records, TS_RECV_OFFSET, (RECORD_SIZE,))
    return stamps // np.uint64(NS_PER_DAY)


def test_reference_decodes_to_one_full_year_request(gateway, reference, tmp_path):
    """Framing changes bytes, never content: the file is what one plain get_range returns."""
    single = plain_get_range(gateway, ["AAPL"], tmp_path / "single.dbn.zst")
    assert decompressed(reference) == decompressed(single)


def test_cached_file_is_a_header_frame_then_one_frame_per_utc_day(reference):
    """The canonical framing: header alone, then each day with records in its own frame."""
    header, *days = frames(reference.read_bytes())
    magic, _, length = PREFIX.unpack_from(header)
    assert magic == b"DBN"
    assert len(header) == PREFIX.size + length
    firsts = []
    for content in days:
        day = record_days(content)
        assert len(day)
        assert (day == day[0]).all()
        firsts.append(int(day[0]))
    every_day = record_days(decompressed(reference)[len(header) :])
    assert firsts == sorted(set(every_day.tolist()))  # in order, each once, none empty


def test_records_frames_are_checksummed_without_content_size(reference):
    """Fixed frame parameters: a checksum on, and no content size that only some paths know."""
    data = reference.read_bytes()
    frame = zstandard.ZstdDecompressor().decompressobj()
    frame.decompress(data)
    first_day = frame.unused_data
    params = zstandard.get_frame_parameters(first_day)
    assert params.has_checksum
    assert params.content_size == zstandard.CONTENTSIZE_UNKNOWN


def small_auto_requests(gateway, monkeypatch) -> None:
    monkeypatch.setattr(plan, "AUTO_REQUEST_BYTES", 40_000)  # a sandbox year is ~6 of them


def served_per_day_at_level_3(gateway, monkeypatch) -> None:
    gateway.frames = "per_day"
    gateway.compression_level = 3


def nothing(gateway, monkeypatch) -> None:
    pass


@pytest.mark.parametrize(
    ("flags", "setup", "requests"),
    [
        (("--chunk", "week"), nothing, 53),
        (("--chunk", "day"), nothing, None),
        (("--chunk", "auto"), nothing, 1),
        (("--chunk", "auto"), small_auto_requests, 12),
        (("--chunk", "auto"), served_per_day_at_level_3, 1),
        (("--chunk", "month"), served_per_day_at_level_3, 12),
        (("--engine", "batch"), nothing, 0),
        (("--engine", "batch", "--chunk", "week"), nothing, 0),
        (("--symbols", "MSFT", "--chunk", "auto"), nothing, 1),
        (("--symbols", "MSFT,NEWCO", "--chunk", "month"), nothing, None),
        (("--symbols", "MSFT", "--group-size", "1", "--chunk", "auto"), nothing, 2),
    ],
    ids=[
        "week",
        "day",
        "auto-one-request",
        "auto-months",
        "auto-served-per-day-frames",
        "month-served-per-day-frames",
        "batch-months",
        "batch-weeks",
        "group-auto",
        "group-month",
        "group-size-1",
    ],
)
def test_sha256_is_the_same_whatever_the_fetch(
    gateway, cli, data_dir, monkeypatch, reference, flags, setup, requests
):
    """Chunking, engine, grouping and how the service frames its answer change no byte."""
    setup(gateway, monkeypatch)
    result = cli(*AAPL_TRADES_2023, *flags)
    assert result.exit_code == 0, result.output
    if requests is not None:
        assert gateway.count(GET_RANGE) == requests
    cached = year_folder(data_dir) / "TRADES.dbn.zst"
    assert cached.read_bytes() == reference.read_bytes()
    assert manifest_entry(data_dir)["sha256"] == sha256(reference)


def test_manifest_names_the_framing_and_the_zstd_that_wrote_it(reference):
    """The same records give the same bytes only with the same zstd: the entry says which."""
    entry = json.loads((reference.parent / "manifest.json").read_text())["products"]["TRADES"]
    assert entry["framing"] == "utc-day"
    assert entry["versions"]["zstandard"] == zstandard.__version__
    assert entry["versions"]["libzstd"] == ".".join(map(str, zstandard.ZSTD_VERSION))


def fail_march(gateway, cli) -> None:
    """A run that finishes January and February, then fails on March (one worker, no retry)."""
    gateway.add_fault(
        Fault(endpoint=GET_RANGE, match=lambda p: p["start"].startswith("2023-03"), status=503)
    )
    failed = cli(*AAPL_TRADES_2023, "--jobs", "1", "--retries", "0")
    assert failed.exit_code == 1, failed.output
    gateway.reset()


def two_frames(metadata: bytes, records: bytes) -> bytes:
    """The layout earlier versions gave parts: the header frame, then all records in one."""
    compressor = zstandard.ZstdCompressor(level=-1, write_checksum=True)
    return compressor.compress(metadata) + compressor.compress(records)


def one_frame(metadata: bytes, records: bytes) -> bytes:
    """A part kept as served by earlier versions: the whole stream in one frame, level 1."""
    return zstandard.ZstdCompressor(level=1).compress(metadata + records)


def as_left(metadata: bytes, records: bytes) -> bytes | None:
    return None


@pytest.mark.parametrize("layout", [as_left, two_frames, one_frame])
def test_resumed_run_gives_the_same_sha256(gateway, cli, data_dir, reference, layout):
    """Parts left by a failed run (or by an older version, framed its way) merge into the same
    bytes: reused, re-encoded, never downloaded again."""
    fail_march(gateway, cli)
    parts = sorted((year_folder(data_dir) / ".parts" / "TRADES").glob("*.dbn.zst"))
    assert len(parts) == 2
    for part in parts:
        content = decompressed(part)
        length = PREFIX.size + PREFIX.unpack_from(content)[2]
        rewritten = layout(content[:length], content[length:])
        if rewritten is not None:
            part.write_bytes(rewritten)
    result = cli(*AAPL_TRADES_2023)
    assert result.exit_code == 0, result.output
    assert "reused_chunks=2" in result.stdout
    assert gateway.count(GET_RANGE) == 10
    assert (year_folder(data_dir) / "TRADES.dbn.zst").read_bytes() == reference.read_bytes()


def test_old_framing_file_in_the_cache_stays_valid(gateway, cli, data_dir, reference):
    """A final file written by an earlier version matches its own manifest: kept, not fetched."""
    final = year_folder(data_dir) / "TRADES.dbn.zst"
    final.parent.mkdir(parents=True)
    content = decompressed(reference)
    length = PREFIX.size + PREFIX.unpack_from(content)[2]
    final.write_bytes(two_frames(content[:length], content[length:]))
    recorded = json.loads((reference.parent / "manifest.json").read_text())
    entry = recorded["products"]["TRADES"]
    entry.update(sha256=sha256(final), bytes=final.stat().st_size)
    del entry["framing"]
    (final.parent / "manifest.json").write_text(json.dumps(recorded))
    result = cli(*AAPL_TRADES_2023, "--verify")
    assert result.exit_code == 0, result.output
    assert "status=skipped" in result.stdout
    assert gateway.count(GET_RANGE) == 0
    assert cli("verify").exit_code == 0


@pytest.mark.parametrize("block_records", [1, 7, 1000])
def test_day_frames_do_not_depend_on_how_records_arrive(monkeypatch, block_records):
    """Each frame is fed in fixed pieces from its start, whatever blocks the records came in;
    days cut at midnight concatenate into the whole range's framing."""
    from backend.jobs.core import dbn as dbnfile

    monkeypatch.setattr(dbnfile, "FRAME_PIECE", 4096)  # several pieces per day
    days = np.repeat(np.arange(19_000, 19_003, dtype=np.uint64), 500)
    rows = np.random.default_rng(7).integers(0, 256, (len(days), RECORD_SIZE), dtype=np.uint8)
    rows[:, TS_RECV_OFFSET : TS_RECV_OFFSET + 8] = (
        (days * np.uint64(NS_PER_DAY) + np.arange(len(days), dtype=np.uint64))
        .view(np.uint8)
        .reshape(-1, 8)
    )
    records = rows.tobytes()

    def encoded(*pieces: bytes, block: int) -> bytes:
        out = []
        for piece in pieces:
            sink = HashingWriter(_Collect(out))
            framer = DayFrames(sink, RECORD_SIZE)
            for start in range(0, len(piece), block * RECORD_SIZE):
                framer.write(piece[start : start + block * RECORD_SIZE])
            framer.close()
        return b"".join(out)

    whole = encoded(records, block=len(days))
    midnight = 500 * RECORD_SIZE
    assert encoded(records, block=block_records) == whole
    assert encoded(records[:midnight], records[midnight:], block=block_records) == whole
    assert len(frames(whole)) == 3


class _Collect:
    def __init__(self, out: list[bytes]) -> None:
        self._out = out

    def write(self, data: bytes) -> int:
        self._out.append(bytes(data))
        return len(data)

    def flush(self) -> None:
        pass


def merged_from(gateway, tmp_path: Path, cuts: list[str], name: str) -> bytes:
    """Three days of AAPL fetched in chunks cut at `cuts`, merged by the engine's writer."""
    bounds = ["2023-03-01T00:00:00Z", *cuts, "2023-03-04T00:00:00Z"]
    spans = [
        TimeRange(parse_timestamp_ns(start), parse_timestamp_ns(end))
        for start, end in pairwise(bounds)
    ]
    span = TimeRange(spans[0].start_ns, spans[-1].end_ns)
    whole = RangeRequest("XNAS.ITCH", ("AAPL",), "trades", span)
    folder = tmp_path / name
    folder.mkdir()
    parts = []
    for index, (start, end) in enumerate(pairwise(bounds)):
        served = plain_get_range(
            gateway, ["AAPL"], folder / f"{index}.served", start=start, end=end
        )
        request = RangeRequest("XNAS.ITCH", ("AAPL",), "trades", spans[index])
        path = folder / f"{index}.part"
        summary = check_part(served, request, RECORD_SIZE, recode_to=path)
        layout = PartFile.written(path, summary.metadata_bytes)
        parts.append(Part(request, path, summary, downloaded=True, layout=layout))
    writer = MergedWriter(
        folder / "final",
        whole,
        spans,
        header_from_parts(parts, whole.span),
        ScratchFiles(),
        destination=(LocalStore(folder), "final"),
    )
    for part in reversed(parts):
        writer.add(part)
    merged = writer.finish()
    assert merged.sha256 == sha256(folder / "final")
    return (folder / "final").read_bytes()


def test_parts_that_share_a_day_are_merged_into_the_canonical_bytes(gateway, tmp_path):
    """Chunks cut inside a day (not this tool's plan, but a service's files might be) still
    give the canonical file: the merge re-encodes rather than leave a day in two frames."""
    one = merged_from(gateway, tmp_path, [], "one")
    at_midnight = merged_from(gateway, tmp_path, ["2023-03-02T00:00:00Z"], "midnight")
    mid_session = merged_from(
        gateway, tmp_path, ["2023-03-01T17:00:00Z", "2023-03-02T16:00:00Z"], "inside"
    )
    assert at_midnight == one
    assert mid_session == one
    assert len(frames(one)) == 4
