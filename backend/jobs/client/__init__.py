"""Talking to Databento. Every SDK or HTTP failure leaves as one of our errors.

databento.py  the facade: the SDK calls this tool makes, paced and retried
files.py      the ranged fetcher of batch job files (one requests.Session)
jobfiles.py   a job's files as `batch.list_files` describes them
retry.py      the retry policy (run by tenacity) and the run-wide pacing
translate.py  SDK and HTTP failures -> our errors
sdk.py        what leans on the SDK's insides (the only builder of `databento.Historical`)
"""
