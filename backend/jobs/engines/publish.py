"""The engines' shared tail: a product's merged file, written as its parts land, published to
the store, recorded in its manifest, and its parts dropped."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from backend.jobs.cache.decision import CacheKey
from backend.jobs.cache.entry import BatchRecord, ChunkRecord
from backend.jobs.cache.manifest import Manifest, product_entry
from backend.jobs.core.files import ScratchFiles, remove_stale_temps
from backend.jobs.core.request import ProductResult, RangeRequest
from backend.jobs.engines.merge import MergedWriter

if TYPE_CHECKING:
    from backend.jobs.core.dbn import HeaderFields
    from backend.jobs.core.ranges import TimeRange
    from backend.jobs.core.work import GroupPlan, ProductPlan
    from backend.jobs.engines.runtime import Runtime


def merged_writer(
    runtime: Runtime,
    group: GroupPlan,
    member: ProductPlan,
    scratch: ScratchFiles,
    *,
    chunks: Sequence[TimeRange] | None = None,
    header: HeaderFields | None = None,
) -> MergedWriter:
    """The member's final file, made of `chunks` in time order (the group's, unless given).

    Behind the preflight's predicted header, checked against the parts' own metadata; or behind
    `header` as given (a batch job's: the one a request for the whole range carries).
    """
    folder = runtime.folder(group.dataset, member)
    name = member.product.name
    whole = RangeRequest(group.dataset, (member.symbol,), member.product.schema, member.span)
    return MergedWriter(
        folder.final(name),
        whole,
        group.chunks if chunks is None else chunks,
        member.header if header is None else header,
        scratch,
        destination=(runtime.store, folder.final_key(name)),
        header_fixed=header is not None,
    )


def finish_product(
    runtime: Runtime,
    group: GroupPlan,
    member: ProductPlan,
    writer: MergedWriter,
    *,
    started: float,
    batch: BatchRecord | None = None,
) -> ProductResult:
    """Publish the merged file, record it in the manifest, then drop the parts and whatever
    a killed attempt left beside the file."""
    product = member.product
    folder = runtime.folder(group.dataset, member)
    parts = writer.parts
    merged = writer.finish()
    key = CacheKey(group.dataset, product.schema, member.symbol, member.year)
    entry = product_entry(
        merged.path.name,
        request=key.recorded(member.span, runtime.config.chunking),
        content=merged,
        chunks=[ChunkRecord.of(part.request.span, part.summary) for part in parts],
        engine="batch" if batch else "stream",
        batch=batch,
    )
    Manifest.of(runtime.store, folder).record(product.name, entry)
    folder.drop_parts(product.name)
    # what a killed attempt left beside the file (a lost cluster worker's split, its part):
    # the run that publishes holds the product's lock, and its own temps are gone by now
    remove_stale_temps(folder.path, merged.path.name)
    return ProductResult(
        member.symbol,
        member.year,
        product,
        "downloaded",
        merged.bytes,
        merged.records,
        time.monotonic() - started,
        extra={
            "chunks": len(parts),
            "reused_chunks": sum(not part.downloaded for part in parts),
            **({"engine": "batch", "job_id": batch.job_id} if batch else {}),
        },
    )
