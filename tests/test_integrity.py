"""Integrity (docs/format.md): page checksums and the footer digest refuse damage; part numbers
and the manifest name stray and missing parts; files of earlier versions still read.

bench/fuzz.py damages files at random; these tests pin each mechanism on its own."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from kmemleak_offline.format import integrity, stitch
from kmemleak_offline.format.recording import (
    MANIFEST,
    METADATA_KEY,
    PART_KEY,
    RecordingWriter,
    open_recording,
    write_recording,
)
from tests.test_analyze_cli import COMMS_A, EVENTS_A, build, run

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def rec(tmp_path) -> Path:
    return build(EVENTS_A, tmp_path / "a.parquet", comms=COMMS_A)


def _column_chunk(path: Path, name: str):
    md = pq.ParquetFile(path).metadata
    for g in range(md.num_row_groups):
        for c in range(md.num_columns):
            col = md.row_group(g).column(c)
            if col.path_in_schema == name and col.total_compressed_size > 64:
                return col
    raise AssertionError(name)


def test_written_files_carry_both_checks(rec):
    assert integrity.verify_footer(rec, required=True)
    meta = open_recording(rec).metadata
    assert meta["integrity"] == {"pages": "crc32", "footer": "sha256"}
    pf = pq.ParquetFile(rec, page_checksum_verification=True)
    assert pf.read().num_rows == pf.metadata.num_rows


@pytest.mark.parametrize("column", ["raw", "time", "kind", "name"])
def test_a_flipped_byte_in_a_page_is_refused(rec, tmp_path, capsys, column):
    """The commands that read the page refuse the file; none prints other figures (analyze
    skips the `kind` pages of sample row groups: their statistics already say `sample`)."""
    col = _column_chunk(rec, column)
    data = bytearray(rec.read_bytes())
    start = min(x for x in (col.dictionary_page_offset, col.data_page_offset) if x is not None)
    data[start + col.total_compressed_size - 3] ^= 0x04  # inside the chunk's last page
    bad = tmp_path / "flip.parquet"
    bad.write_bytes(bytes(data))
    refused = 0
    for cmd in ("analyze", "info"):
        want = run(capsys, cmd, rec)
        code, out, err = run(capsys, cmd, bad)
        if code == 2:
            refused += 1
            assert out == "" and "CRC checksum verification failed" in err
            assert len(err.splitlines()) == 1
        else:
            assert (code, out.replace(str(bad), "R"), err) == (want[0], want[1].replace(str(rec), "R"), want[2])
    assert refused


@pytest.mark.parametrize("what", [b'"hostname"', b"bytes_alloc;", b"kmemleak_offline.footer_sha256"])
def test_a_flipped_byte_in_the_footer_is_refused(rec, tmp_path, capsys, what):
    data = bytearray(rec.read_bytes())
    i = data.rfind(what)
    assert i > 0
    data[i + 3] ^= 0x01
    bad = tmp_path / "foot.parquet"
    bad.write_bytes(bytes(data))
    for cmd in ("analyze", "info"):
        code, out, err = run(capsys, cmd, bad)
        assert (code, out) == (2, "")
        assert "damaged recording" in err and len(err.splitlines()) == 1


def test_a_footer_that_lost_its_digest_is_refused(rec, tmp_path, capsys):
    bad = tmp_path / "nodigest.parquet"
    shutil.copy(rec, bad)
    fmd, start = stitch.read_footer(bad)
    stitch.drop_kv(fmd, [integrity.DIGEST_KEY])
    footer = stitch.encode(fmd)
    with open(bad, "r+b") as f:
        f.seek(start)
        f.write(footer + len(footer).to_bytes(4, "little") + b"PAR1")
        f.truncate()
    code, _, err = run(capsys, "analyze", bad)
    assert code == 2 and "footer checksum is missing" in err


def test_files_of_earlier_versions_still_read(capsys):
    for name in ("pipe-leak.parquet", "malloc-leak.parquet"):  # recorded before the checks existed
        code, out, err = run(capsys, "analyze", ROOT / "samples" / name)
        assert code == 0 and "Leak of" in out and err == ""


def test_another_writer_that_seals_its_file_is_read(rec, tmp_path, capsys):
    t = pq.read_table(rec)
    meta = json.loads(t.schema.metadata[METADATA_KEY])
    meta["host"]["hostname"] = "elsewhere"
    other = tmp_path / "other.parquet"
    pq.write_table(t.replace_schema_metadata({METADATA_KEY: json.dumps(meta)}), other)
    code, _, err = run(capsys, "info", other)
    assert code == 2 and "footer checksum" in err  # edited and not sealed: refused
    integrity.seal(other)
    code, out, _ = run(capsys, "info", other)
    assert code == 0 and "elsewhere" in out


def _parts(tmp_path: Path, rec: Path, n: int = 3) -> Path:
    t = pq.read_table(rec)
    meta = json.loads(t.schema.metadata[METADATA_KEY])
    t = t.replace_schema_metadata(None)
    w = RecordingWriter(tmp_path / "k.parquet", meta, parts=True)
    step = -(-t.num_rows // n)
    for lo in range(0, t.num_rows, step):
        w.write(t.slice(lo, step))
        w.flush_part()
    return w.parts_dir


def test_parts_carry_numbers_and_a_manifest(rec, tmp_path, capsys):
    parts = _parts(tmp_path, rec)
    names = sorted(p.name for p in parts.glob("part-*.parquet"))
    assert names == ["part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
    lines = [json.loads(x) for x in (parts / MANIFEST).read_text().splitlines()]
    assert [x["seq"] for x in lines] == [0, 1, 2] and len({x["recording"] for x in lines}) == 1
    for i, name in enumerate(names):
        kv = pq.ParquetFile(parts / name).metadata.metadata
        assert json.loads(kv[PART_KEY])["seq"] == i
    code, want, _ = run(capsys, "analyze", rec, "--utc")
    code, got, err = run(capsys, "analyze", parts, "--utc")
    assert (code, err) == (0, "") and got.replace(str(parts), "R") == want.replace(str(rec), "R")


def test_a_copied_part_is_named_and_counted_once(rec, tmp_path, capsys):
    parts = _parts(tmp_path, rec)
    code, want, _ = run(capsys, "analyze", parts, "--utc")
    shutil.copy(parts / "part-00001.parquet", parts / "part-00001 (copy).parquet")
    shutil.copy(parts / "part-00002.parquet", parts / "part-00005.parquet")
    code, got, err = run(capsys, "analyze", parts, "--utc")
    assert code == 0 and got == want
    assert f"warning: {parts}/part-00001 (copy).parquet repeats part 1 (part-00001.parquet): ignored" in err
    assert f"warning: {parts}/part-00005.parquet repeats part 2 (part-00002.parquet): ignored" in err


@pytest.mark.parametrize("gone", [0, 1, 2])
def test_a_missing_part_is_named(rec, tmp_path, capsys, gone):
    """The first, a middle one, or the last (known only from the manifest)."""
    parts = _parts(tmp_path, rec)
    (parts / f"part-{gone:05d}.parquet").unlink()
    for cmd in ("analyze", "info"):
        code, out, err = run(capsys, cmd, parts)
        assert code == 0
        assert (f"warning: {parts}: part {gone} (part-{gone:05d}.parquet) is missing: its rows "
                "are not in this analysis") in err
    assert "warnings:" in out  # info lists it in its summary too
    code, out, _ = run(capsys, "analyze", parts, "--format", "json")
    assert any("is missing" in w for w in json.loads(out)["warnings"])


def test_a_part_of_another_recording_is_ignored(rec, tmp_path, capsys):
    parts = _parts(tmp_path, rec)
    code, want, _ = run(capsys, "analyze", parts, "--utc")
    (tmp_path / "o").mkdir()
    other = _parts(tmp_path / "o", build(EVENTS_A[:3], tmp_path / "b.parquet"))
    shutil.copy(other / "part-00001.parquet", parts / "part-00003.parquet")
    shutil.copy(rec, parts / "part-00004.parquet")  # a single file, no part number
    code, got, err = run(capsys, "analyze", parts, "--utc")
    assert code == 0 and got == want
    assert f"warning: {parts}/part-00003.parquet is not a part of this recording" in err
    assert f"warning: {parts}/part-00004.parquet is not a part of this recording" in err


def test_parts_are_read_in_number_order_whatever_their_names(rec, tmp_path, capsys):
    parts = _parts(tmp_path, rec)
    code, want, _ = run(capsys, "analyze", parts, "--utc", "-v")
    (parts / "part-00000.parquet").rename(parts / "tmp")
    (parts / "part-00002.parquet").rename(parts / "part-00000.parquet")
    (parts / "tmp").rename(parts / "part-00002.parquet")
    code, got, _ = run(capsys, "analyze", parts, "--utc", "-v")
    assert code == 0 and got == want
    rec2 = open_recording(parts)
    assert [json.loads(pq.ParquetFile(f).metadata.metadata[PART_KEY])["seq"] for f in rec2.files] == [0, 1, 2]


def test_the_stitched_file_drops_part_numbers_and_is_sealed(rec, tmp_path):
    t = pq.read_table(rec)
    meta = json.loads(t.schema.metadata[METADATA_KEY])
    w = RecordingWriter(tmp_path / "s.parquet", meta, parts=True)
    w.write(t.replace_schema_metadata(None))
    w.flush_part()
    out = w.close()
    kv = pq.ParquetFile(out).metadata.metadata
    assert PART_KEY not in kv and integrity.verify_footer(out, required=True)
    single = write_recording(tmp_path / "w.parquet", meta, [t.replace_schema_metadata(None)])
    assert integrity.verify_footer(single, required=True)


def test_a_valid_page_from_elsewhere_is_refused(rec, tmp_path, capsys):
    """Bytes copied within the file (a whole valid page over another) pass every page CRC; the
    row counts and statistics of the digest-checked footer still tell (found by bench/fuzz.py)."""
    md = pq.ParquetFile(rec).metadata
    side = next(g for g in range(md.num_row_groups) if md.row_group(g).num_rows != md.row_group(0).num_rows)
    kind = next(md.row_group(side).column(c) for c in range(md.num_columns)
                if md.row_group(side).column(c).path_in_schema == "kind")
    src = next(md.row_group(0).column(c) for c in range(md.num_columns)
               if md.row_group(0).column(c).path_in_schema == "kind")
    data = bytearray(rec.read_bytes())
    a = src.dictionary_page_offset
    b = kind.dictionary_page_offset
    n = min(src.total_compressed_size, kind.total_compressed_size)
    data[b:b + n] = data[a:a + n]  # the sample group's kind pages over the side-band group's
    bad = tmp_path / "moved.parquet"
    bad.write_bytes(bytes(data))
    for cmd in ("analyze", "info"):
        code, out, err = run(capsys, cmd, bad)
        assert (code, out) == (2, ""), (cmd, err)
        assert "the file is truncated or corrupt" in err and len(err.splitlines()) == 1


@pytest.mark.parametrize("op", ["delete", "flip"])
def test_damaged_page_headers_are_refused_never_an_internal_error(rec, tmp_path, capsys, op):
    """Each chunk's first page header damaged in turn (a page CRC does not cover its header):
    refused in one line, or (bytes no command read) the same report; never another outcome."""
    code, want, _ = run(capsys, "analyze", rec, "--comm")
    md = pq.ParquetFile(rec).metadata
    data = rec.read_bytes()
    bad = tmp_path / "hdr.parquet"
    outcomes = set()
    for g in range(md.num_row_groups):
        for c in range(md.num_columns):
            cc = md.row_group(g).column(c)
            start = cc.dictionary_page_offset if cc.has_dictionary_page else cc.data_page_offset
            for k in range(0, 16, 1 if g else 8):  # the side-band group's headers byte by byte
                b = bytearray(data)
                if op == "delete":
                    del b[start + k]
                else:
                    b[start + k] ^= 0x20
                bad.write_bytes(bytes(b))
                code, out, err = run(capsys, "analyze", bad, "--comm")
                assert "internal error" not in err and "Traceback" not in err, (g, cc.path_in_schema, k, err)
                if code == 2:
                    assert out == "" and len(err.splitlines()) == 1
                else:
                    assert code == 0 and out.replace(str(bad), "R") == want.replace(str(rec), "R"), \
                        (g, cc.path_in_schema, k)
                outcomes.add(code)
    assert 2 in outcomes
