"""ELF files for user symbolisation: function symbols, PT_LOAD segments, build-id, debug-file lookup.

Pure pyelftools, read once per file and cached. Symbols come from .symtab, .dynsym and
.gnu_debugdata (the LZMA-compressed "MiniDebugInfo" some distributions ship); sections of type
NOBITS are skipped because separate .debug files keep stubs of them with no contents.
"""

from __future__ import annotations

import io
import lzma
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile
from elftools.elf.sections import SymbolTableSection

DEBUG_DIRS = ("/usr/lib/debug",)
FUNC_TYPES = ("STT_FUNC", "STT_GNU_IFUNC")


@dataclass(frozen=True)
class SymbolTable:
    """Function symbols of one ELF file sorted by address, plus its PT_LOAD segments.

    `segments` rows are (p_vaddr, p_memsz, p_offset, p_filesz) of the *runtime* file: separate
    debug files rewrite p_offset, so callers take segments from the real binary when they can.
    """

    addrs: np.ndarray  # uint64, sorted
    sizes: np.ndarray  # uint64
    names: np.ndarray  # object (str)
    segments: np.ndarray  # (k, 4) uint64

    @classmethod
    def empty(cls) -> SymbolTable:
        return cls(np.zeros(0, np.uint64), np.zeros(0, np.uint64), np.zeros(0, object),
                   np.zeros((0, 4), np.uint64))

    @classmethod
    def build(cls, addrs, sizes, names, segments, rank=None) -> SymbolTable:
        """Sort by address, keep one name per address: the best `rank` (see `symbol_rank`), then
        the first (.symtab before .dynsym)."""
        addrs = np.asarray(addrs, np.uint64)
        sizes = np.asarray(sizes, np.uint64)
        names = np.asarray(names, object)
        rank = np.zeros(len(addrs), np.int64) if rank is None else np.asarray(rank, np.int64)
        order = np.lexsort((np.arange(len(addrs)), rank, addrs))
        addrs, sizes, names = addrs[order], sizes[order], names[order]
        keep = np.ones(len(addrs), bool)
        keep[1:] = addrs[1:] != addrs[:-1]
        seg = np.asarray(segments, np.uint64).reshape(-1, 4)
        return cls(addrs[keep], sizes[keep], names[keep], seg)

    def offset_to_vaddr(self, off: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """File offsets -> ELF virtual addresses via PT_LOAD; (vaddr, found)."""
        off = np.asarray(off, np.uint64)
        vaddr = np.zeros(len(off), np.uint64)
        found = np.zeros(len(off), bool)
        for p_vaddr, _memsz, p_offset, p_filesz in self.segments:  # a handful of segments
            hit = ~found & (off >= p_offset) & (off < p_offset + max(p_filesz, 1))
            vaddr[hit] = off[hit] - p_offset + p_vaddr
            found |= hit
        return vaddr, found

    def lookup(self, vaddr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """ELF virtual addresses -> (index of symbol or -1, symbol address)."""
        vaddr = np.asarray(vaddr, np.uint64)
        i = np.searchsorted(self.addrs, vaddr, side="right") - 1
        ok = i >= 0
        ic = np.clip(i, 0, max(len(self.addrs) - 1, 0))
        if len(self.addrs) == 0:
            return np.full(len(vaddr), -1), np.zeros(len(vaddr), np.uint64)
        start, size = self.addrs[ic], self.sizes[ic]
        # size 0 (hand-written asm): accept up to the next symbol
        ok &= (size == 0) | (vaddr < start + size)
        return np.where(ok, ic, -1), np.where(ok, start, 0).astype(np.uint64)


def _open(path: str | os.PathLike) -> ELFFile | None:
    try:
        with open(path, "rb") as f:
            data = f.read()
        return ELFFile(io.BytesIO(data))
    except (OSError, ELFError, ValueError):
        return None


def _elf_build_id(elf: ELFFile) -> bytes | None:
    for sec in elf.iter_sections():
        if sec["sh_type"] != "SHT_NOTE":
            continue
        for note in sec.iter_notes():
            if note["n_type"] == "NT_GNU_BUILD_ID":
                return bytes.fromhex(note["n_desc"])
    return None


def _identity(path: str) -> tuple | None:
    """Cache key part that changes when the file is replaced or removed."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def read_build_id(path: str) -> bytes | None:
    """The GNU build-id of an ELF file, or None (no file, not ELF, no note)."""
    ident = _identity(path)
    return _read_build_id(path, ident) if ident is not None else None


@lru_cache(maxsize=256)
def _read_build_id(path: str, ident: tuple) -> bytes | None:
    elf = _open(path)
    return _elf_build_id(elf) if elf is not None else None


def _segments(elf: ELFFile) -> list[tuple[int, int, int, int]]:
    return [(s["p_vaddr"], s["p_memsz"], s["p_offset"], s["p_filesz"]) for s in elf.iter_segments()
            if s["p_type"] == "PT_LOAD"]


def symbol_rank(name: str, size: int, bind: str) -> int:
    """Which of several names at one address perf prints (its choose_best_symbol): lower is
    better. A sized symbol, then not weak, then global, then fewer leading underscores, then the
    longer name: `__socket` (global) over `socket` (weak) and `__GI_socket` (local)."""
    underscores = len(name) - len(name.lstrip("_"))
    return ((size == 0) << 40 | (bind == "STB_WEAK") << 39 | (bind != "STB_GLOBAL") << 38
            | min(underscores, 255) << 20 | (0xFFFFF - min(len(name), 0xFFFFF)))


def _symbols(elf: ELFFile, out: tuple[list, list, list, list]) -> None:
    for sec in elf.iter_sections():
        if sec["sh_type"] == "SHT_NOBITS" or not isinstance(sec, SymbolTableSection):
            continue
        for sym in sec.iter_symbols():
            if sym["st_info"]["type"] in FUNC_TYPES and sym["st_value"] and sym.name and \
                    sym["st_shndx"] != "SHN_UNDEF":
                out[0].append(sym["st_value"])
                out[1].append(sym["st_size"])
                out[2].append(sym.name)
                out[3].append(symbol_rank(sym.name, sym["st_size"], sym["st_info"]["bind"]))
    dd = elf.get_section_by_name(".gnu_debugdata")
    if dd is not None and dd["sh_type"] != "SHT_NOBITS":
        try:
            mini = ELFFile(io.BytesIO(lzma.decompress(dd.data())))
            _symbols(mini, out)
        except (lzma.LZMAError, ELFError, ValueError):
            pass


def load_symbols(path: str) -> SymbolTable | None:
    """Function symbols and PT_LOAD segments of an ELF file; None if it cannot be read."""
    ident = _identity(path)
    return _load_symbols(path, ident) if ident is not None else None


@lru_cache(maxsize=128)
def _load_symbols(path: str, ident: tuple) -> SymbolTable | None:
    elf = _open(path)
    if elf is None:
        return None
    acc: tuple[list, list, list, list] = ([], [], [], [])
    _symbols(elf, acc)
    return SymbolTable.build(acc[0], acc[1], acc[2], _segments(elf), acc[3])


def debug_candidates(build_id: bytes | None, filename: str, symfs: str | None = None,
                     home: str | None = None) -> list[Path]:
    """Where a file's symbols may live, in lookup order (after embedded usym rows).

    --symfs DIR (DIR/<path>, DIR/.build-id/xx/rest.debug), then /usr/lib/debug/.build-id and
    ~/.debug (perf's build-id cache), then /usr/lib/debug/<path>.debug.
    """
    out: list[Path] = []
    hexid = build_id.hex() if build_id else None
    if symfs:
        out.append(Path(symfs) / filename.lstrip("/"))
        if hexid:
            out.append(Path(symfs) / ".build-id" / hexid[:2] / (hexid[2:] + ".debug"))
    if hexid:
        for d in DEBUG_DIRS:
            out.append(Path(d) / ".build-id" / hexid[:2] / (hexid[2:] + ".debug"))
        cache = Path(home or os.path.expanduser("~")) / ".debug" / ".build-id" / hexid[:2]
        out += [cache / (hexid[2:] + ".debug"), cache / hexid[2:] / "debug", cache / hexid[2:] / "elf"]
    for d in DEBUG_DIRS:
        out.append(Path(d + filename + ".debug"))
    return out
