"""Fetching a group's product and publishing each symbol's file: the stream engine (chunked
`get_range`), the batch engine (one paid job), parts, per-symbol split, the merge, and the shared
publish tail.
"""
