"""Symbol rows a recording embeds: `ksym` (a kallsyms snapshot) and `usym` (ELF symbol tables).

Built by the recorder (live snapshot, `--malloc` binaries) and by `import` (the kallsyms in a
perf.data); read back by `symbols/` in the analyser.

`usym` rows named `[PT_LOAD offset=0x...]` carry the file's segments (addr = p_vaddr,
len = p_filesz, the name holds p_offset: docs/format.md keeps `pgoff` for mmap rows).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from kmemleak_offline.format.elf import SymbolTable, debug_candidates, load_symbols, read_build_id
from kmemleak_offline.format.recording import const_column, to_table

SEGMENT_PREFIX = "[PT_LOAD"


def segment_name(offset: int) -> str:
    return f"{SEGMENT_PREFIX} offset={offset:#x}]"


_KSYM_LINE = r"^\s*(?P<addr>[0-9a-fA-F]+)\s+\S+\s+(?P<name>\S+)(?:\s+(?P<module>\S+))?"
_HEX = np.zeros(256, np.uint64)
_HEX[np.frombuffer(b"0123456789abcdef", np.uint8)] = np.arange(16)
_HEX[np.frombuffer(b"ABCDEF", np.uint8)] = np.arange(10, 16)


def ksym_rows(text: bytes) -> dict[str, pa.Array]:
    """`/proc/kallsyms` text -> `ksym` rows (addr, name, module; text and data symbols alike).

    Shared by the recorder (live snapshot) and `import` (kallsyms embedded in perf.data). Arrow's
    regex kernel splits the lines of the text as it is and numpy converts the hex addresses
    (120k symbols: 0.05 s; a Python loop over the lines took 0.07-0.2 s); text that is not UTF-8
    or addresses of mixed widths take the loop."""
    fast = _ksym_rows_vectorised(text)
    return fast if fast is not None else _ksym_rows_loop(text)


def _ksym_rows_vectorised(text: bytes) -> dict[str, pa.Array] | None:
    if len(text) >= 1 << 31:
        return None
    arr = np.frombuffer(text, np.uint8)
    starts = np.r_[0, np.flatnonzero(arr == 10) + 1]
    offsets = np.r_[starts[starts < len(text)], len(text)].astype(np.int32)
    lines = pa.StringArray.from_buffers(len(offsets) - 1, pa.py_buffer(offsets), pa.py_buffer(text))
    try:
        lines.validate(full=True)
    except pa.ArrowInvalid:  # not UTF-8
        return None
    m = pc.extract_regex(lines, _KSYM_LINE)
    m = m.filter(m.is_valid())  # lines of fewer than 3 fields are skipped, as by the loop
    addr = m.field("addr")
    n = len(addr)
    width = 0
    if n:
        alen = pc.binary_length(addr).to_numpy(zero_copy_only=False)
        width = int(alen[0])
        if (alen != width).any() or width > 16:
            return None
    values = np.zeros(n, np.uint64)
    if n:
        first = int(np.frombuffer(addr.buffers()[1], np.int32)[addr.offset])
        digits = _HEX[np.frombuffer(addr.buffers()[2], np.uint8)[first:first + n * width]].reshape(n, width)
        for i in range(width):  # one vector op per hex digit
            values = (values << np.uint64(4)) | digits[:, i]
    mod = m.field("module")
    module = pc.if_else(pc.equal(mod, ""), pa.scalar(None, pa.string()), pc.utf8_trim(mod, "[]"))
    return {"kind": const_column("ksym", n), "addr": pa.array(values, pa.uint64()),
            "name": m.field("name"), "module": module}


def _ksym_rows_loop(text: bytes) -> dict[str, pa.Array]:
    addrs, names, mods = [], [], []
    for line in text.splitlines():  # once per symbol, not per event
        parts = line.split()
        if len(parts) < 3:
            continue
        addrs.append(int(parts[0], 16))
        names.append(parts[2].decode(errors="replace"))
        mods.append(parts[3].strip(b"[]").decode() if len(parts) > 3 else None)
    return {"kind": const_column("ksym", len(addrs)), "addr": pa.array(addrs, pa.uint64()), "name": pa.array(names, pa.string()),
            "module": pa.array(mods, pa.string())}


def file_symbols(path: str, bid: bytes | None, symfs: str | None = None) -> SymbolTable | None:
    """The best symbols for one ELF file: a debug file matching its build-id (`--symfs`,
    /usr/lib/debug/.build-id, ~/.debug), else the file itself. Segments are not taken from here:
    debug files rewrite p_offset (callers use the real file's)."""
    for cand in debug_candidates(bid, path, symfs):
        if not cand.is_file():
            continue
        cbid = read_build_id(str(cand))
        if bid is not None and cbid is not None and cbid != bid:
            continue
        t = load_symbols(str(cand))
        if t is not None and len(t.addrs):
            return t
    return load_symbols(path)


def usym_rows(paths: Iterable[str], symfs: str | None = None) -> pa.Table:
    """Rows (kind=usym) embedding the symbol tables of ELF files, best source first (debug file by
    build-id, else the file), with `[PT_LOAD offset=...]` rows for the file's segments. Unreadable
    paths are skipped.
    """
    cols: dict[str, list] = {"filename": [], "build_id": [], "addr": [], "len": [], "name": []}
    for path in dict.fromkeys(paths):
        real = load_symbols(path)
        if real is None:
            continue
        bid = read_build_id(path)
        t = file_symbols(path, bid, symfs) or real
        k = len(t.addrs)
        seg = real.segments
        cols["filename"] += [path] * (k + len(seg))
        cols["build_id"] += [bid] * (k + len(seg))
        cols["addr"] += t.addrs.tolist() + seg[:, 0].tolist()
        cols["len"] += t.sizes.tolist() + seg[:, 3].tolist()
        cols["name"] += t.names.tolist() + [segment_name(int(o)) for o in seg[:, 2].tolist()]
    n = len(cols["name"])
    return to_table({"kind": ["usym"] * n, **cols})
