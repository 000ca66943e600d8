"""`import`/`analyze --kallsyms FILE` and `--vmlinux FILE`: the target's kernel symbols given by hand.

A real perf.data recorded here, with a copy of /proc/kallsyms taken at record time (the snapshot a
user would bring from the target), a deliberately wrong snapshot (every address +0x100000, as if
from another boot) and a vmlinux made here (gas + ld: absolute symbols, chosen build-id).
"""

from __future__ import annotations

import gzip
import lzma
import re
import shutil
import subprocess
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from kmemleak_offline.cli import main
from kmemleak_offline.format.integrity import seal
from kmemleak_offline.format.recording import open_recording
from kmemleak_offline.perfdata import reader as perfreader

PERF = shutil.which("perf") or "perf"
FRAME = re.compile(r"^\s+([0-9a-f]{16}) (\S+) \(\[kernel\.kallsyms\]\)$")
SPECS = ["--alloc", "kmem:kmalloc//ptr=ptr/size=bytes_alloc/stack/", "--free", "kmem:kfree//ptr=ptr/"]


def _root_kallsyms() -> bytes:
    text = Path("/proc/kallsyms").read_bytes()
    if not text.split(None, 1)[0].strip(b"0"):
        pytest.skip("/proc/kallsyms addresses are hidden (not root)")
    return text


@pytest.fixture(scope="module")
def kdata(tmp_path_factory) -> tuple[Path, Path]:
    """(perf.data of kmalloc/kfree with kernel call chains, the /proc/kallsyms copied then)."""
    d = tmp_path_factory.mktemp("kern")
    data, snap = d / "k.data", d / "kallsyms"
    snap.write_bytes(_root_kallsyms())
    res = subprocess.run([PERF, "record", "-q", "-e", "kmem:kmalloc", "-e", "kmem:kfree", "-g", "-a",
                          "-o", str(data), "--", "sh", "-c", "ls -R /usr/lib > /dev/null"],
                         capture_output=True, text=True, timeout=120, check=False)
    assert res.returncode == 0, res.stderr
    return data, snap


def _frames(rec: Path, capsys, *extra: str) -> tuple[list[tuple[str, str]], str]:
    """(address, name) of every kernel frame `analyze` prints, and its stderr."""
    capsys.readouterr()
    assert main(["analyze", str(rec), "-j", "1", *extra]) == 0
    out = capsys.readouterr()
    frames = [m.groups() for m in map(FRAME.match, out.out.splitlines()) if m]
    return frames, out.err


def _import(data: Path, out: Path, capsys, *extra: str) -> str:
    capsys.readouterr()
    assert main(["import", str(data), "-o", str(out), *SPECS, *extra]) == 0
    return capsys.readouterr().err


def _warnings(err: str) -> list[str]:
    return [ln for ln in err.splitlines() if "warning:" in ln]


def _shifted(text: bytes, delta: int) -> bytes:
    out = []
    for ln in text.splitlines():
        addr, rest = ln.split(b" ", 1)
        out.append(b"%016x %s" % (int(addr, 16) + delta, rest))
    return b"\n".join(out) + b"\n"


def test_snapshot_resolves_like_the_local_kallsyms(kdata, tmp_path: Path, capsys) -> None:
    data, snap = kdata
    (tmp_path / "k.gz").write_bytes(gzip.compress(snap.read_bytes()))
    (tmp_path / "k.xz").write_bytes(lzma.compress(snap.read_bytes()))
    err = _import(data, tmp_path / "local.parquet", capsys)
    assert "/proc/kallsyms of this machine" in err and not _warnings(err)
    want, _ = _frames(tmp_path / "local.parquet", capsys)
    assert len(want) > 5 and all(n != "Unknown" for _, n in want)
    for f in (snap, tmp_path / "k.gz", tmp_path / "k.xz"):
        out = tmp_path / f"{f.name}.parquet"
        err = _import(data, out, capsys, "--kallsyms", str(f))
        assert f"from --kallsyms {f}" in err and not _warnings(err), err
        got, aerr = _frames(out, capsys)
        assert got == want and not _warnings(aerr)


def test_wrong_snapshot_changes_frames_and_warns_once(kdata, tmp_path: Path, capsys) -> None:
    data, snap = kdata
    bad = tmp_path / "bad"
    bad.write_bytes(_shifted(snap.read_bytes(), 0x100000))
    err = _import(data, tmp_path / "good.parquet", capsys, "--kallsyms", str(snap))
    want, _ = _frames(tmp_path / "good.parquet", capsys)
    err = _import(data, tmp_path / "bad.parquet", capsys, "--kallsyms", str(bad))
    warns = _warnings(err)
    text = int(next(ln.split()[0] for ln in snap.read_bytes().splitlines() if ln.endswith(b" _text")), 16)
    assert len(warns) == 1 and f"{text + 0x100000:#x}" in warns[0] and f"{text:#x}" in warns[0], err
    got, _ = _frames(tmp_path / "bad.parquet", capsys)
    assert [a for a, _ in got] == [a for a, _ in want]  # same addresses, other names
    assert [n for _, n in got] != [n for _, n in want]
    notes = open_recording(tmp_path / "bad.parquet").metadata["notes"]
    assert [n for n in notes if "warning:" in n] == [warns[0].split("import: ", 1)[1]]


def _strip_ksyms(src: Path, dst: Path) -> Path:
    """The recording without its ksym rows (as imported on a machine with another kernel)."""
    t = pq.read_table(src)
    t = t.filter(pc.not_equal(t.column("kind").cast("string"), "ksym"))
    pq.write_table(t.replace_schema_metadata(pq.read_schema(src).metadata), dst)
    seal(dst)  # rewritten: sealed again, as a writer would
    return dst


def test_analyze_kallsyms_for_a_recording_without_ksym_rows(kdata, tmp_path: Path, capsys) -> None:
    data, snap = kdata
    _import(data, tmp_path / "r.parquet", capsys)
    want, _ = _frames(tmp_path / "r.parquet", capsys)
    bare = _strip_ksyms(tmp_path / "r.parquet", tmp_path / "bare.parquet")
    capsys.readouterr()
    assert main(["info", str(bare)]) == 0 and "ksym" not in capsys.readouterr().out.split("rows:")[1].split("\n")[0]
    none, _ = _frames(bare, capsys)
    assert none and all(n.startswith("Unknown") for _, n in none)
    got, err = _frames(bare, capsys, "--kallsyms", str(snap))
    assert got == want and not _warnings(err)
    bad = tmp_path / "bad.xz"
    bad.write_bytes(lzma.compress(_shifted(snap.read_bytes(), 0x100000)))
    got, err = _frames(bare, capsys, "--kallsyms", str(bad))
    assert [n for _, n in got] != [n for _, n in want] and len(_warnings(err)) == 1 and "_text" in err


def _fake_vmlinux(snap: bytes, d: Path, build_id: bytes) -> tuple[Path, Path]:
    """(an ELF with the snapshot's plain-named text symbols as absolute symbols and `build_id`,
    the same symbols as a kallsyms text) to compare the ELF reading against."""
    lines, text, seen = [], [], set()
    for ln in snap.decode().splitlines():
        p = ln.split()
        if len(p) == 3 and p[1] in "Tt" and re.fullmatch(r"[A-Za-z_]\w*", p[2]) and p[2] not in seen:
            seen.add(p[2])
            lines.append(f".globl {p[2]}\n.type {p[2]},@function\n.set {p[2]}, 0x{p[0]}\n")
            text.append(ln)
    (d / "v.s").write_text("".join(lines))
    for cmd in (["as", "-o", str(d / "v.o"), str(d / "v.s")],
                ["ld", "-shared", f"--build-id=0x{build_id.hex()}", "-o", str(d / "vmlinux"), str(d / "v.o")]):
        res = subprocess.run(cmd, capture_output=True, text=True, check=False)
        assert res.returncode == 0, res.stderr
    (d / "subset").write_text("\n".join(text) + "\n")
    return d / "vmlinux", d / "subset"


def test_vmlinux_symbols_and_build_id_check(kdata, tmp_path: Path, capsys) -> None:
    if not (shutil.which("as") and shutil.which("ld")):
        pytest.skip("binutils (as, ld) not installed")
    data, snap = kdata
    bid = perfreader.read_perf_data(data).build_ids.get("[kernel.kallsyms]")
    assert bid, "perf record wrote no kernel build-id"
    vml, subset = _fake_vmlinux(snap.read_bytes(), tmp_path, bid)
    _import(data, tmp_path / "s.parquet", capsys, "--kallsyms", str(subset))
    want, _ = _frames(tmp_path / "s.parquet", capsys)
    err = _import(data, tmp_path / "v.parquet", capsys, "--vmlinux", str(vml))
    assert f"from --vmlinux {vml}" in err and not _warnings(err), err
    got, _ = _frames(tmp_path / "v.parquet", capsys)
    assert got == want and len(got) > 5
    other = bytes(b ^ 0xFF for b in bid)
    vml2, _ = _fake_vmlinux(snap.read_bytes(), tmp_path, other)
    err = _import(data, tmp_path / "v2.parquet", capsys, "--vmlinux", str(vml2))
    warns = _warnings(err)
    assert len(warns) == 1 and "build-id" in warns[0] and other.hex() in warns[0] and bid.hex() in warns[0]
    # analyze: the recording keeps the kernel's build-id, so the same check applies there
    got, aerr = _frames(tmp_path / "s.parquet", capsys, "--vmlinux", str(vml2))
    assert len(_warnings(aerr)) == 1 and "build-id" in aerr


def test_bad_kernel_files_are_one_line(kdata, tmp_path: Path, capsys) -> None:
    data, snap = kdata
    rec = tmp_path / "r.parquet"
    _import(data, rec, capsys)
    junk = tmp_path / "junk"
    junk.write_text("hello world\n")
    zeros = tmp_path / "zeros"
    zeros.write_text("0000000000000000 T _text\n0000000000000000 T foo\n")
    for argv, word in ((["--kallsyms", str(tmp_path / "nope")], "no such file"),
                       (["--kallsyms", str(junk)], "not a kallsyms"),
                       (["--kallsyms", str(zeros)], "as root"),
                       (["--vmlinux", str(junk)], "not an ELF"),
                       (["--kallsyms", str(snap), "--vmlinux", str(snap)], "not both")):
        for cmd in (["import", str(data), "-o", str(tmp_path / "x.parquet")], ["analyze", str(rec)]):
            capsys.readouterr()
            assert main(cmd + argv) == 2
            err = capsys.readouterr().err
            assert len(err.splitlines()) == 1 and word in err, err
    assert not (tmp_path / "x.parquet").exists()
