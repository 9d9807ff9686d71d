"""Pure building blocks every layer shares: time ranges and chunking, the request types,
symbols and years, units and durations, the DBN format (reading, checking, canonical framing),
local files written safely (temp names, atomic publishing, real working folders).

Nothing here does network or cache I/O; it imports only the standard library, numpy, zstandard
and databento_dbn.
"""
