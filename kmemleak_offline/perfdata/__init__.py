"""perf.data import: `reader` parses the file (header, attrs, table-driven feature sections, the
record stream into columns); `importer` turns that into a recording (`kmemleak-offline import`)."""
