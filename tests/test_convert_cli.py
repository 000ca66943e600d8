"""`convert`, and the conversion `analyze`/`diff` do by themselves (cached), on raw recordings built
here from hand-made perf records (no root needed): the same report as from the converted file,
one conversion per source, bad chunks refused in one line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq

from kmemleak_offline.format import chunks
from kmemleak_offline.format.recording import (
    SCHEMA,
    _arrow_schema_kv,
    make_parts_dir,
    new_metadata,
    open_recording,
    write_part,
)
from kmemleak_offline.format.stitch import stitch_files
from tests.test_record_split import _comm, _sample

ROOT = Path(__file__).resolve().parents[1]
KMALLOC = """name: kmalloc
ID: 7
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;
\tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:unsigned long call_site;\toffset:8;\tsize:8;\tsigned:0;
\tfield:const void * ptr;\toffset:16;\tsize:8;\tsigned:0;
\tfield:size_t bytes_req;\toffset:24;\tsize:8;\tsigned:0;
\tfield:size_t bytes_alloc;\toffset:32;\tsize:8;\tsigned:0;

print fmt: "ptr=%p", REC->ptr
"""
KFREE = """name: kfree
ID: 8
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;
\tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:unsigned long call_site;\toffset:8;\tsize:8;\tsigned:0;
\tfield:const void * ptr;\toffset:16;\tsize:8;\tsigned:0;

print fmt: "ptr=%p", REC->ptr
"""
CHAIN = [2**64 - 128, 0xFFFFFFFF81000010, 0xFFFFFFFF81000020]


def _payload(ptr: int, size: int = 0) -> bytes:
    head = (7).to_bytes(2, "little") + b"\0\0" + (5).to_bytes(4, "little") + (0xFFFFFFFF81000020).to_bytes(8, "little")
    body = ptr.to_bytes(8, "little")
    return head + body + (size.to_bytes(8, "little") * 2 if size else b"")


def raw_recording(tmp: Path, name: str = "r.parquet") -> Path:
    """A raw parts folder: part 0 (kallsyms, a comm), two chunk parts of two rings: 30 kmallocs
    of 64 bytes, 20 of them freed."""
    meta = new_metadata("test record")
    meta["events"] = {"kmem:kmalloc": {"id": 7, "format": KMALLOC}, "kmem:kfree": {"id": 8, "format": KFREE}}
    meta["alloc"] = ["kmem:kmalloc//ptr=ptr/size=bytes_alloc/stack/"]
    meta["free"] = ["kmem:kfree//ptr=ptr/"]
    meta["counts"] = {"kmem:kmalloc": {"samples": 0, "lost": 0}, "kmem:kfree": {"samples": 0, "lost": 0}}
    meta["clock"].update(start_ns=1000, stop_ns=1000)
    meta["ring_chunks"] = chunks.ring_chunks_meta({7: ("kmem:kmalloc", True), 8: ("kmem:kfree", False),
                                                   99: (None, False)}, per_task=False)
    folder = make_parts_dir(tmp / name)
    write_part(folder, 0, [{"kind": ["ksym", "ksym"], "addr": [0xFFFFFFFF81000000, 0xFFFFFFFF81000018],
                            "name": ["kmalloc_thing", "caller_fn"]},
                           {"kind": ["comm"], "time": [1000], "pid": [5], "tid": [5], "comm": ["app"]}], meta)
    t, off = 1000, {0: 0, 1: 0}
    for part in (1, 2):
        w = chunks.ChunkWriter(folder, part)
        for ring in (0, 1):
            data = _comm(5, 5, b"app", t, False) if part == 1 and ring == 0 else b""
            for i in range(15):
                t += 1
                ptr = 0x10000 + 0x100 * (15 * ring + i) + 0x10000 * part
                data += _sample(7, 5, 5, t, ring, CHAIN, _payload(ptr, 64))
                if i < 10 and part == 1 or part == 2 and i < 10:
                    t += 1
                    data += _sample(8, 5, 5, t, ring, None, _payload(ptr))
            w.append(ring, ring, off[ring], [memoryview(data)], len(data))
            off[ring] += len(data)
        meta["clock"]["stop_ns"] = t
        w.add_metadata(meta)
        w.close()
        chunks.seal(folder, part)
    return folder


def cli(args: list[str], env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kmemleak_offline.cli", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=300, check=False,
                          env={**os.environ, **(env or {})})


def test_analyze_converts_once_and_reuses_the_cache(tmp_path: Path) -> None:
    folder = raw_recording(tmp_path)
    first = cli(["analyze", str(tmp_path / "r.parquet")])
    assert first.returncode == 0, first.stderr
    assert "converting the ring chunks" in first.stderr
    cache = tmp_path / "r.converted.parquet"
    assert cache.is_file() and folder.is_dir()  # the source is left as it is
    assert "TOTAL alloc 60 free 40" in first.stdout
    assert "Leak of 1280 bytes in 20 objects allocated from:" in first.stdout
    again = cli(["analyze", str(folder)])
    assert again.returncode == 0 and again.stderr == "" and again.stdout == first.stdout
    mtime = cache.stat().st_mtime_ns
    (folder / "part-00002.parquet").touch()  # the source changed: converted again
    third = cli(["analyze", str(folder)])
    assert "converting" in third.stderr and cache.stat().st_mtime_ns != mtime
    assert third.stdout.splitlines()[1:] == first.stdout.splitlines()[1:]
    d = cli(["diff", str(folder), str(cache)])
    assert d.returncode == 0 and "converting" not in d.stderr, d.stderr


def test_cache_goes_to_xdg_when_the_folder_is_not_writable(tmp_path: Path, monkeypatch, capsys) -> None:
    from kmemleak_offline.commands import convert as convmod

    folder = raw_recording(tmp_path)
    cache_home = tmp_path / "cache"
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache_home))
    real = os.access
    monkeypatch.setattr(convmod.os, "access", lambda p, mode: False if Path(p) == tmp_path else real(p, mode))
    rec = convmod.converted(open_recording(folder))
    made = list((cache_home / "kmemleak-offline").glob("*-r.converted.parquet"))
    assert len(made) == 1 and rec.path == made[0] and not (tmp_path / "r.converted.parquet").exists()
    assert rec.metadata["counts"]["kmem:kmalloc"]["samples"] == 60
    assert convmod.converted(open_recording(folder)).path == made[0]  # reused
    assert capsys.readouterr().err.count("converting") == 1


def test_convert_in_place_file_and_folder(tmp_path: Path) -> None:
    folder = raw_recording(tmp_path)
    res = cli(["convert", str(folder)])
    assert res.returncode == 0, res.stderr
    assert "converted 100 events" in res.stderr
    out = tmp_path / "r.parquet"
    assert out.is_file() and not folder.exists()
    rec = open_recording(out)
    assert "ring_chunks" not in rec.metadata and rec.table(["chunk"], ["ring"]).num_rows == 0
    assert rec.metadata["counts"]["kmem:kmalloc"]["samples"] == 60
    assert rec.table(["ksym"], ["name"]).num_rows == 2  # the source's rows come along
    schema = pq.read_schema(out)
    assert schema.remove_metadata().equals(SCHEMA.remove_metadata())  # the recording's full schema
    again = cli(["convert", str(out)])
    assert again.returncode == 0 and "nothing to convert" in again.stderr

    folder = raw_recording(tmp_path, "s.parquet")  # a raw single file (record --defer-convert)
    single = tmp_path / "s.parquet"
    raw = open_recording(folder)
    stitch_files(raw.files, single, _arrow_schema_kv(raw.metadata))
    res = cli(["convert", str(single), "-o", str(tmp_path / "s2.parquet")])
    assert res.returncode == 0, res.stderr
    a = cli(["analyze", str(tmp_path / "s2.parquet")]).stdout
    b = cli(["analyze", str(out)]).stdout
    assert a.splitlines()[1:] == b.splitlines()[1:]


def test_damaged_chunks_are_one_line_exit_2(tmp_path: Path) -> None:
    folder = raw_recording(tmp_path)
    part = folder / "part-00001.parquet"
    t = pq.read_table(part)
    raw = t.column("raw").to_pylist()
    raw[0] = raw[0][:16] + b"\x07" * (len(raw[0]) - 16)  # a record size no longer tiles the chunk
    import pyarrow as pa

    from kmemleak_offline.format.recording import SCHEMA, parquet_writer

    t = t.set_column(t.schema.get_field_index("raw"), "raw", pa.array(raw, pa.binary()))
    w = parquet_writer(part, SCHEMA, "zstd")
    w.write_table(t.cast(SCHEMA))
    w.add_key_value_metadata(pq.read_metadata(folder / "part-00002.parquet").metadata)
    w.close()
    res = cli(["analyze", str(folder)])
    assert res.returncode == 2, res.stderr
    lines = [x for x in res.stderr.splitlines() if "converting" not in x]
    assert len(lines) == 1 and "Traceback" not in res.stderr and "part-00001" in lines[0], res.stderr
    assert not list(tmp_path.glob("*.converted.parquet*"))  # nothing half-written left
