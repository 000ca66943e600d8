"""Bad input (docs/behaviour.md, exit status): one line on stderr (an expression error may add its caret block),
exit status 2, nothing on stdout, never a traceback; and a recorder's parts folder analyses fine."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from kmemleak_offline.format.integrity import seal
from kmemleak_offline.format.recording import METADATA_KEY, RecordingWriter
from tests.test_analyze_cli import (
    COMMS_A,
    EVENTS_A,
    EVENTS_B,
    PAGE_ALLOC,
    PAGE_FREE,
    build,
    page_fields,
    run,
)


@pytest.fixture
def rec(tmp_path: Path) -> Path:
    return build(EVENTS_A, tmp_path / "a.parquet", comms=COMMS_A)


@pytest.fixture
def rec_pages(tmp_path: Path) -> Path:
    return build(EVENTS_B, tmp_path / "b.parquet", alloc=[PAGE_ALLOC], free=[PAGE_FREE],
                 alloc_event="kmem:mm_page_alloc", free_event="kmem:mm_page_free",
                 extra_alloc_fields=page_fields)


def assert_one_line_error(code: int, out: str, err: str, *needles: str) -> None:
    assert "Traceback" not in err and "internal error" not in err, err
    assert out == ""
    assert len(err.splitlines()) == 1, err
    assert err.startswith("kmemleak-offline: ")
    for n in needles:
        assert n in err, (n, err)
    assert code == 2, f"exit status {code} for: {err.strip()}"


def with_metadata(src: Path, dst: Path, edit) -> Path:
    t = pq.read_table(src)
    meta = json.loads(t.schema.metadata[METADATA_KEY])
    edit(meta)
    pq.write_table(t.replace_schema_metadata({METADATA_KEY: json.dumps(meta)}), dst)
    seal(dst)  # edited by hand: sealed again, as a writer would
    return dst


# ----------------------------------------------------------------------------- files

def test_nonexistent_file(tmp_path, capsys):
    p = tmp_path / "nope.parquet"
    assert_one_line_error(*run(capsys, "analyze", p), str(p), "no such file")


def test_text_file(tmp_path, capsys):
    p = tmp_path / "notes.txt"
    p.write_text("this is not parquet\n" * 10)
    assert_one_line_error(*run(capsys, "analyze", p), str(p), "not a recording")


def test_parquet_without_our_metadata(tmp_path, capsys):
    p = tmp_path / "plain.parquet"
    pq.write_table(pa.table({"x": [1, 2, 3]}), p)
    assert_one_line_error(*run(capsys, "analyze", p), str(p), "not a kmemleak-offline recording")


@pytest.mark.parametrize("cmd", ["analyze", "info"])
def test_truncated_recording(rec, tmp_path, capsys, cmd):
    p = tmp_path / "half.parquet"
    data = rec.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    assert_one_line_error(*run(capsys, cmd, p), str(p))


@pytest.mark.parametrize("cmd", ["analyze", "info"])
def test_corrupt_data_pages_with_an_intact_footer(rec, tmp_path, capsys, cmd):
    """The footer opens fine, the column data does not decode: still bad input, not an internal error."""
    p = tmp_path / "corrupt.parquet"
    data = bytearray(rec.read_bytes())
    data[200:3000] = (bytes(range(256)) * 11)[:2800]
    p.write_bytes(bytes(data))
    assert_one_line_error(*run(capsys, cmd, p), str(p))


def test_newer_format_version(rec, tmp_path, capsys):
    p = with_metadata(rec, tmp_path / "v99.parquet", lambda m: m.update(format_version=99))
    assert_one_line_error(*run(capsys, "analyze", p), "format_version 99")


def test_unreadable_file(rec, capsys, monkeypatch):
    # we are root, so chmod 000 would not stop us: simulate the kernel's EACCES on this one path
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, *a, **k:
                        False if Path(p) == rec else real_access(p, mode, *a, **k))
    code, out, err = run(capsys, "analyze", rec)
    assert_one_line_error(code, out, err, str(rec))
    assert "permission denied" in err or "not readable" in err


def test_directory_that_is_not_a_recording(tmp_path, capsys):
    d = tmp_path / "empty.parquet"
    d.mkdir()
    assert_one_line_error(*run(capsys, "analyze", d), str(d))


# ----------------------------------------------------------------------------- specs and options

def test_unknown_event_in_alloc(rec, capsys):
    assert_one_line_error(*run(capsys, "analyze", rec, "--alloc", "kmem:nosuch//ptr=ptr/"),
                          "kmem:nosuch")


def test_missing_ptr(rec_pages, capsys):
    # mm_page_alloc has no field named ptr, and no ptr= was given
    assert_one_line_error(*run(capsys, "analyze", rec_pages, "--alloc", "kmem:mm_page_alloc",
                               "--free", PAGE_FREE), "kmem:mm_page_alloc", "ptr")


def test_missing_trailing_slash(rec, capsys):
    assert_one_line_error(*run(capsys, "analyze", rec, "--alloc", "kmem:kmalloc//ptr=ptr"), "ptr=ptr")


def test_unknown_attribute(rec, capsys):
    assert_one_line_error(*run(capsys, "analyze", rec, "--alloc", "kmem:kmalloc//ptr=ptr/bogus/"),
                          "bogus")


def test_bad_than(rec, capsys):
    assert_one_line_error(*run(capsys, "analyze", rec, "--than", "10x"), "10x")


def test_bad_format(rec, capsys):
    assert_one_line_error(*run(capsys, "analyze", rec, "--format", "xml"), "xml")


def test_unknown_option(rec, capsys):
    assert_one_line_error(*run(capsys, "analyze", rec, "--bogus"), "--bogus")


def test_missing_argument(capsys):
    assert_one_line_error(*run(capsys, "analyze"), "RECORDING")


def test_bad_expression_shows_caret_and_fields(rec, capsys):
    code, out, err = run(capsys, "analyze", rec, "--alloc", "kmem:kmalloc//ptr=ptr+/size=bytes_alloc/")
    assert "Traceback" not in err and out == ""
    lines = err.splitlines()
    assert lines[0] == "ptr+"
    assert lines[1].index("^") == len("ptr+") - 1 or lines[1].index("^") == len("ptr+")
    assert "Available variables:" in lines
    for field in ("ptr", "bytes_alloc", "call_site", "gfp_flags"):
        assert any(ln.split()[-1] == field for ln in lines), field
    assert code == 2


def test_command_line_exit_status(rec, tmp_path):
    """The installed entry point (a real process): status 2 and one stderr line."""
    p = subprocess.run([sys.executable, "-m", "kmemleak_offline", "analyze", str(tmp_path / "nope")],
                       check=False, capture_output=True, text=True, timeout=60,
                       cwd=Path(__file__).resolve().parents[1])
    assert p.stdout == ""
    assert p.stderr.count("\n") == 1 and "no such file" in p.stderr
    assert p.returncode == 2


@pytest.mark.parametrize("args", [["analyze", "-v"], ["analyze", "--format", "json", "-v"]])  # > a pipe buffer
def test_reader_closing_the_pipe_is_not_an_error(args):
    """`kmemleak-offline analyze ... | head -1`: status 0, nothing on stderr."""
    sample = Path(__file__).resolve().parents[1] / "samples" / "pipe-leak.parquet"
    p = subprocess.Popen([sys.executable, "-m", "kmemleak_offline", args[0], str(sample), *args[1:]],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         cwd=Path(__file__).resolve().parents[1])
    assert p.stdout.readline()
    p.stdout.close()
    err = p.stderr.read()
    assert p.wait(timeout=60) == 0 and err == "", err


# ----------------------------------------------------------------------------- parts folder

def test_parts_folder_analyses_like_the_file(rec, tmp_path, capsys):
    """A recorder killed before close leaves `<path>.parts/`; analyze/info accept it."""
    table = pq.read_table(rec)
    meta = json.loads(table.schema.metadata[METADATA_KEY])
    target = tmp_path / "killed.parquet"
    w = RecordingWriter(target, meta, parts=True)
    half = table.num_rows // 2
    w.write(table.slice(0, half).replace_schema_metadata(None))
    w.flush_part()
    w.write(table.slice(half).replace_schema_metadata(None))
    w.flush_part()  # ...and no close(): SIGKILL
    assert not target.exists()
    code, want, _ = run(capsys, "analyze", rec, "--utc", "--comm")
    assert code == 0
    for p in (target, w.parts_dir):
        code, out, err = run(capsys, "analyze", p, "--utc", "--comm")
        assert (code, err) == (0, "")
        assert out == want
    code, out, _ = run(capsys, "info", target)
    assert code == 0 and "PARTIAL" in out


# ----------------------------------------------------------------------------- metadata values

def _set(path: str, value):
    def edit(meta):
        keys = path.split(".")
        d = meta
        for k in keys[:-1]:
            d = d.setdefault(k, {})
        d[keys[-1]] = value
    return edit


@pytest.mark.parametrize(("key", "value"), [
    ("clock.start_ns", -1e18), ("clock.stop_ns", float("nan")), ("clock.stop_ns", "a"),
    ("clock.anchor.perf_ns", [1]), ("counts", [1, 2]), ("alloc", 5), ("free", [1]),
    ("host.ncpus", 1e308), ("options.pids", "12"), ("events", {"kmem:kmalloc": {"format": 7}}),
    ("options.kernel_filters", {"kmem:kmalloc": 3}), ("producer", {"x": 1}), ("stopped", 0),
    ("events.kmem:kmalloc", None), ("events.kmem:kfree.format", None), ("probes", [{"event": [1]}]),
    ("counts.kmem:kmalloc.kernel_count", -5), ("options.call_graph", "yes"), ("lost_by_ring", [7]),
])
@pytest.mark.parametrize("cmd", ["analyze", "info"])
def test_metadata_values_of_the_wrong_type_or_range(rec, tmp_path, capsys, key, value, cmd):
    """Each is one line naming the key, exit 2 (they were internal errors, or silently used)."""
    bad = with_metadata(rec, tmp_path / "m.parquet", _set(key, value))
    assert_one_line_error(*run(capsys, cmd, bad), "recording metadata", key.split(".")[0])


@pytest.mark.parametrize("args", [
    ["-i", "88475753096611"], ["--than", "99999999999999999999"],
    ["--alloc", "kmem:kmalloc/" + "(" * 1000 + "1" + ")" * 1000 + "/", "--free", "kmem:kfree"],
    ["--alloc", "kmem:kmalloc//ptr=" + "ntohl(" * 500 + "ptr" + ")" * 500 + "/", "--free", "kmem:kfree"],
    ["--alloc", "kmem:kmalloc//ptr=" + "+".join(["ptr"] * 5000) + "/", "--free", "kmem:kfree"],
])
def test_options_out_of_range_and_deep_nesting_are_one_line(rec, capsys, args):
    """Were internal errors (OverflowError, RecursionError)."""
    assert_one_line_error(*run(capsys, "analyze", rec, *args))


@pytest.mark.parametrize("interval", ["9223372036853", "1"])
def test_any_interval_in_range_works(rec, capsys, interval):
    code, out, err = run(capsys, "analyze", rec, "-i", interval)
    assert code == 0, err
    assert "INTERVAL alloc" in out


def test_huge_max_stack_is_capped_like_perf_prof(rec, capsys):
    code, _, err = run(capsys, "analyze", rec, "--alloc",
                       "kmem:kmalloc//ptr=ptr/size=bytes_alloc/max-stack=" + "9" * 5000 + "/",
                       "--free", "kmem:kfree")
    assert code == 0, err


@pytest.mark.parametrize("args", [["--symfs", "/nonexistent"], ["--symfs", "/etc/hostname"],
                                  ["--tmpdir", "9" * 5000], ["-o", "/proc/nope/report"],
                                  ["--flame-graph", "/proc/nope/leak"], ["-o", "/dev/full"]])
def test_paths_that_cannot_be_used_are_one_line(rec, capsys, args):
    assert_one_line_error(*run(capsys, "analyze", rec, *args))


def test_diff_top_must_be_positive(rec, capsys):
    assert_one_line_error(*run(capsys, "diff", rec, rec, "--top", "0"), "--top")


def test_control_characters_are_shown_not_obeyed(rec, capsys):
    """A value echoed in an error line cannot move the cursor or clear the terminal."""
    code, out, err = run(capsys, "analyze", rec, "--alloc", "kmem:nosuch\x1b[2J\x07//ptr=ptr/")
    assert_one_line_error(code, out, err, "\\x1b[2J\\x07")
    assert "\x1b" not in err and "\x07" not in err


def test_a_json_report_nested_100000_deep_is_one_line(rec, tmp_path, capsys):
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    assert_one_line_error(*run(capsys, "diff", deep, rec), "nested deeper than 200")
