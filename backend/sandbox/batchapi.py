"""The batch endpoints: submit_job, get_job_details, list_jobs, list_files and the downloads.

Jobs belong to no particular key: every accepted key sees every job (one team, one user).
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING
from urllib.parse import unquote

from backend.sandbox import errors
from backend.sandbox.batch import JOB_STATES, BatchJob, Timeline, new_job_id
from backend.sandbox.batchfiles import SPLIT_DURATIONS, BatchFile, BatchRequest
from backend.sandbox.catalog import ALL_STYPES, COMPRESSIONS, ENCODINGS
from backend.sandbox.responses import FileResponse, JsonResponse, Response, StreamResponse
from backend.sandbox.timestamps import NS_PER_SECOND

if TYPE_CHECKING:
    from backend.sandbox.bodies import RangeQuery
    from backend.sandbox.endpoints import ApiCall
    from backend.sandbox.gateway import SandboxGateway

# A file download, `/v0/batch/download/<user_id>/<job_id>/<filename>`, is recorded, counted
# and matched by faults under this name, with user_id, job_id, filename and range as params.
FILE_ENDPOINT = "batch/download"
# The values list_jobs' `states` filter is documented to take (the SDK's JobState); a job can
# still show `received` before it is queued, but that is no filter value.
FILTER_STATES = ("queued", "processing", "done", "expired")
# Without `states`: "all except expired", as documented; read here as every state a job can
# show, `received` included (whether the service lists a just-received job then is not
# documented; our client relies only on the documented "all", see client.jobs_since).
DEFAULT_LISTED_STATES = frozenset(JOB_STATES) - {"expired"}
# What answers a submit when SandboxGateway.batch_submit_answer is "502": a proxy in front of
# the service, which created the job all the same (nginx's page, as text/html).
PROXY_502_BODY = (
    b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    b"<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n"
    b"</body>\r\n</html>\r\n"
)
DOCS_BATCH = "https://databento.com/docs/api-reference-historical/batch"
FTP_HOST = "ftp.databento.com"
_RANGE_RE = re.compile(r"bytes=(\d+)-(\d*)")
_JSON = {"Content-Type": "application/json"}


def file_request_params(endpoint: str) -> dict[str, str] | None:
    """user_id, job_id and filename of a file download path (the path after /v0/)."""
    prefix = FILE_ENDPOINT + "/"
    if not endpoint.startswith(prefix):
        return None
    parts = [unquote(part) for part in endpoint.removeprefix(prefix).split("/")]
    if len(parts) != 3 or not all(parts):
        return None
    user_id, job_id, filename = parts
    return {"user_id": user_id, "job_id": job_id, "filename": filename}


def submit_job(
    gw: SandboxGateway, call: ApiCall, query: RangeQuery, record_count: int, cost_usd: float
) -> Response:
    """Record a job for a query validated like get_range; it starts in the `received` state.

    Its files start being written now, on a background thread (before this answers when the
    job has no processing time): it is done once both its processing time has passed and its
    files are written. The job object shows its symbols as `gw.batch_symbols` says, and the
    answer is lost, the job created all the same, when `gw.batch_submit_answer` says so.
    """
    request = _batch_request(call, query)
    received_ns = time.time_ns()
    job_id = new_job_id(query.dataset, received_ns)
    processing_ns = round(gw.batch_processing_s * NS_PER_SECOND)
    job = BatchJob(
        job_id=job_id,
        request=request,
        source=gw.job_source(),
        timeline=Timeline(
            received_ns=received_ns,
            processing_ns=processing_ns,
            expiry_ns=round(gw.batch_expiry_s * NS_PER_SECOND),
        ),
        record_count=record_count,
        record_size=query.record_size,
        cost_usd=cost_usd,
        directory=gw.batch_directory(job_id),
        symbols_shape=gw.batch_symbols,
    )
    gw.batch_book.add(job)
    job.start_writing(background=processing_ns > 0)
    return _submit_answer(gw.batch_submit_answer, job)


def _submit_answer(lost: str, job: BatchJob) -> Response:
    """The answer to a submit whose job exists now: its job object, or a lost answer.

    "502": a proxy's 502 page (HTML, not the API's JSON). "cut": a 200's status line and
    headers, then the connection is reset before the first byte of the job object (the
    server drops a connection whose body fails with an OSError).
    """
    if lost == "502":
        return StreamResponse(
            iter([PROXY_502_BODY]), status=502, headers={"Content-Type": "text/html"}
        )
    if lost == "cut":
        return StreamResponse(_reset_before_any_byte(job.id), headers=_JSON)
    return JsonResponse(job.submitted_details())


def _reset_before_any_byte(job_id: str) -> Iterator[bytes]:
    raise ConnectionResetError(f"sandbox: the answer to the submit of {job_id} is lost")
    yield b""  # a generator: raises when the server asks for the first piece of the body


def get_job_details(gw: SandboxGateway, call: ApiCall) -> Response:
    return JsonResponse(_known_job(gw, call).details(time.time_ns()))


def list_jobs(gw: SandboxGateway, call: ApiCall) -> Response:
    """Jobs in the given states submitted since `since`, oldest first; short form by default
    (id, state, ts_received), the full job objects with short=False."""
    states = _listed_states(call)
    since = call.timestamp("since")
    short = call.boolean("short", default=True)
    now_ns = time.time_ns()
    listed = [
        job
        for job in gw.batch_book.jobs()
        if job.state_at(now_ns) in states
        and (since is None or job.timeline.received_ns >= since[0])
    ]
    return JsonResponse(
        [job.short_details(now_ns) if short else job.details(now_ns) for job in listed]
    )


def list_files(gw: SandboxGateway, call: ApiCall) -> Response:
    """Nothing before the job is done; then its data files and support files (written by
    then: a done job answers at once)."""
    now_ns = time.time_ns()
    job = _unexpired(_known_job(gw, call), now_ns)
    if job.state_at(now_ns) != "done":
        return JsonResponse([])
    return JsonResponse([_file_entry(gw, job, batch_file) for batch_file in job.files().all])


def download_job(gw: SandboxGateway, call: ApiCall) -> Response:
    """The whole job as one zip archive (no Range support)."""
    now_ns = time.time_ns()
    job = _unexpired(_known_job(gw, call), now_ns)
    if job.state_at(now_ns) != "done":
        raise errors.business_error(
            404,
            "batch_job_not_done",
            f"Batch job {job.id} is not done yet.",
            docs=DOCS_BATCH,
            payload={"job_id": job.id, "state": job.state_at(now_ns)},
        )
    path = job.zip_path()
    headers = {
        "Content-Type": "application/zip",
        "Content-Disposition": f'attachment; filename="{job.id}.zip"',
    }
    return FileResponse(path, 0, path.stat().st_size, headers=headers)


def download_file(gw: SandboxGateway, call: ApiCall) -> Response:
    """One file of a done job, whole or the byte range the Range header asks for."""
    job_id, filename = call.params.get("job_id", ""), call.params.get("filename", "")
    job = gw.batch_book.get(job_id)
    if job is None or call.params.get("user_id") != job.user_id:
        raise _job_not_found(job_id)
    now_ns = time.time_ns()
    _unexpired(job, now_ns)
    batch_file = job.file_named(filename) if job.state_at(now_ns) == "done" else None
    if batch_file is None:
        raise errors.business_error(
            404,
            "batch_file_not_found",
            f"File {filename} of batch job {job_id} was not found.",
            docs=DOCS_BATCH,
            payload={"job_id": job_id, "filename": filename},
        )
    return _ranged_file(batch_file, call.range_header)


def _batch_request(call: ApiCall, query: RangeQuery) -> BatchRequest:
    """submit_job's own parameters, checked after get_range's."""
    encoding = call.choice("encoding", ENCODINGS, default="csv")
    compression = call.choice("compression", COMPRESSIONS, default="none")
    split_duration = call.choice("split_duration", SPLIT_DURATIONS, default="day")
    request = BatchRequest(
        dataset=query.dataset,
        schema=query.schema,
        symbols=tuple(query.symbols),
        stype_in=call.choice("stype_in", ALL_STYPES, default="raw_symbol"),
        stype_out=call.choice("stype_out", ALL_STYPES, default="instrument_id"),
        start_ns=query.start_ns,
        end_ns=query.end_ns,
        encoding=encoding,
        compression="zstd" if compression == "zstd" else "none",
        pretty_px=call.boolean("pretty_px", default=False),
        pretty_ts=call.boolean("pretty_ts", default=False),
        map_symbols=call.boolean("map_symbols", default=False),
        split_duration=split_duration,
        split_size=call.positive_int("split_size"),
        delivery=call.choice("delivery", ("download",), default="download"),
    )
    split_symbols = call.boolean("split_symbols", default=False)
    if encoding != "dbn":
        raise errors.encoding_unsupported(encoding)
    if split_symbols:
        raise _unsupported(
            "sandbox_split_symbols_unsupported",
            "The sandbox gateway does not split batch files by symbol; "
            "submit with split_symbols=False.",
            {"split_symbols": True},
        )
    if query.limit is not None:
        raise _unsupported(
            "sandbox_batch_limit_unsupported",
            "The sandbox gateway does not take a `limit` for batch jobs; "
            "use timeseries.get_range for a limited number of records.",
            {"limit": query.limit},
        )
    return request


def _unsupported(case: str, message: str, payload: dict[str, object]) -> errors.ApiError:
    return errors.business_error(422, case, message, docs=DOCS_BATCH, payload=payload)


def _listed_states(call: ApiCall) -> frozenset[str]:
    """The documented filter values asked for (422 for any other, `received` included), or
    every state but expired without a filter."""
    text = call.optional("states")
    if text is None:
        return DEFAULT_LISTED_STATES
    states = [state.strip() for state in text.split(",") if state.strip()]
    for state in states:
        if state not in FILTER_STATES:
            raise errors.enum_error(call.location, "states", state, FILTER_STATES)
    return frozenset(states)


def _known_job(gw: SandboxGateway, call: ApiCall) -> BatchJob:
    job_id = call.optional("job_id")
    if job_id is None:
        raise errors.missing_error(call.location, "job_id")
    job = gw.batch_book.get(job_id)
    if job is None:
        raise _job_not_found(job_id)
    return job


def _job_not_found(job_id: str) -> errors.ApiError:
    return errors.business_error(
        404,
        "batch_job_not_found",
        f"Batch job {job_id} was not found.",
        docs=DOCS_BATCH,
        payload={"job_id": job_id},
    )


def _unexpired(job: BatchJob, now_ns: int) -> BatchJob:
    """The job, unless its files have expired (404 batch_job_expired)."""
    if job.state_at(now_ns) == "expired":
        raise errors.business_error(
            404,
            "batch_job_expired",
            f"Batch job {job.id} has expired; its files are no longer available.",
            docs=DOCS_BATCH,
            payload={"job_id": job.id},
        )
    return job


def _file_entry(gw: SandboxGateway, job: BatchJob, batch_file: BatchFile) -> dict[str, object]:
    location = f"{job.user_id}/{job.id}/{batch_file.filename}"
    return {
        "filename": batch_file.filename,
        "size": batch_file.size,
        "hash": None if gw.batch_file_hashes == "null" else f"sha256:{batch_file.sha256}",
        "urls": {
            "https": f"https://{gw.gateway}/v0/{FILE_ENDPOINT}/{location}",
            "ftp": f"ftp://{FTP_HOST}/{location}",
        },
    }


def _ranged_file(batch_file: BatchFile, range_header: str) -> FileResponse:
    """200 with the whole file, or 206 with `bytes=a-` / `bytes=a-b` (416 past the end).

    Other Range forms are ignored (answered whole), which HTTP allows.
    """
    path, size = batch_file.path, batch_file.size
    headers = {"Content-Type": "application/octet-stream", "Accept-Ranges": "bytes"}
    match = _RANGE_RE.fullmatch(range_header.strip())
    if match is None or (match[2] and int(match[2]) < int(match[1])):
        return FileResponse(path, 0, size, headers=headers)
    first = int(match[1])
    if first >= size:
        raise errors.business_error(
            416,
            "batch_range_not_satisfiable",
            f"The range {range_header!r} starts past the end of {batch_file.filename} "
            f"({size} bytes).",
            docs=DOCS_BATCH,
            payload={"filename": batch_file.filename, "size": size},
            headers={"Content-Range": f"bytes */{size}"},
        )
    last = min(int(match[2]), size - 1) if match[2] else size - 1
    headers["Content-Range"] = f"bytes {first}-{last}/{size}"
    return FileResponse(path, first, last - first + 1, status=206, headers=headers)
