"""`fleet`: many recordings (one per host or run), each analysed on its own, reduced by call chain.

sources (arguments -> recordings) -> summary (one recording -> a small Parquet table of its leaks
per symbolised call chain and comm, in a worker process or on a Dask worker) -> reduce (a DuckDB
query over those tables) -> text or JSON. docs/fleet.md says what a user gets.
"""
