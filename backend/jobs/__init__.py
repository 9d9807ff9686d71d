"""bento-ingest: Databento TRADES/TBBO symbol-years into a verified DBN cache.

Layers, imports flowing down only (checked by import-linter in `nox -s lint`):

    cli -> ingest -> plan -> engines -> cache | store | client -> core

`settings`, `errors` and `logs` sit beside them: the environment's only reader, the one error
hierarchy with its exit codes, and the loguru set-up.
"""
