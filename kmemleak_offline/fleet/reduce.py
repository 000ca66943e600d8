"""The fleet's reduce: DuckDB queries over the per-recording summaries (summary.py) in a folder.

    DIR/sites/NNNNN.parquet   one per analysed recording: a row per (call chain, comm)
    DIR/stacks/NNNNN.parquet  ... a row per call chain: its frames with that recording's addresses
    DIR/recordings.parquet    one row per recording (analysed or skipped, with the reason)

The same files are what `fleet --summaries DIR` keeps for users to query (docs/fleet.md); the
queries here are the ones the docs show, so what the report says can be checked by hand.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from .sources import FleetError

RECORDING_COLUMNS = [
    ("index", pa.int64()), ("recording", pa.string()), ("host", pa.string()),
    ("kernel", pa.string()), ("machine", pa.string()), ("mode", pa.string()),
    ("events", pa.int64()), ("total_alloc", pa.int64()), ("total_free", pa.int64()),
    ("lost", pa.int64()), ("start_ns", pa.uint64()), ("stop_ns", pa.uint64()),
    ("duration_s", pa.float64()), ("chains", pa.int64()), ("leaked_bytes", pa.int64()),
    ("leaked_objects", pa.int64()), ("producer", pa.string()), ("analyser_version", pa.string()),
    ("seconds", pa.float64()), ("worker", pa.string()), ("warnings", pa.list_(pa.string())), ("error", pa.string()),
]

# per (chain, recording): the unit hosts, recordings and trends are counted in (a table: the
# queries below read it three times; frames and chain text stay out, they are fetched once per
# site)
PER_RECORDING = """
CREATE OR REPLACE TEMP TABLE per_rec AS
SELECT chain_id, recording, any_value(host) AS host, any_value(kernel) AS kernel,
       sum(bytes)::BIGINT AS bytes, sum(objects)::BIGINT AS objects,
       any_value(trend) AS trend, any_value(slope_bytes_per_s) AS slope_bytes_per_s
FROM sites GROUP BY chain_id, recording
"""

SITES = """
WITH
top AS (
  SELECT chain_id, first(recording ORDER BY bytes DESC, objects DESC, recording) AS shown,
         count(DISTINCT host)::BIGINT AS hosts, count(*)::BIGINT AS recordings,
         sum(bytes)::BIGINT AS bytes, sum(objects)::BIGINT AS objects,
         count(*) FILTER (WHERE trend = 'growing')::BIGINT AS growing,
         count(*) FILTER (WHERE trend = 'bounded')::BIGINT AS bounded,
         count(*) FILTER (WHERE trend = 'insufficient')::BIGINT AS insufficient,
         max(slope_bytes_per_s) FILTER (WHERE trend = 'growing') AS max_slope
  FROM per_rec GROUP BY chain_id),
frames AS (  -- the chain as the recording with the most bytes on it saw it
  SELECT s.chain_id, s.stack
  FROM stacks s JOIN top t ON s.chain_id = t.chain_id AND s.recording = t.shown),
texts AS (
  SELECT chain_id, any_value(chain) AS chain FROM sites GROUP BY chain_id),
hosts AS (
  SELECT chain_id, list({'host': host, 'bytes': b, 'objects': o, 'recordings': n, 'growing': g}
                        ORDER BY b DESC, o DESC, host) AS per_host
  FROM (SELECT chain_id, host, sum(bytes)::BIGINT AS b, sum(objects)::BIGINT AS o,
               count(*)::BIGINT AS n, count(*) FILTER (WHERE trend = 'growing')::BIGINT AS g
        FROM per_rec GROUP BY chain_id, host)
  GROUP BY chain_id),
kernels AS (
  SELECT chain_id, list({'kernel_release': kernel, 'hosts': h, 'recordings': n, 'bytes': b,
                         'objects': o} ORDER BY b DESC, o DESC, kernel) AS per_kernel
  FROM (SELECT chain_id, kernel, count(DISTINCT host)::BIGINT AS h, count(*)::BIGINT AS n,
               sum(bytes)::BIGINT AS b, sum(objects)::BIGINT AS o
        FROM per_rec GROUP BY chain_id, kernel)
  GROUP BY chain_id),
comms AS (
  SELECT chain_id, list({'comm': comm, 'bytes': b, 'objects': o} ORDER BY b DESC, o DESC, comm)
         AS comms
  FROM (SELECT chain_id, comm, sum(bytes)::BIGINT AS b, sum(objects)::BIGINT AS o
        FROM sites GROUP BY chain_id, comm)
  GROUP BY chain_id)
SELECT top.* EXCLUDE (shown), chain, stack, per_host, per_kernel, comms
FROM top JOIN frames USING (chain_id) JOIN texts USING (chain_id) JOIN hosts USING (chain_id) JOIN kernels USING (chain_id)
     JOIN comms USING (chain_id)
ORDER BY bytes DESC, objects DESC, chain
"""


def connect(folder: Path):
    """A DuckDB connection with the views `sites`, `stacks`, `recordings` and the table
    `per_rec` over `folder`."""
    try:
        import duckdb
    except ImportError as exc:
        raise FleetError(f"fleet needs DuckDB: pip install 'kmemleak-offline[fleet]' ({exc})") from None
    con = duckdb.connect()
    con.execute("SET enable_progress_bar = false")  # no bars on stderr
    def where(*parts: str) -> str:
        return str(folder.joinpath(*parts)).replace("'", "''")

    for view in ("sites", "stacks"):
        con.execute(f"CREATE TEMP VIEW {view} AS SELECT * FROM read_parquet('{where(view, '*.parquet')}')")
    con.execute(f"CREATE TEMP VIEW recordings AS SELECT * FROM read_parquet('{where('recordings.parquet')}')")
    con.execute(PER_RECORDING)
    return con


def _rows(con, sql: str) -> list[dict[str, Any]]:
    cur = con.execute(sql)
    names = [d[0] for d in cur.description]
    return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


def sites(con) -> list[dict[str, Any]]:
    """Every call chain leaking anywhere, biggest first (the `sites` of the JSON report)."""
    return _rows(con, SITES)


def write_recordings(folder: Path, rows: list[dict[str, Any]]) -> None:
    cols = {name: [r.get(name) for r in rows] for name, _ in RECORDING_COLUMNS}
    table = pa.table({name: pa.array(cols[name], t) for name, t in RECORDING_COLUMNS})
    pq.write_table(table, folder / "recordings.parquet", compression="zstd")


def recordings(con) -> list[dict[str, Any]]:
    return _rows(con, "SELECT * FROM recordings ORDER BY index")
