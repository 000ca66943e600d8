"""The target's kernel symbols given by hand: a `/proc/kallsyms` snapshot (plain, .gz or .xz) or
a vmlinux ELF with symbols, as `ksym` rows, checked as far as the recording allows.

Used by `import --kallsyms/--vmlinux` (instead of this machine's /proc/kallsyms) and by
`analyze --kallsyms/--vmlinux` (instead of, or for want of, the recording's ksym rows).

Checks (each a one-line warning, never a refusal: the user may know better):
- build-id: a vmlinux carries one (NT_GNU_BUILD_ID); perf.data files record the running kernel's
  in their build-id table. A kallsyms snapshot has none.
- `_text`: perf writes the kernel map as an MMAP record `[kernel.kallsyms]_text` whose pgoff is
  the address of `_text` at record time (perf's ref_reloc_sym). A snapshot or vmlinux whose
  `_text` is elsewhere is from another boot (KASLR) or another kernel.
"""

from __future__ import annotations

import gzip
import io
import lzma
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile
from elftools.elf.sections import SymbolTableSection

from .elf import read_build_id
from .recording import const_column
from .symrows import ksym_rows

TEXT_SYMBOL = "_text"
KERNEL_MAP_PREFIX = "[kernel.kallsyms]"
SYMBOL_TYPES = ("STT_FUNC", "STT_OBJECT", "STT_NOTYPE", "STT_GNU_IFUNC")


class KernelFileError(ValueError):
    """A --kallsyms/--vmlinux file that cannot be read. One-line message."""


@dataclass
class KernelSymbolFile:
    """ksym rows from a file, with what identifies the kernel they belong to."""

    rows: dict[str, pa.Array]
    source: str  # "--kallsyms PATH" / "--vmlinux PATH"
    build_id: bytes | None
    text_addr: int | None  # address of _text, None when the file has no such symbol

    @property
    def count(self) -> int:
        return len(self.rows["name"])


def _decompressed(path: Path) -> bytes:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise KernelFileError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise KernelFileError(f"{path}: is a directory") from None
    except OSError as exc:
        raise KernelFileError(f"{path}: cannot read ({exc.strerror or exc})") from None
    try:
        if raw.startswith(b"\x1f\x8b"):
            return gzip.decompress(raw)
        if raw.startswith(b"\xfd7zXZ\x00"):
            return lzma.decompress(raw)
    except (OSError, EOFError, lzma.LZMAError) as exc:
        raise KernelFileError(f"{path}: corrupt compressed file ({exc})") from None
    return raw


def read_kallsyms(path: str | Path) -> KernelSymbolFile:
    """A /proc/kallsyms snapshot (plain, gzip or xz, told by its magic) -> ksym rows."""
    p = Path(path)
    text = _decompressed(p)
    if text.startswith(b"\x7fELF"):
        raise KernelFileError(f"{p}: is an ELF file, not a kallsyms snapshot (give it as --vmlinux)")
    try:
        rows = ksym_rows(text)
    except (ValueError, UnicodeDecodeError):
        raise KernelFileError(f"{p}: not a kallsyms snapshot (lines of 'ADDRESS TYPE NAME [MODULE]')") from None
    addrs = rows["addr"].to_numpy(zero_copy_only=False)
    if not len(addrs):
        raise KernelFileError(f"{p}: not a kallsyms snapshot (no 'ADDRESS TYPE NAME' lines)")
    if not addrs.any():
        raise KernelFileError(f"{p}: every address is 0 (copied without root: kptr_restrict); "
                              "copy /proc/kallsyms as root")
    return KernelSymbolFile(rows, f"--kallsyms {p}", None, _text_addr(rows))


def read_vmlinux(path: str | Path) -> KernelSymbolFile:
    """A vmlinux (ELF with .symtab) -> ksym rows of its function and data symbols, its build-id."""
    p = Path(path)
    data = _decompressed(p)
    try:
        elf = ELFFile(io.BytesIO(data))
        addrs, names = [], []
        for sec in elf.iter_sections():
            if not isinstance(sec, SymbolTableSection) or sec["sh_type"] == "SHT_NOBITS":
                continue
            if elf.elfclass == 64 and elf.little_endian:  # one numpy pass (150k symbols: 5 s -> 0.2 s)
                a, n = _symbols64(sec, elf.get_section(sec["sh_link"]).data())
                addrs += a
                names += n
                continue
            for sym in sec.iter_symbols():
                if (sym["st_info"]["type"] in SYMBOL_TYPES and sym["st_value"] and sym.name
                        and sym["st_shndx"] != "SHN_UNDEF"):
                    addrs.append(sym["st_value"])
                    names.append(sym.name)
    except (ELFError, ValueError, IndexError) as exc:
        raise KernelFileError(f"{p}: not an ELF file ({exc})") from None
    if not names:
        raise KernelFileError(f"{p}: has no symbols (stripped? give the vmlinux with symbols, "
                              "or a /proc/kallsyms copy as --kallsyms)")
    rows = {"kind": const_column("ksym", len(names)), "addr": pa.array(addrs, pa.uint64()),
            "name": pa.array(names, pa.string()), "module": pa.nulls(len(names), pa.string())}
    return KernelSymbolFile(rows, f"--vmlinux {p}", read_build_id(str(p)), _text_addr(rows))


ELF64_SYM = np.dtype([("name", "<u4"), ("info", "u1"), ("other", "u1"), ("shndx", "<u2"),
                      ("value", "<u8"), ("size", "<u8")])
STT_KEEP = (0, 1, 2, 10)  # NOTYPE, OBJECT, FUNC, GNU_IFUNC (as SYMBOL_TYPES)


def _symbols64(sec, strtab: bytes) -> tuple[list[int], list[str]]:
    """Elf64_Sym entries of a symbol table -> (addresses, names) of the kept symbols."""
    syms = np.frombuffer(sec.data(), ELF64_SYM, count=sec.data_size // ELF64_SYM.itemsize)
    keep = np.isin(syms["info"] & 0xF, STT_KEEP) & (syms["value"] != 0) & (syms["shndx"] != 0) & \
        (syms["name"] != 0)
    sel = syms[keep]
    names = [strtab[o:strtab.index(b"\0", o)].decode(errors="replace") for o in sel["name"].tolist()]
    return sel["value"].tolist(), names


def _text_addr(rows: dict[str, pa.Array]) -> int | None:
    names = np.asarray(rows["name"].to_pylist(), dtype=object)
    hit = np.flatnonzero(names == TEXT_SYMBOL)
    return int(rows["addr"][int(hit[0])].as_py()) if len(hit) else None


def read_kernel_file(kallsyms: str | Path | None, vmlinux: str | Path | None) -> KernelSymbolFile | None:
    """The one of --kallsyms / --vmlinux given (both: refused), None when neither."""
    if kallsyms is not None and vmlinux is not None:
        raise KernelFileError("give --kallsyms or --vmlinux, not both")
    if kallsyms is not None:
        return read_kallsyms(kallsyms)
    if vmlinux is not None:
        return read_vmlinux(vmlinux)
    return None


def check(ks: KernelSymbolFile, recorded_build_id: bytes | None, text_pgoff: int | None) -> list[str]:
    """Warnings (one line each) where the file does not fit the recorded kernel.

    `recorded_build_id`: the kernel's build-id the perf.data recorded (None: unknown);
    `text_pgoff`: `_text`'s address at record time from the kernel map (None: no kernel map)."""
    out: list[str] = []
    if recorded_build_id and ks.build_id and recorded_build_id != ks.build_id:
        out.append(f"{ks.source}: build-id {ks.build_id.hex()} is not the recorded kernel's "
                   f"({recorded_build_id.hex()}): kernel frames will be wrong")
    if text_pgoff is not None and ks.text_addr is not None and text_pgoff != ks.text_addr:
        out.append(f"{ks.source}: _text is at {ks.text_addr:#x} but the recorded kernel map says "
                   f"{text_pgoff:#x} (another boot or kernel?): kernel frames will be wrong")
    elif text_pgoff is None or ks.text_addr is None:
        why = "the recording has no kernel map" if text_pgoff is None else f"{ks.source} has no _text"
        if not (recorded_build_id and ks.build_id):
            out.append(f"{ks.source}: cannot check that it fits the recorded kernel ({why}"
                       f"{'' if ks.build_id else '; a kallsyms snapshot has no build-id'})")
    return out


def kernel_map_pgoff(filenames: list, pgoffs: list) -> int | None:
    """`_text` at record time: pgoff of the first `[kernel.kallsyms]...` mmap, None if none."""
    for fn, off in zip(filenames, pgoffs, strict=True):
        if fn and str(fn).startswith(KERNEL_MAP_PREFIX) and off:
            return int(off)
    return None
