"""Which products a batch job recorded earlier still answers: resumed from that job (already
paid) instead of planned as new work.

A product's working folder records the job it is being fetched from (`batch-job.json`), else
its manifest entry names the job it was made from. A job recorded as failed (its files failed
validation) is never resumed; one that Databento no longer serves is replaced by new work.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from loguru import logger

from backend.jobs.cache.jobrecord import read_record
from backend.jobs.cache.manifest import Manifest
from backend.jobs.core.concurrency import run_concurrently
from backend.jobs.core.ranges import split_range
from backend.jobs.core.request import JobRecord, JobRequest
from backend.jobs.core.work import GroupPlan, ProductPlan
from backend.jobs.engines.batchjob import (
    describe,
    find_submitted,
    job_files_folder,
    record_job,
    unusable_message,
)
from backend.jobs.engines.runtime import BatchClient
from backend.jobs.errors import IngestError, JobGoneError

if TYPE_CHECKING:
    from backend.jobs.cache.layout import YearFolder

RESUME_CHECKS_AT_ONCE = 4
Folders = Mapping[tuple[str, int], "YearFolder"]  # (symbol, year) -> its folder
Claims = dict[object, tuple[JobRecord, list[ProductPlan]]]  # job -> its record, its members


def recorded_job(folder: YearFolder, product: str) -> JobRecord | None:
    """The job a product's working folder records, else the one its manifest entry names."""
    record = read_record(folder.store, folder.job_key(product))
    if record is not None:
        return record
    entry = Manifest.of(folder.store, folder).load().entries.get(product)
    if entry is None or entry.batch is None:
        return None
    job = JobRequest(
        dataset=entry.request.dataset,
        symbols=entry.batch.symbols,
        schema=entry.request.schema,
        span=entry.request.span,
        split_duration=entry.batch.split_duration,
    )
    return JobRecord(job, entry.batch.job_id, entry.batch.cost_usd)


def resume_recorded_jobs(
    client: BatchClient,
    dataset: str,
    members: list[ProductPlan],
    folders: Folders,
    *,
    dry_run: bool,
    skip_failed: bool = False,
) -> tuple[list[GroupPlan], list[ProductPlan]]:
    """(groups fetched from jobs already paid, members left to plan as new work).

    A job recorded as failed (its files failed validation) is never resumed: with
    `skip_failed` (--engine stream or --force) its members are planned as new work; otherwise
    the run stops with the reason (IngestError, exit 1), so a default re-run never pays for a
    new job unasked.
    """
    claims, rest = claimed_by_jobs(dataset, members, folders, skip_failed=skip_failed)
    if not claims:
        return [], rest
    checks = run_concurrently(
        [lambda record=record: live_job(client, record) for record, _ in claims.values()],
        "batch-check",
        limit=RESUME_CHECKS_AT_ONCE,
    )
    resumed = []
    for (record, claimed), live in zip(claims.values(), checks, strict=True):
        folder = folders[(claimed[0].symbol, claimed[0].year)]
        if live is None:
            if record.job_id and not dry_run:  # its files can never be used again
                shutil.rmtree(job_files_folder(folder.work_root, record.job_id), ignore_errors=True)
            rest.extend(claimed)
            continue
        found, details = live
        if not dry_run:
            for member in claimed:
                record_job(folders[(member.symbol, member.year)], member.product.name, found)
        resumed.append(resumed_group(dataset, claimed, found, details))
    return resumed, rest


def claimed_by_jobs(
    dataset: str, members: list[ProductPlan], folders: Folders, *, skip_failed: bool
) -> tuple[Claims, list[ProductPlan]]:
    """(the members each usable recorded job holds, the members no job holds)."""
    claims: Claims = {}
    rest = []
    unusable: set[str | None] = set()  # failed jobs already warned about
    for member in members:
        folder = folders[(member.symbol, member.year)]
        record = recorded_job(folder, member.product.name)
        if record is None:
            rest.append(member)
        elif record.failed is not None:
            if not skip_failed:
                raise IngestError(unusable_message(record, folder.work_root, member.year))
            if record.job_id not in unusable:
                unusable.add(record.job_id)
                logger.warning(
                    "batch job {} ({}) is recorded as unusable ({}): fetching it without this "
                    "job; its files stay in {}",
                    *(record.job_id, describe(record.request, member.year), record.failed),
                    job_files_folder(folder.work_root, record.job_id),
                )
            rest.append(member)
        elif not record.request.covers(member.symbol, dataset, member.product.schema, member.span):
            logger.warning(
                "{} {} {}: the recorded batch job {} asked for another range ({}); not used",
                *(member.symbol, member.year, member.product.name, record.job_id or "(unsent)"),
                record.request.span,
            )
            rest.append(member)
        else:
            claims.setdefault(record.job_id or record.request, (record, []))[1].append(member)
    return claims, rest


def resumed_group(
    dataset: str, claimed: list[ProductPlan], found: JobRecord, details: dict[str, Any]
) -> GroupPlan:
    """The members a live job holds, as one batch group fetched from it (no new charge)."""
    first = claimed[0]
    return GroupPlan(
        number=0,
        dataset=dataset,
        product=first.product,
        span=first.span,
        members=tuple(claimed),
        chunks=tuple(split_range(first.span, found.request.split_duration)),  # type: ignore[arg-type]
        estimated_bytes=int(details.get("billed_size") or 0),
        estimated_usd=0.0,
        engine="batch",
        why=f"job {found.job_id} already paid; {details.get('state')}",
        job=found,
    )


def live_job(client: BatchClient, record: JobRecord) -> tuple[JobRecord, dict[str, Any]] | None:
    """The recorded job and its details if Databento still serves it; None: a new job is needed."""
    what = describe(record.request, int(record.request.span.start[:4]))
    if record.job_id is None:
        found = find_submitted(client, record)
        if found is None:
            logger.info("{}: the batch job being submitted last run was never created", what)
            return None
        record = record.submitted(str(found["id"]), found.get("cost_usd"))
        logger.info("{}: found batch job {} submitted by the last run", what, record.job_id)
    job_id = str(record.job_id)
    try:
        details = client.job_details(job_id)
    except JobGoneError:
        logger.warning(
            "{}: batch job {} is unknown to Databento now: a new job is needed, billed again "
            "(within --max-cost)",
            what,
            job_id,
        )
        return None
    if details.get("state") == "expired":
        logger.warning(
            "{}: batch job {} expired ({}): its files are kept 30 days after submit; a new job "
            "is needed, billed again (within --max-cost)",
            *(what, job_id, details.get("ts_expiration") or "expiry date unknown"),
        )
        return None
    return record, details
