"""Offline user symbolisation (kmemleak_offline.symbols: machine, user, callchain) against nm as the oracle."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from kmemleak_offline.format.elf import load_symbols, read_build_id
from kmemleak_offline.format.symrows import usym_rows
from kmemleak_offline.symbols.callchain import UserResolver
from kmemleak_offline.symbols.machine import Machine
from kmemleak_offline.symbols.user import Dsos, demangle

C_DIR = Path(__file__).parent / "c"
LIBC = "/usr/lib/x86_64-linux-gnu/libc.so.6"
BASE = 0x5555_0000_0000


def nm(path: Path | str, dynamic: bool = False) -> dict[str, int]:
    cmd = ["nm", "--defined-only"] + (["-D"] if dynamic else []) + [str(path)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    syms = {}
    for line in out.stdout.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[1] in "tTwW":
            syms.setdefault(parts[2], int(parts[0], 16))
    return syms


def text_segment(path: Path | str) -> tuple[int, int, int]:
    """(p_vaddr, p_offset, p_filesz) of the executable PT_LOAD, from readelf (independent of our code)."""
    out = subprocess.run(["readelf", "-lW", str(path)], capture_output=True, text=True, check=True).stdout
    for line in out.splitlines():
        f = line.split()
        if f and f[0] == "LOAD" and "E" in f[6:-1]:
            return int(f[2], 16), int(f[1], 16), int(f[4], 16)
    raise AssertionError("no executable LOAD")


@pytest.fixture(scope="module")
def exe(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("usym")
    out = d / "leaky"
    subprocess.run(["gcc", "-O1", "-pthread", "-o", str(out), str(C_DIR / "leaky.c")], check=True)
    return out


def mmap_table(path: str, base: int, pid: int = 1, time: int = 0, build_id: bytes | None = None) -> pa.Table:
    _, off, size = text_segment(path)
    page = off & ~0xFFF
    return pa.table({"time": pa.array([time], pa.uint64()), "pid": pa.array([pid], pa.int32()),
                     "addr": pa.array([base], pa.uint64()), "len": pa.array([size + (off - page)], pa.uint64()),
                     "pgoff": pa.array([page], pa.uint64()), "filename": [path],
                     "build_id": pa.array([build_id if build_id is not None else read_build_id(path)],
                                          pa.binary())})


def runtime_addr(path: str, base: int, sym_vaddr: int) -> int:
    vaddr, off, _ = text_segment(path)
    return base + (sym_vaddr - vaddr + off) - (off & ~0xFFF)


def user_resolver(mm: pa.Table, usyms: pa.Table | None = None, symfs: str | None = None) -> UserResolver:
    """The resolver analyze builds, over these mmap (and usym) rows."""
    return UserResolver(Machine(mmap=mm), Dsos(usyms, symfs=symfs))


def resolve(sym: UserResolver, addrs: list[int], is_return, pid: int = 1, time: int = 10):
    a = np.array(addrs, np.uint64)
    return sym.resolve(np.full(len(a), pid), a, np.full(len(a), time, np.uint64), is_return)


FUNCS = ["leak_a", "leak_b", "leak_calloc", "leak_realloc", "leak_memalign", "churn", "main"]


def test_binary_on_disk_with_return_address_rule(exe):
    syms = nm(exe)
    mm = mmap_table(str(exe), BASE)
    sym = user_resolver(mm)
    addrs = [runtime_addr(str(exe), BASE, syms[f]) + 3 for f in FUNCS]
    names, offs, dsos = resolve(sym, addrs, False)
    assert list(names) == FUNCS and list(offs) == [3] * len(FUNCS) and set(dsos) == {str(exe)}
    # a return address right after a call that ends a function belongs to that function: addr-1
    order = sorted(FUNCS, key=lambda f: syms[f])
    nxt = {order[i + 1]: order[i] for i in range(len(order) - 1)}
    starts = [runtime_addr(str(exe), BASE, syms[f]) for f in nxt]
    names, _, _ = resolve(sym, starts, True)
    loaded = load_symbols(str(exe))
    for f, got in zip(nxt, names, strict=True):
        i = int(np.flatnonzero(loaded.names == f)[0])
        prev_end = loaded.addrs[i - 1] + loaded.sizes[i - 1]
        # the byte before f's start is the previous symbol's if that one reaches it, else padding
        assert got == (loaded.names[i - 1] if prev_end >= syms[f] else None)
    names, _, _ = resolve(sym, starts, False)
    assert list(names) == list(nxt)


def test_embedded_usym_rows_work_without_the_binary(exe, tmp_path):
    copy = tmp_path / "leaky_copy"
    shutil.copy(exe, copy)
    syms = nm(copy)
    rows = usym_rows([str(copy)])
    assert set(rows.column("kind").to_pylist()) == {"usym"}
    segs = [n for n in rows.column("name").to_pylist() if n.startswith("[PT_LOAD")]
    assert segs and all(re.fullmatch(r"\[PT_LOAD offset=0x[0-9a-f]+\]", n) for n in segs)
    assert rows.column("pgoff").null_count == len(rows)  # docs/format.md: pgoff is for mmap rows
    mm = mmap_table(str(copy), BASE)
    addrs = [runtime_addr(str(copy), BASE, syms[f]) + 1 for f in FUNCS]
    copy.unlink()
    assert list(resolve(user_resolver(mm), addrs, False)[0]) == [None] * len(FUNCS)
    names, offs, _ = resolve(user_resolver(mm, rows), addrs, False)
    assert list(names) == FUNCS and set(offs.tolist()) == {1}
    # an earlier writer's layout: `[PT_LOAD]` rows with p_offset in pgoff
    nm_ = rows.column("name").to_pylist()
    old_pg = [int(n.split("=")[1].rstrip("]"), 16) if n.startswith("[PT_LOAD") else None for n in nm_]
    old = rows.set_column(rows.schema.get_field_index("name"), "name",
                          pa.array(["[PT_LOAD]" if n.startswith("[PT_LOAD") else n for n in nm_]))
    old = old.set_column(old.schema.get_field_index("pgoff"), "pgoff", pa.array(old_pg, pa.uint64()))
    names, offs, _ = resolve(user_resolver(mm, old), addrs, False)
    assert list(names) == FUNCS and set(offs.tolist()) == {1}


def test_symfs_directory(exe, tmp_path):
    syms = nm(exe)
    fake = "/opt/gone/leaky"  # the path recorded on the target; the file lives under --symfs
    (tmp_path / "opt/gone").mkdir(parents=True)
    shutil.copy(exe, tmp_path / "opt/gone/leaky")
    mm = mmap_table(str(exe), BASE).set_column(5, "filename", pa.array([fake]))
    addrs = [runtime_addr(str(exe), BASE, syms["leak_b"]) + 8]
    assert resolve(user_resolver(mm), addrs, False)[0][0] is None
    assert resolve(user_resolver(mm, symfs=str(tmp_path)), addrs, False)[0][0] == "leak_b"


def test_libc_static_functions_via_build_id_debug_file():
    dbg = nm(next(Path("/usr/lib/debug/.build-id").glob(read_build_id(LIBC).hex()[:2] + "/"
                                                         + read_build_id(LIBC).hex()[2:] + ".debug")))
    dyn = nm(LIBC, dynamic=True)
    assert "malloc@@GLIBC_2.2.5" in dyn and not any(n.startswith("_int_malloc") for n in dyn)
    base = 0x7F00_0000_0000
    mm = mmap_table(LIBC, base)
    a = runtime_addr(LIBC, base, dbg["_int_malloc"]) + 0x10
    names, offs, _ = resolve(user_resolver(mm), [a], False)
    assert names[0] == "_int_malloc" and offs[0] == 0x10
    # a recorded build-id that matches neither file: no guessing
    bad = mmap_table(LIBC, base, build_id=b"\x01" * 20)
    assert resolve(user_resolver(bad), [a], False)[0][0] is None
    # embedded rows carry the debug file's symbols (best source on the target)
    rows = usym_rows([LIBC])
    assert "_int_malloc" in set(rows.column("name").to_pylist())


def test_mapping_timeline_picks_mapping_live_at_sample_time(exe):
    syms = nm(exe)
    a_exe = mmap_table(str(exe), BASE, pid=7, time=100)
    a_libc = mmap_table(LIBC, BASE, pid=7, time=200)  # later mapped over the same address
    mm = pa.concat_tables([a_libc, a_exe])
    addr = runtime_addr(str(exe), BASE, syms["leak_a"]) + 2
    sym = user_resolver(mm)
    _, _, dsos = sym.resolve(np.array([7, 7, 8]), np.array([addr] * 3, np.uint64),
                             np.array([150, 250, 150], np.uint64), False)
    assert list(dsos) == [str(exe), LIBC, None]


def test_cxx_names_are_demangled(tmp_path):
    out = tmp_path / "cxx"
    subprocess.run(["g++", "-O1", "-o", str(out), str(C_DIR / "cxx_leak.cpp")], check=True)
    mangled = [n for n in nm(out) if "grow" in n]
    assert mangled and mangled[0].startswith("_Z")
    mm = mmap_table(str(out), BASE)
    addr = runtime_addr(str(out), BASE, nm(out)[mangled[0]]) + 1
    names, _, _ = resolve(user_resolver(mm), [addr], False)
    assert names[0] == "kmlo::Cache<int>::grow(unsigned long)"
    assert demangle(["_ZN3foo3barEi", "plain"]) == {"_ZN3foo3barEi": "foo::bar(int)", "plain": "plain"}
