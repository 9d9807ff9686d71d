"""What the cache holds and means, read and written through the store the caller gives.

layout      the store keys of a dataset-symbol-year (`SymbolYear`) and its local working
            folder (`YearFolder`: the keys, the store, the run's work root)
entry       a manifest's content, pure: entries and the one validating parser
manifest    manifest.json through the store, merged under conditional writes
decision    pure: what is on disk + what is asked -> skip, verify, adopt or fetch
inventory   what the store holds and whether it is intact (`status`, `verify`)
jobrecord   the batch job recorded for a product still being fetched
locks       one writer per product (the store's kernel locks or leases)
"""
