"""Streaming analysis: memory follows what is live, not the recording's length.

scan (pass 1, row groups in parallel) -> spill (Arrow IPC files, hash-partitioned by key) ->
partition replay (pass 2, partitions in parallel) -> merge (small per-partition results).
docs/streaming.md explains the design and its costs.
"""
