"""DSOs: user-space ELF files keyed by (path, build-id), each with its symbol table.

Like perf's util/dso.c + symbol.c (`dso__load` over `binary_type_symtab[]`): the symbols of one
mapped file come from the first source that has them, in order: embedded `usym` rows (so a
recording analyses on a machine without the binaries), `--symfs DIR`, debug files by build-id
(/usr/lib/debug/.build-id, ~/.debug), then the file itself if its build-id matches the recorded
one (or none was recorded). Which process mapped which file when is symbols/machine.py's job;
symbols/callchain.py puts the two together.

`usym` rows named `[PT_LOAD offset=0x...]` carry the file's segments (addr = p_vaddr,
len = p_filesz, the name holds p_offset: docs/format.md keeps `pgoff` for mmap rows), needed to turn
file offsets into symbol addresses without the file. Recordings of an earlier writer named them
`[PT_LOAD]` with p_offset in `pgoff`; both are read.

Files that were tried and could not be read (missing, unreadable, not ELF) while nothing else gave
that DSO symbols are kept in `Dsos.unreadable` (path -> why), for `analyze -v` to say so.
"""

from __future__ import annotations

import functools
import io
import shutil
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile

from kmemleak_offline.format.elf import SymbolTable, debug_candidates, load_symbols, read_build_id
from kmemleak_offline.format.symrows import SEGMENT_PREFIX
from kmemleak_offline.load import column_array


def _segment_offsets(names: np.ndarray, pgoff: np.ndarray, has_pgoff: np.ndarray) -> np.ndarray:
    """p_offset of each segment row: from its name, else (earlier writer) from `pgoff`."""
    out = pgoff.copy()
    for i, name in enumerate(names.tolist()):  # a few rows per ELF file, not per event
        if not has_pgoff[i] and "offset=" in name:
            out[i] = int(name.split("offset=", 1)[1].rstrip("]"), 16)
    return out


def _pylist(col: Any) -> list:
    if isinstance(col, pa.ChunkedArray | pa.Array):
        if pa.types.is_dictionary(col.type):
            col = col.cast(pa.string())
        return col.to_pylist()
    return list(col)


def unreadable_reason(path: str) -> str | None:
    """Why format.elf cannot read `path` as an ELF file (its reader says only None), or None when
    it can. Asked only after a failed read, so the file is read twice only then."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        return exc.strerror or type(exc).__name__
    try:
        ELFFile(io.BytesIO(data))
    except (ELFError, ValueError) as exc:
        return f"not an ELF file: {exc}" if str(exc) else "not an ELF file"
    return None


_demangled: dict[str, str] = {}


def demangle(names: Iterable[str]) -> dict[str, str]:
    """C++ (Itanium) names -> demangled, with one `c++filt` call for all new names; identity if absent."""
    todo = sorted({n for n in names if n and n.startswith("_Z") and n not in _demangled})
    if todo:
        out = None
        exe = shutil.which("c++filt")
        if exe:
            try:
                res = subprocess.run([exe], input="\n".join(todo) + "\n", capture_output=True,
                                     text=True, timeout=60, check=False)
                out = res.stdout.splitlines()
            except (OSError, subprocess.SubprocessError):
                out = None
        if out is None or len(out) != len(todo):
            out = todo
        _demangled.update(zip(todo, out, strict=True))
    return {n: _demangled.get(n, n) for n in names if n}


@dataclass
class Dsos:
    """The symbol tables of a recording's mapped files; build once per analysis (cached per DSO)."""

    usyms: pa.Table | None = None  # kind=usym rows: filename, build_id, addr, len, pgoff, name
    symfs: str | None = None
    use_local_files: bool = True  # False: only embedded rows (tests, strict offline)
    unreadable: dict[str, str] = field(default_factory=dict)  # path -> why, in the order met
    _tables: dict[tuple[str, bytes | None], SymbolTable | None] = field(default_factory=dict)

    @functools.cached_property
    def _usym_index(self) -> dict[str, list[int]]:
        index: dict[str, list[int]] = {}
        if self.usyms is not None and self.usyms.num_rows:
            for i, f in enumerate(_pylist(self.usyms.column("filename"))):
                index.setdefault(f, []).append(i)
        return index

    # ---- symbol sources -------------------------------------------------------------------------
    def _embedded(self, filename: str, bid: bytes | None) -> SymbolTable | None:
        rows = self._usym_index.get(filename)
        if not rows:
            return None
        t = self.usyms.take(pa.array(rows))
        rbids = _pylist(t.column("build_id"))
        names = np.array(_pylist(t.column("name")), dtype=object)
        ok = np.array([bid is None or b is None or b == bid for b in rbids], bool)
        if not ok.any():
            return None
        addr = column_array(t.column("addr"), np.uint64)
        ln = column_array(t.column("len"), np.uint64)
        seg = ok & np.array([str(nm).startswith(SEGMENT_PREFIX) for nm in names], bool)
        sym = ok & ~seg
        if "pgoff" in t.column_names:
            pgoff = column_array(t.column("pgoff"), np.uint64)
            has_pgoff = t.column("pgoff").is_valid().to_numpy(zero_copy_only=False)
        else:
            pgoff, has_pgoff = np.zeros(t.num_rows, np.uint64), np.zeros(t.num_rows, bool)
        pg = _segment_offsets(names[seg], pgoff[seg], has_pgoff[seg])
        segments = np.stack([addr[seg], ln[seg], pg, ln[seg]], axis=1)
        return SymbolTable.build(addr[sym], ln[sym], names[sym], segments)

    def _from_files(self, filename: str, bid: bytes | None,
                    problems: list[tuple[str, str]]) -> SymbolTable | None:
        real = None
        real_bid = read_build_id(filename)
        if bid is None or real_bid == bid:
            real = load_symbols(filename)
        if real is None and real_bid is None:  # no build-id note: the file may be unreadable
            why = unreadable_reason(filename)
            if why is not None:
                problems.append((filename, why))
        # no recorded build-id (perf.data without one): the local file's names its debug file
        want = bid or real_bid
        for cand in debug_candidates(want, filename, self.symfs):
            c = str(cand)
            if not cand.is_file():
                continue
            cbid = read_build_id(c)
            if want is not None and cbid is not None and cbid != want:  # another build's
                continue
            t = load_symbols(c)
            if t is None:
                why = unreadable_reason(c)
                if why is not None:
                    problems.append((c, why))
            if t is None or len(t.addrs) == 0:
                continue
            return SymbolTable.build(t.addrs, t.sizes, t.names, self._segments_for(filename, bid, real, t))
        return real

    def _segments_for(self, filename: str, bid: bytes | None, real: SymbolTable | None,
                      debug: SymbolTable) -> np.ndarray:
        """Runtime segments: from the real file, else the embedded rows, else guessed from the debug file.

        Debug files keep p_vaddr but rewrite p_offset; the guess assumes offset = vaddr - first vaddr,
        which holds for the usual linker layouts.
        """
        if real is not None and len(real.segments):
            return real.segments
        emb = self._embedded(filename, bid)
        if emb is not None and len(emb.segments):
            return emb.segments
        seg = debug.segments.copy()
        if len(seg):
            seg[:, 2] = seg[:, 0] - seg[:, 0].min()
            seg[:, 3] = seg[:, 1]
        return seg

    def table_for(self, filename: str, bid: bytes | None) -> SymbolTable | None:
        """The best symbol table for one mapped file (cached)."""
        key = (filename, bid)
        if key not in self._tables:
            t = self._embedded(filename, bid)
            if (t is None or len(t.addrs) == 0) and self.use_local_files:
                problems: list[tuple[str, str]] = []
                t = self._from_files(filename, bid, problems) or t
                if t is None or len(t.addrs) == 0:  # its frames stay Unknown: say why, once
                    for path, why in problems:
                        self.unreadable.setdefault(path, why)
            self._tables[key] = t
        return self._tables[key]
