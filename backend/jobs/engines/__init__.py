"""Fetching a group's product and publishing each symbol's file.

The unit of work is `runner.fetch_group` (plain, picklable data in and out); `runner.fetch_groups`
runs a run's groups around one `runtime.Runtime`. The stream engine (`stream`: chunked
`get_range`) and the batch engine (`batch`: one paid job, `batchjob` submits and records it,
`batchfiles` downloads, checks and splits its files) make parts (`parts`), split multi-symbol
streams (`split`), merge (`merge`) and hand each file to the one shared tail (`publish`).
"""
