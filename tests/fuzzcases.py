"""Fuzz cases: damaged recordings, parts folders and JSON reports, foreign values, random specs,
expressions and options, each run through the real CLI and classified by outcome.

Shared by tests/test_fuzz.py (hypothesis, a few examples per family, derandomised) and
bench/fuzz.py (thousands of cases in worker processes, with a per-case time limit). A case is
built from a `random.Random` (hypothesis hands one in; the bench seeds one per case index, so a
case can be replayed by number) and run in-process with stdout/stderr captured.

Outcomes (`classify`): `refused` (exit 2: one line naming the problem), `unchanged` (exit 0,
output identical to the undamaged input's), `warned` (exit 0 with a `warning:` line), `ok`
(exit 0 where no comparison applies), and the failures: `silent-change` (a damaged file gave
different figures with exit 0 and no warning), `internal-error`, `traceback`, `exit-N`, `hang`.
Families whose input is damaged file bytes (`bytes`, `parts`) and foreign files holding values
the kernel cannot produce (`values`) must never change silently; the others (options, specs,
metadata values a writer may legitimately hold, JSON reports, which carry no checksums) only
must not fail.
"""

from __future__ import annotations

import contextlib
import io
import json
import random
import re
import shutil
import signal
import string
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "samples"
FAILURES = ("silent-change", "internal-error", "traceback", "hang", "exit-")
FAMILIES = ("bytes", "parts", "meta", "values", "json", "spec", "expr", "options")
# families whose damage must be refused or warned about, never silently change the output
STRICT = ("bytes", "parts", "values")


class CaseTimeout(BaseException):
    """Raised by the alarm of `run_cli` (a BaseException: the CLI's last-resort handler must not
    turn it into an 'internal error')."""


@dataclass
class Result:
    code: int
    out: str
    err: str
    seconds: float
    timeout: bool = False


@dataclass
class Case:
    family: str
    what: str  # a short description of the damage (for the report)
    argv: list[str]
    base_argv: list[str] | None = None  # same command on the undamaged input: to compare
    strict: bool = False  # a changed output must be refused or warned about
    paths: list[str] = field(default_factory=list)  # replaced by <P> when comparing outputs


# ----------------------------------------------------------------------------- running


def run_cli(argv: list[str], timeout_s: float = 0) -> Result:
    """The CLI in this process, stdout and stderr captured; an alarm bounds it when asked."""
    from kmemleak_offline.cli import main

    out, err = io.StringIO(), io.StringIO()
    old = None
    if timeout_s:
        def on_alarm(signum, frame):
            raise CaseTimeout

        old = signal.signal(signal.SIGALRM, on_alarm)
        signal.setitimer(signal.ITIMER_REAL, timeout_s)
    t0 = time.perf_counter()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main([str(a) for a in argv])
        timed_out = False
    except CaseTimeout:
        code, timed_out = -1, True
    finally:
        if timeout_s:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, old)
    return Result(code, out.getvalue(), err.getvalue(), time.perf_counter() - t0, timed_out)


_NUM = re.compile(r"0x[0-9a-fA-F]+|\d+")
_PATH = re.compile(r"/[^\s:'\"),]+")


def signature(text: str) -> str:
    """A failure's first line with numbers and paths masked (equal causes count together)."""
    line = next((ln for ln in text.splitlines() if ln.strip()), "")
    return _NUM.sub("N", _PATH.sub("<P>", line))[:160]


_INFO_SIZE = re.compile(r"^size: .*$", re.MULTILINE)


def _norm(text: str, paths: list[str]) -> str:
    """An output with the input's paths masked, and `info`'s file size line (a rewritten file's
    size differs; what it holds is compared on the other lines)."""
    for p in sorted(paths, key=len, reverse=True):
        text = text.replace(p, "<P>")
    return _INFO_SIZE.sub("size: <S>", text)


def classify(res: Result, base: Result | None, case: Case) -> str:
    """The outcome of one case (see the module docstring); failures carry their signature."""
    if res.timeout:
        return "hang"
    if "Traceback" in res.err:
        return "traceback: " + signature(res.err.split("Traceback", 1)[1].splitlines()[-1])
    if "internal error" in res.err:
        return "internal-error: " + signature(res.err[res.err.index("internal error"):])
    if res.code not in (0, 2):
        return f"exit-{res.code}: " + signature(res.err)
    if res.code == 2:
        return "refused"
    if base is None or base.code != 0:
        return "ok"
    warned = "warning" in res.err.lower()
    if (_norm(res.out, case.paths) == _norm(base.out, case.paths)
            and _norm(res.err, case.paths) == _norm(base.err, case.paths)):
        return "unchanged"
    if warned:
        return "warned"
    return "silent-change" if case.strict else "changed"


def is_failure(outcome: str) -> bool:
    return outcome.startswith(FAILURES)


# ----------------------------------------------------------------------------- inputs


@dataclass
class Bases:
    """Undamaged inputs the cases start from, built once per directory."""

    dir: Path
    recordings: dict[str, Path]  # name -> single-file recording
    parts: Path  # a parts folder (a killed recorder's)
    reports: dict[str, Path]  # name -> analyze --format json output
    baselines: dict[tuple[str, ...], Result] = field(default_factory=dict)

    def baseline(self, argv: list[str]) -> Result:
        key = tuple(argv)
        if key not in self.baselines:
            self.baselines[key] = run_cli(argv)
        return self.baselines[key]


def rewrite(src: Path, dst: Path) -> Path:
    """A recording written again by this version's writer (same rows and metadata)."""
    from kmemleak_offline.format.recording import METADATA_KEY, write_recording

    t = pq.read_table(src)
    meta = json.loads(t.schema.metadata[METADATA_KEY])
    return write_recording(dst, meta, [t.replace_schema_metadata(None)])


def make_bases(d: Path) -> Bases:
    """A small synthetic kernel recording (comms, stacks, a LOST record), the bundled real
    kernel and --malloc samples written again by this version, a 3-part folder, JSON reports."""
    from kmemleak_offline.format.recording import METADATA_KEY, RecordingWriter
    from tests.test_analyze_cli import COMMS_A, EVENTS_A, build

    d.mkdir(parents=True, exist_ok=True)
    kernel = build(EVENTS_A, d / "kernel.parquet", comms=COMMS_A, lost=[(350, 1, 4)])
    recs = {"kernel": kernel,
            "pipe": rewrite(SAMPLES / "pipe-leak.parquet", d / "pipe.parquet"),
            "malloc": rewrite(SAMPLES / "malloc-leak.parquet", d / "malloc.parquet")}
    t = pq.read_table(kernel)
    meta = json.loads(t.schema.metadata[METADATA_KEY])
    t = t.replace_schema_metadata(None)
    target = d / "killed.parquet"
    w = RecordingWriter(target, meta, parts=True)
    third = t.num_rows // 3
    for lo, hi in ((0, third), (third, 2 * third), (2 * third, t.num_rows)):
        w.write(t.slice(lo, hi - lo))
        w.flush_part()  # ...and no close(): a SIGKILLed recorder's folder
    reports = {}
    for name, argv in (("pipe", ["analyze", recs["pipe"], "--format", "json"]),
                       ("malloc", ["analyze", recs["malloc"], "--format", "json"]),
                       ("kernel-v", ["analyze", kernel, "--format", "json", "-v"])):
        res = run_cli(argv)
        assert res.code == 0, res.err
        reports[name] = d / f"report-{name}.json"
        reports[name].write_text(res.out)
    return Bases(d, recs, w.parts_dir, reports)


# ----------------------------------------------------------------------------- byte damage


def damage_bytes(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    """One random damage: a flipped bit, a changed byte, a zeroed, deleted, inserted or copied
    range, or a cut; a third of them land in the last 2 KiB (the footer and its metadata)."""
    n = len(data)
    tail = rng.random() < 1 / 3
    lo = max(0, n - 2048) if tail else 0
    off = rng.randrange(lo, n)
    b = bytearray(data)
    op = rng.choice(["flip", "byte", "zero", "delete", "insert", "copy", "cut"])
    if op == "flip":
        b[off] ^= 1 << rng.randrange(8)
    elif op == "byte":
        b[off] = rng.randrange(256)
    elif op == "zero":
        k = rng.choice([1, 4, 8, 64, 512, 4096])
        b[off:off + k] = bytes(len(b[off:off + k]))
    elif op == "delete":
        del b[off:off + rng.choice([1, 8, 100])]
    elif op == "insert":
        b[off:off] = bytes(rng.randrange(256) for _ in range(rng.choice([1, 8, 100])))
    elif op == "copy":
        k = rng.choice([8, 64, 1024])
        src = rng.randrange(0, max(1, n - k))
        b[off:off + k] = data[src:src + k]
    else:
        del b[off:]
    if bytes(b) == data:  # a no-op damage (same byte written back): flip instead
        b[off % n] ^= 0x01
    return bytes(b), f"{op}@{off}/{n}{' (tail)' if tail else ''}"


def case_bytes(bases: Bases, rng: random.Random, work: Path) -> Case:
    name = rng.choice(sorted(bases.recordings))
    src = bases.recordings[name]
    dst = work / f"{name}.parquet"
    data, what = damage_bytes(src.read_bytes(), rng)
    dst.write_bytes(data)
    argv = rng.choice([["analyze"], ["analyze", "--format", "json"], ["info"], ["analyze", "-v"],
                       ["analyze", "--comm", "--than", "1ms"]])
    return Case("bytes", f"{name}: {what}", [argv[0], str(dst), *argv[1:]],
                [argv[0], str(src), *argv[1:]], strict=True, paths=[str(dst), str(src)])


def case_parts(bases: Bases, rng: random.Random, work: Path) -> Case:
    folder = work / "killed.parquet.parts"
    shutil.copytree(bases.parts, folder)
    parts = sorted(folder.glob("part-*.parquet"))
    op = rng.choice(["copy", "copy-as-next", "delete-middle", "delete-first", "delete-last",
                     "damage", "foreign", "empty", "swap", "other-recording"])
    if op == "copy":
        p = rng.choice(parts)
        shutil.copy(p, folder / f"{p.stem} (copy).parquet")
    elif op == "copy-as-next":
        shutil.copy(rng.choice(parts), folder / f"part-{len(parts):05d}.parquet")
    elif op == "delete-middle":
        parts[1].unlink()
    elif op == "delete-first":
        parts[0].unlink()
    elif op == "delete-last":
        parts[-1].unlink()
    elif op == "damage":
        p = rng.choice(parts)
        data, what = damage_bytes(p.read_bytes(), rng)
        p.write_bytes(data)
        op = f"damage {p.name} {what}"
    elif op == "foreign":
        pq.write_table(pa.table({"x": [1, 2, 3]}), folder / "part-00009.parquet")
    elif op == "empty":
        (folder / "part-00009.parquet").write_bytes(b"")
    elif op == "swap":
        a, b = parts[0], parts[-1]
        tmp = folder / "swap.tmp"
        a.rename(tmp)
        b.rename(a)
        tmp.rename(b)
    else:  # a part of another recording of the same events dropped into the folder
        shutil.copy(bases.recordings["kernel"], folder / f"part-{len(parts):05d}.parquet")
    argv = rng.choice([["analyze"], ["info"], ["analyze", "--format", "json"]])
    return Case("parts", op, [argv[0], str(folder), *argv[1:]],
                [argv[0], str(bases.parts), *argv[1:]], strict=True,
                paths=[str(folder), str(bases.parts)])


# ----------------------------------------------------------------------------- metadata values


def random_json(rng: random.Random, depth: int = 0) -> Any:
    """Any JSON value, leaning on the awkward ones (huge, negative, NaN, wrong types)."""
    kinds = ["int", "big", "neg", "float", "nan", "str", "none", "bool"]
    if depth < 3:
        kinds += ["list", "dict"]
    k = rng.choice(kinds)
    if k == "int":
        return rng.choice([0, 1, 7, 255, 4096, 2**31, 2**32 - 1])
    if k == "big":
        return rng.choice([2**63, 2**64, 2**64 + 1, 10**30, int("9" * rng.randrange(20, 400))])
    if k == "neg":
        return rng.choice([-1, -(2**63), -(10**18), -(10**40)])
    if k == "float":
        return rng.choice([0.5, 1e308, -1e18, 1e-300, 3.0])
    if k == "nan":
        return rng.choice([float("nan"), float("inf"), float("-inf")])
    if k == "str":
        return rng.choice(["", "a", "kmem:kmalloc", "\x1b[31m\x00\x07", "x" * 5000, "é\u202e",
                           "kmem:kmalloc//ptr=ptr/size=bytes_alloc/", "(" * 2000])
    if k == "none":
        return None
    if k == "bool":
        return rng.choice([True, False])
    if k == "list":
        return [random_json(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {rng.choice(["id", "format", "samples", "lost", "x"]): random_json(rng, depth + 1)
            for _ in range(rng.randrange(3))}


def _paths(obj: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix]
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += _paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj[:8]):
            out += _paths(v, prefix + (i,))
    return out


def mutate_json(doc: Any, rng: random.Random) -> tuple[Any, str]:
    """Replace, delete or deeply nest one node of a JSON document."""
    paths = [p for p in _paths(doc) if p]
    if not paths:
        return random_json(rng), "whole document"
    p = rng.choice(paths)
    parent = doc
    for k in p[:-1]:
        parent = parent[k]
    op = rng.choice(["replace", "replace", "replace", "delete", "nest"])
    if op == "delete":
        if isinstance(parent, dict):
            del parent[p[-1]]
        else:
            parent.pop(p[-1])
    elif op == "nest":
        v: Any = parent[p[-1]]
        for _ in range(rng.choice([50, 1000, 5000])):
            v = [v]
        parent[p[-1]] = v
    else:
        parent[p[-1]] = random_json(rng)
    return doc, f"{op} {'.'.join(map(str, p))}"


def write_foreign(path: Path, table: pa.Table, meta_text: str | bytes) -> Path:
    """A recording as another writer could make it: these rows and this metadata text, sealed
    with valid checksums (so only the values are foreign, not the bytes damaged)."""
    from kmemleak_offline.format import recording

    if isinstance(meta_text, str):
        meta_text = meta_text.encode("utf-8", "surrogatepass")
    opts = dict(recording.WRITE_OPTIONS)
    opts["use_dictionary"] = [c for c in opts["use_dictionary"] if c in table.column_names]
    opts["write_statistics"] = [c for c in opts["write_statistics"] if c in table.column_names]
    opts["column_encoding"] = {k: v for k, v in opts["column_encoding"].items()
                               if k in table.column_names
                               and pa.types.is_integer(table.schema.field(k).type)}
    with pq.ParquetWriter(path, table.schema, compression="zstd", **opts) as w:
        w.write_table(table)
        w.add_key_value_metadata({recording.METADATA_KEY: meta_text})
    seal = getattr(recording, "seal", None)
    if seal is not None:
        seal(path)
    return path


def _table_and_meta(src: Path) -> tuple[pa.Table, dict]:
    from kmemleak_offline.format.recording import METADATA_KEY

    t = pq.read_table(src)
    return t.replace_schema_metadata(None), json.loads(t.schema.metadata[METADATA_KEY])


def case_meta(bases: Bases, rng: random.Random, work: Path) -> Case:
    name = rng.choice(sorted(bases.recordings))
    t, meta = _table_and_meta(bases.recordings[name])
    meta, what = mutate_json(meta, rng)
    try:
        text = json.dumps(meta)
    except (RecursionError, ValueError):
        text = "[" * 100_000 + "]" * 100_000
        what += " (deeper than json.dumps)"
    dst = write_foreign(work / f"{name}.parquet", t, text)
    argv = rng.choice([["analyze"], ["info"], ["analyze", "--format", "json"], ["analyze", "-i", "100"]])
    return Case("meta", f"{name}: {what}", [argv[0], str(dst), *argv[1:]])


# ----------------------------------------------------------------------------- foreign values


def _raw_field(meta: dict, event: str, fieldname: str) -> tuple[int, int] | None:
    from kmemleak_offline.format.tracefs import parse_format

    text = meta["events"][event]["format"]
    f = next((f for f in parse_format(text, event.split(":")[0]).fields if f.name == fieldname), None)
    return (f.offset, f.size) if f is not None else None


def case_values(bases: Bases, rng: random.Random, work: Path) -> Case:
    """Rows a foreign writer could hold: sizes past the address space, times past the stop (both
    must be flagged), payload garbage, dangling stack ids, wild ring/cpu/seq/lost values, nulls,
    missing or retyped columns (these must only not fail)."""
    name = rng.choice(["kernel", "pipe", "malloc"])
    src = bases.recordings[name]
    t, meta = _table_and_meta(src)
    kind = t.column("kind").cast(pa.string()).to_numpy(zero_copy_only=False)
    cols = {c: t.column(c).combine_chunks() for c in t.column_names}
    n = t.num_rows
    sample = np.flatnonzero(kind == "sample")
    pick = rng.sample(sample.tolist(), k=max(1, len(sample) // rng.choice([1, 4, 50])))
    op = rng.choice(["huge-size", "time-past-stop", "raw-garbage", "stack-id", "ring-seq", "lost",
                     "nulls", "drop-column", "retype", "callchain"])
    strict = op in ("huge-size", "time-past-stop")
    if op == "huge-size" and name != "malloc":
        ev = cols["event"].cast(pa.string()).to_pylist()
        raw = cols["raw"].to_pylist()
        loc = _raw_field(meta, "kmem:kmalloc", "bytes_alloc")
        hits = 0
        for i in pick:
            if ev[i] == "kmem:kmalloc" and loc and raw[i] and len(raw[i]) >= loc[0] + loc[1]:
                big = rng.choice([2**47 + 1, 2**60, 2**64 - 2]).to_bytes(8, "little")[:loc[1]]
                raw[i] = raw[i][:loc[0]] + big + raw[i][loc[0] + loc[1]:]
                hits += 1
        cols["raw"] = pa.array(raw, pa.binary())
        strict = hits > 0
    elif op == "huge-size":  # a --malloc recording: the size argument of malloc's entry probe
        ev = cols["event"].cast(pa.string()).to_pylist()
        raw = cols["raw"].to_pylist()
        entry = next((e for e in meta["events"] if e.endswith(":malloc")), None)
        loc = _raw_field(meta, entry, "size") if entry else None
        hits = 0
        for i in sample.tolist():
            if ev[i] == entry and loc and raw[i] and rng.random() < 0.3:
                raw[i] = raw[i][:loc[0]] + (2**50).to_bytes(8, "little") + raw[i][loc[0] + 8:]
                hits += 1
        cols["raw"] = pa.array(raw, pa.binary())
        strict = hits > 0
    elif op == "time-past-stop":
        stop = int(meta["clock"]["stop_ns"])
        time_ = cols["time"].to_pylist()
        for i in pick:
            time_[i] = min(2**64 - 1, stop + rng.choice([10**9, 10**15, 2**63]))
        cols["time"] = pa.array(time_, pa.uint64())
    elif op == "raw-garbage":
        raw = cols["raw"].to_pylist()
        for i in pick:
            if raw[i] is not None:
                raw[i] = bytes(rng.randrange(256) for _ in range(rng.choice([len(raw[i]), 0, 3, 300])))
        cols["raw"] = pa.array(raw, pa.binary())
    elif op == "stack-id":
        sid = cols["stack_id"].to_pylist()
        for i in pick:
            sid[i] = rng.choice([0, 2**32 - 1, 12345, None])
        cols["stack_id"] = pa.array(sid, pa.uint32())
    elif op == "ring-seq":
        c = rng.choice(["ring", "cpu", "seq", "pid", "tid"])
        v = cols[c].to_pylist()
        top = 2**64 - 1 if c == "seq" else (2**31 - 1 if c in ("pid", "tid") else 2**32 - 1)
        for i in pick:
            v[i] = rng.choice([0, top, None, 7])
        cols[c] = pa.array(v, cols[c].type)
    elif op == "lost":
        lost_rows = np.flatnonzero(kind == "lost").tolist()
        v = cols["lost"].to_pylist()
        seq = cols["seq"].to_pylist()
        for i in lost_rows:
            v[i] = rng.choice([0, 2**64 - 1, None])
            seq[i] = rng.choice([seq[i], 2**64 - 1, None])
        cols["lost"] = pa.array(v, pa.uint64())
        cols["seq"] = pa.array(seq, pa.uint64())
    elif op == "nulls":
        c = rng.choice(["time", "event", "raw", "cpu", "seq", "callchain", "comm", "addr", "name"])
        mask = np.zeros(n, bool)
        mask[rng.sample(range(n), k=max(1, n // 10))] = True
        cols[c] = pa.array([None if m else v for m, v in zip(mask.tolist(), cols[c].to_pylist())],
                           cols[c].type)
    elif op == "drop-column":
        del cols[rng.choice(["kind", "time", "raw", "event", "stack_id", "callchain", "cpu", "seq"])]
    elif op == "retype":
        c = rng.choice(["time", "cpu", "pid", "seq", "stack_id"])
        cols[c] = cols[c].cast(pa.string()) if rng.random() < 0.5 else cols[c].cast(pa.float64())
    else:
        cc = cols["callchain"].to_pylist()
        for i in range(n):
            if cc[i] is not None and rng.random() < 0.5:
                cc[i] = [rng.randrange(2**64) for _ in range(rng.choice([0, 1, 3, 200]))]
        cols["callchain"] = pa.array(cc, pa.list_(pa.uint64()))
    table = pa.table(cols)
    dst = write_foreign(work / f"{name}.parquet", table, json.dumps(meta))
    argv = rng.choice([["analyze"], ["analyze", "--format", "json"], ["info"], ["analyze", "--comm"]])
    return Case("values", f"{name}: {op}", [argv[0], str(dst), *argv[1:]],
                [argv[0], str(src), *argv[1:]], strict=strict, paths=[str(dst), str(src)])


# ----------------------------------------------------------------------------- JSON reports


def case_json(bases: Bases, rng: random.Random, work: Path) -> Case:
    name = rng.choice(sorted(bases.reports))
    src = bases.reports[name]
    dst = work / f"{name}.json"
    op = rng.choice(["bytes", "node", "node", "deep", "huge"])
    if op == "bytes":
        data, what = damage_bytes(src.read_bytes(), rng)
        dst.write_bytes(data)
    elif op == "deep":
        depth = rng.choice([1000, 100_000])
        opener = rng.choice(["[", '{"a":'])
        closer = "]" if opener == "[" else "}"
        dst.write_text(opener * depth + "1" + closer * depth)
        what = f"{depth} deep"
    elif op == "huge":
        text = src.read_text()
        dst.write_text(re.sub(r'"bytes": \d+', lambda m: f'"bytes": {"9" * rng.choice([20, 5000])}',
                              text, count=1))
        what = "huge bytes"
    else:
        doc, what = mutate_json(json.loads(src.read_text()), rng)
        try:
            dst.write_text(json.dumps(doc))
        except (RecursionError, ValueError):
            dst.write_text("[" * 100_000 + "]" * 100_000)
    other = rng.choice([str(src), str(bases.recordings["kernel"])])
    args = [str(dst), other] if rng.random() < 0.5 else [other, str(dst)]
    fmt = rng.choice([[], ["--format", "json"], ["--top", "3"]])
    return Case("json", f"{name}: {op} {what}", ["diff", *args, *fmt])


# ----------------------------------------------------------------------------- specs, expressions

FIELDS = ["ptr", "bytes_alloc", "bytes_req", "call_site", "gfp_flags", "common_pid", "common_type",
          "_cpu", "_pid", "nosuch", "comm", "__data_loc_x"]


def random_expr(rng: random.Random, depth: int = 0) -> str:
    """An expression of perf-prof's language, valid or not (junk, odd literals, deep nesting)."""
    e = _expr(rng, depth)
    return e if len(e) < 400_000 else e[:400_000]


def _expr(rng: random.Random, depth: int) -> str:
    if depth > 4 or rng.random() < 0.25:
        return rng.choice([
            rng.choice(FIELDS), str(rng.randrange(-5, 5000)), hex(rng.randrange(2**64)),
            "0" + oct(rng.randrange(1000))[2:], "9" * rng.randrange(1, 60), "'a'", "'\\n'",
            '"str"', '"****************x"', "-1", "0x", "'", '"', rng.choice(string.punctuation)])
    k = rng.randrange(12)
    a = _expr(rng, depth + 1)
    if k < 4:
        op = rng.choice(["+", "-", "*", "/", "%", "<<", ">>", "&", "|", "^", "==", "!=", "<", "<=",
                         ">", ">=", "&&", "||", "~", "=", ","])
        return f"{a} {op} {_expr(rng, depth + 1)}"
    if k == 4:
        return f"{rng.choice(['-', '~', '!', '(int)', '(char *)', '(u64)', 'sizeof '])}{a}"
    if k == 5:
        return f"({a})"
    if k == 6:
        return f"{a} ? {_expr(rng, depth + 1)} : {_expr(rng, depth + 1)}"
    if k == 7:
        fn = rng.choice(["ksymbol", "comm_get", "ntohl", "ntohs", "strncmp", "printf", "system",
                         "nosuch", "syscall_name"])
        args = ", ".join(_expr(rng, depth + 1) for _ in range(rng.randrange(4)))
        return f"{fn}({args})"
    if k == 8:
        return f"{a}[{_expr(rng, depth + 1)}]"
    if k == 9:  # deep or long: around a small operand (the text stays below ~200 kB)
        a = a if len(a) < 40 else rng.choice(FIELDS)
        n = rng.choice([100, 1000, 5000, 20000])
        return rng.choice(["(" * n + a + ")" * n, "ntohl(" * (n // 2) + a + ")" * (n // 2),
                           "+".join([a] * n), "-" * n + a, "!" * n + a])
    if k == 10:
        return f'{a} ~ "{rng.choice(["*", "?", "[a-", "**" * 20, "x*y*z", ""])}"'
    s = list(a)
    for _ in range(rng.randrange(1, 4)):  # junk: characters dropped, doubled or added
        i = rng.randrange(len(s) + 1)
        s.insert(i, rng.choice(string.printable + "\x00\x1b\u00e9"))
    return "".join(s)


def random_spec(rng: random.Random) -> str:
    name = rng.choice(["kmem:kmalloc", "kmem:kfree", "kmem:*", "*", "kmem:k?alloc", "kmem:[kx]free",
                       "nosuch:event", "kmem", ":", "kmem:kmalloc:x", "", "kmem:kmalloc" * 50])
    parts = [name]
    if rng.random() < 0.8:
        parts.append(random_expr(rng) if rng.random() < 0.4 else "")
        for _ in range(rng.randrange(4)):
            parts.append(rng.choice([
                f"ptr={random_expr(rng)}", f"size={random_expr(rng)}", "stack",
                f"max-stack={rng.choice(['0', '-1', '127', '9' * 5000, 'x', ''])}",
                "alias=x", "key=ptr", "bogus", "ptr", "size=", "=", "'quoted'", '"ptr=ptr"']))
        text = "/".join(parts) + rng.choice(["/", "/", "", "//"])
    else:
        text = name
    return text


def case_spec(bases: Bases, rng: random.Random, work: Path) -> Case:
    name = rng.choice(["kernel", "pipe", "malloc"])
    specs = ",".join(random_spec(rng) for _ in range(rng.randrange(1, 3)))
    role = rng.choice(["--alloc", "--free"])
    argv = ["analyze", str(bases.recordings[name]), role, specs]
    if rng.random() < 0.5:
        argv += ["--free" if role == "--alloc" else "--alloc", random_spec(rng)]
    return Case("spec", f"{name}: {role} {specs[:80]!r}", argv)


def case_expr(bases: Bases, rng: random.Random, work: Path) -> Case:
    e = random_expr(rng)
    where = rng.choice(["filter", "ptr", "size"])
    spec = {"filter": f"kmem:kmalloc/{e}/ptr=ptr/size=bytes_alloc/",
            "ptr": f"kmem:kmalloc//ptr={e}/size=bytes_alloc/",
            "size": f"kmem:kmalloc//ptr=ptr/size={e}/"}[where]
    name = rng.choice(["kernel", "pipe"])
    return Case("expr", f"{name}: {where} {e[:80]!r}",
                ["analyze", str(bases.recordings[name]), "--alloc", spec, "--free", "kmem:kfree"])


# ----------------------------------------------------------------------------- options


def _odd_value(rng: random.Random) -> str:
    return rng.choice(["", "0", "-1", "1", "10", "1.5", "1e3", "9" * 30, "9" * 5000, "x", "10x",
                       "1s", "5ms", "999999999999999999999s", "0x10", " 1", "\x1b[2J", "\x00",
                       "-" * 3, "é", "nan", "inf"])


def case_options(bases: Bases, rng: random.Random, work: Path) -> Case:
    name = rng.choice(["kernel", "pipe", "malloc"])
    rec = str(bases.recordings[name])
    cmd = rng.choice(["analyze", "analyze", "analyze", "info", "diff"])
    argv = [cmd, rec] if cmd != "diff" else ["diff", rec, rng.choice([rec, str(bases.reports["pipe"])])]
    pool = {
        "analyze": ["-i", "--than", "-j", "--format", "--sort", "--flame-graph", "-o", "--symfs",
                    "--kallsyms", "--vmlinux", "--tmpdir", "--partitions", "--scan-ranges", "-v",
                    "--utc", "--comm", "--trend", "--in-memory", "-g", "--order", "--bogus"],
        "info": ["--bogus", "-v"],
        "diff": ["--than", "--top", "--format", "--symfs", "--alloc", "--free", "--bogus"],
    }[cmd]
    flags = {"-v", "--utc", "--comm", "--trend", "--in-memory", "-g", "--order"}
    for _ in range(rng.randrange(1, 4)):
        opt = rng.choice(pool)
        argv.append(opt)
        if opt in flags:
            continue
        if opt in ("-o", "--flame-graph"):
            argv.append(rng.choice([str(work / "out"), str(work), "/proc/nope/x", "/dev/full"]))
        elif opt in ("--symfs", "--tmpdir"):
            argv.append(rng.choice([str(work), "/nonexistent", "/dev/null", _odd_value(rng)]))
        elif opt in ("--kallsyms", "--vmlinux"):
            junk = work / "junk"
            junk.write_bytes(bytes(rng.randrange(256) for _ in range(rng.choice([0, 10, 5000]))))
            argv.append(rng.choice([str(junk), "/nonexistent", str(SAMPLES / "pipe-leak.parquet"),
                                    "/etc/hostname"]))
        elif opt in ("--format", "--sort"):
            argv.append(rng.choice(["text", "json", "folded", "growth", "bytes", "xml", ""]))
        elif opt in ("--alloc", "--free"):
            argv.append(random_spec(rng))
        else:
            argv.append(_odd_value(rng))
    return Case("options", " ".join(argv[2:])[:120], argv)


BUILDERS = {"bytes": case_bytes, "parts": case_parts, "meta": case_meta, "values": case_values,
            "json": case_json, "spec": case_spec, "expr": case_expr, "options": case_options}


def run_case(bases: Bases, family: str, rng: random.Random, work: Path,
             timeout_s: float = 0) -> tuple[Case, Result, str]:
    """Build one case of `family` in the empty folder `work`, run it, classify it. A foreign
    random source (hypothesis's) seeds a plain one: cases make thousands of draws."""
    if type(rng) is not random.Random:
        rng = random.Random(rng.getrandbits(64))
    case = BUILDERS[family](bases, rng, work)
    res = run_cli(case.argv, timeout_s)
    base = bases.baseline(case.base_argv) if case.base_argv else None
    return case, res, classify(res, base, case)


def fresh_dir(d: Path) -> Path:
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)
    return d


__all__ = ["FAMILIES", "STRICT", "Bases", "Case", "Result", "classify", "fresh_dir", "is_failure",
           "make_bases", "run_case", "run_cli"]

