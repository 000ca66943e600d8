"""The layer both the recorder and the analyser stand on: what a recording is and how its parts
are written and read.

`recording` (Parquet schema, writer, reader), `metadata` (typed recording metadata), `stitch`
(parts -> one file), `tracefs` (format text, payload decoding), `spec` and `expr` (event specs and
their expressions, compiled), `elf` (ELF symbol tables, build-ids) and `symrows` (the `ksym` and
`usym` row builders). Nothing here imports the analyser (load, analysis, engine, symbols, reports,
diff, cli, commands) nor pandas: the recorder imports only this package.
"""
