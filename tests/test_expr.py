"""Expression language: every operator, load widths/signs, perf-prof quirks, errors.

Expected values are worked out here with plain Python integers and C's rules (64-bit wrap,
truncating division, unsigned when either side is unsigned), independently of the numpy code.
Payloads are hand-built bytes decoded with tracefs.decode against real format files.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from kmemleak_offline.format import tracefs
from kmemleak_offline.format.expr import (
    EvalResult,
    ExprEnv,
    ExprError,
    as_ptr,
    as_size,
    compile_expr,
    filter_mask,
)

FORMATS = Path(__file__).parent / "data" / "formats"
M64 = (1 << 64) - 1


def W(x: int) -> int:
    """A Python int as the 64-bit word perf-prof's VM would hold."""
    return x & M64


def cdiv(a: int, b: int) -> int:
    """C division: truncates toward zero."""
    q = abs(a) // abs(b)
    return q if (a < 0) == (b < 0) else -q


def fmt_of(name: str) -> tracefs.EventFormat:
    sys_, _ev = name.split("_", 1)
    return tracefs.parse_format((FORMATS / f"{name}.format").read_text(), sys_)


# A hand-written format with every scalar width and sign the expression language loads.
WIDTHS_FORMAT = """name: widths
ID: 9999
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;
\tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:s8 s8;\toffset:8;\tsize:1;\tsigned:1;
\tfield:u8 u8;\toffset:9;\tsize:1;\tsigned:0;
\tfield:s16 s16;\toffset:10;\tsize:2;\tsigned:1;
\tfield:u16 u16;\toffset:12;\tsize:2;\tsigned:0;
\tfield:int s32;\toffset:16;\tsize:4;\tsigned:1;
\tfield:unsigned int u32;\toffset:20;\tsize:4;\tsigned:0;
\tfield:long s64;\toffset:24;\tsize:8;\tsigned:1;
\tfield:unsigned long u64;\toffset:32;\tsize:8;\tsigned:0;
\tfield:char comm[16];\toffset:40;\tsize:16;\tsigned:1;
\tfield:char ucomm[8];\toffset:56;\tsize:8;\tsigned:0;

print fmt: "s32=%d", REC->s32
"""
WFMT = tracefs.parse_format(WIDTHS_FORMAT, "test")


def payload(fmt: tracefs.EventFormat, values: dict, strings: dict | None = None) -> bytes:
    """Raw tracepoint bytes: fixed fields at their offsets, __data_loc strings appended."""
    fixed = max(f.offset + f.size for f in fmt.fields)
    buf = bytearray(fixed + (-fixed % 8))
    for f in fmt.fields:
        if f.data_loc:
            s = (strings or {}).get(f.name, b"") + b"\0"
            loc = len(buf) | (len(s) << 16)
            buf[f.offset:f.offset + 4] = loc.to_bytes(4, "little")
            buf += s
        elif f.array_len is not None:
            v = values.get(f.name, b"")
            buf[f.offset:f.offset + f.size] = v.ljust(f.size, b"\0")[:f.size]
        else:
            v = values.get(f.name, 0)
            buf[f.offset:f.offset + f.size] = (v & ((1 << (8 * f.size)) - 1)).to_bytes(
                f.size, "little")
    return bytes(buf)


def decoded(fmt: tracefs.EventFormat, rows: list[dict], strings: list[dict] | None = None,
            cpu: list[int] | None = None, pid: list[int] | None = None) -> dict:
    raws = [payload(fmt, r, (strings or [None] * len(rows))[i]) for i, r in enumerate(rows)]
    cols = tracefs.decode(fmt, pa.array(raws, pa.binary()))
    n = len(rows)
    cols["_cpu"] = np.array(cpu or [0] * n, np.int32)
    cols["_pid"] = np.array(pid or [0] * n, np.int32)
    return cols


def run(text: str, fmt: tracefs.EventFormat, cols: dict, env: ExprEnv | None = None) -> EvalResult:
    n = len(cols["_cpu"])
    return compile_expr(text, fmt.fields).evaluate(cols, n, env)


def values(text: str, fmt: tracefs.EventFormat, cols: dict) -> list[int]:
    return [int(v) for v in run(text, fmt, cols).values]


# --------------------------------------------------------------------------- loads

_KEYS = ("s8", "u8", "s16", "u16", "s32", "u32", "s64", "u64", "comm", "ucomm")
ROWS = [dict(zip(_KEYS, r)) for r in [
    (-1, 255, -2, 65535, 7, 3, 2, M64 - 4, b"bash", b"xy"),
    (5, 6, 300, 7, -7, 0xFFFFFFFF, 3, 10, b"kworker/0:1", b"ab"),
    (-128, 128, -32768, 32768, 100, 1, -4, 1 << 63, b"sshd", b""),
    (127, 0, 32767, 0, -1, 4, 5, 0, b"", b"zz"),
    (0, 1, 0, 1, 0, 9, 7, 1, b"a", b"q"),
]]
CPUS = [0, 1, 2, 3, 63]
PIDS = [1, 2000, 3, 4, 5]


@pytest.fixture(scope="module")
def wcols() -> dict:
    return decoded(WFMT, ROWS, cpu=CPUS, pid=PIDS)


@pytest.mark.parametrize("name", ["s8", "u8", "s16", "u16", "s32", "u32", "s64", "u64"])
def test_loads_extend_by_declared_width_and_sign(name, wcols):
    # signed fields sign-extend to 64 bits, unsigned ones zero-extend
    assert values(name, WFMT, wcols) == [W(r[name]) for r in ROWS]


def test_globals_cpu_pid(wcols):
    assert values("_cpu", WFMT, wcols) == CPUS
    assert values("_pid * 2 + _cpu", WFMT, wcols) == [p * 2 + c for p, c in zip(PIDS, CPUS)]


# --------------------------------------------------------------------------- operators

A, B, U = "s32", "s64", "u32"  # signed int, signed long, unsigned int
OPS = [
    ("s32 + s64", lambda r: r[A] + r[B]),
    ("s32 - s64", lambda r: r[A] - r[B]),
    ("s32 * s64", lambda r: r[A] * r[B]),
    ("s32 / s64", lambda r: cdiv(r[A], r[B])),
    ("s32 % s64", lambda r: r[A] - cdiv(r[A], r[B]) * r[B]),
    ("s32 / u32", lambda r: W(r[A]) // r[U]),          # unsigned divide
    ("s32 % u32", lambda r: W(r[A]) % r[U]),
    ("s32 << 3", lambda r: r[A] << 3),
    ("s32 >> 1", lambda r: r[A] >> 1),                 # arithmetic (Python >> is arithmetic)
    ("s32 >> u32", lambda r: W(r[A]) >> (r[U] % 64)),  # logical, count mod 64
    ("s64 << 65", lambda r: r[B] << 1),                # count mod 64
    ("s32 & u32", lambda r: r[A] & r[U]),
    ("s32 | s64", lambda r: r[A] | r[B]),
    ("s32 ^ s64", lambda r: r[A] ^ r[B]),
    ("~s32", lambda r: ~r[A]),
    ("!s32", lambda r: int(r[A] == 0)),
    ("-s32", lambda r: -r[A]),
    ("+s32", lambda r: r[A]),
    ("s32 < s64", lambda r: int(r[A] < r[B])),          # signed compare
    ("s32 <= s64", lambda r: int(r[A] <= r[B])),
    ("s32 > s64", lambda r: int(r[A] > r[B])),
    ("s32 >= s64", lambda r: int(r[A] >= r[B])),
    ("s32 < u32", lambda r: int(W(r[A]) < r[U])),       # unsigned compare
    ("s32 >= u32", lambda r: int(W(r[A]) >= r[U])),
    ("s32 == s64", lambda r: int(r[A] == r[B])),
    ("s32 != s64", lambda r: int(r[A] != r[B])),
    ("s32 && s64", lambda r: r[B] if r[A] else 0),
    ("s32 || s64", lambda r: r[A] if r[A] else r[B]),
    ("s32 ? s64 : u32", lambda r: r[B] if r[A] else r[U]),
    ("s32 > 0 ? s32 : -s32", lambda r: abs(r[A])),
    ("s32, s64", lambda r: r[B]),
    ("(char)s16", lambda r: ((r["s16"] + 128) % 256) - 128),   # cast narrows a load
    ("(unsigned char)s16", lambda r: r["s16"] & 0xFF),
    ("(unsigned)s32", lambda r: r[A] & 0xFFFFFFFF),
    ("(char)(s16 + 1000)", lambda r: r["s16"] + 1000),         # not a load: no narrowing
    ("(long)s8", lambda r: r["s8"]),
    ("comm[1]", lambda r: r["comm"][1] if len(r["comm"]) > 1 else 0),
    ("*comm", lambda r: r["comm"][0] if r["comm"] else 0),
    ("*(comm + 2)", lambda r: r["comm"][2] if len(r["comm"]) > 2 else 0),
    ("s32 = 5, s32 + 1", lambda r: 6),
    ("s32++, s32", lambda r: r[A] + 1),
    ("s32--", lambda r: r[A]),
    ("++s8", lambda r: r["s8"] + 1),                           # the value, not the stored char
    ("++s8, s8", lambda r: ((r["s8"] + 1 + 128) % 256) - 128),
    ("s8 = 300, s8", lambda r: 300 - 256),                     # stored in a char
    ("sizeof(int) + sizeof(char) + sizeof(long) + sizeof(char *)", lambda r: 4 + 1 + 8 + 8),
    ("s64 == 5 ? 1 : 0", lambda r: int(r[B] == 5)),
    ("u64 >> 63", lambda r: r["u64"] >> 63),
    ("u64 > 0", lambda r: int(r["u64"] > 0)),
    ("ntohl(0x01020384)", lambda r: 0x84030201 - (1 << 32)),   # sign-extended from 32 bits
    ("ntohs(0x0180)", lambda r: 0x8001 - (1 << 16)),
]


@pytest.mark.parametrize("text,ref", OPS, ids=[t for t, _ in OPS])
def test_operator_table(text, ref, wcols):
    r = run(text, WFMT, wcols)
    assert not r.failed.any()
    assert [int(v) for v in r.values] == [W(ref(row)) for row in ROWS]


@pytest.mark.parametrize("text,expected", [
    ("1 + 2 * 3", 7), ("(1 + 2) * 3", 9), ("1 << 2 + 1", 8), ("6 & 3 == 3", 0),
    ("1 | 6 ^ 3 & 5", 1 | (6 ^ (3 & 5))), ("1 < 2 == 1", 1), ("0 || 0 && 1 ? 4 : 5", 5),
    ("1 ? 2 : 0 ? 3 : 4", 2), ("10 - 3 - 2", 5), ("100 / 10 / 5", 2),
    ("-7 / 2", -3), ("-7 % 3", -1), ("7 % -3", 1), ("0 || 7", 7), ("2 || 0", 2),
    ("3 && 5", 5), ("0 && 5", 0), ("1 << 70", 64), ("-1 >> 60", -1),
    ("0x1F", 31), ("0XfF", 255), ("017", 15), ("08", 0), ("0", 0), ("'A'", 65),
    ("'\\n'", 10), ("18446744073709551617", 1), ("0x10 + 010 + 'a'", 16 + 8 + 97),
    ("5 # comment 7", 5), ("5 // comment\n + 1", 6), ("4 garbage here", 4), ("4)", 4),
    ("2 ; 3", 2), ("$7", 7), ("sizeof(unsigned short)", 2), ("!0 + !5", 1), ("~0", -1),
])
def test_literals_precedence_quirks(text, expected, wcols):
    assert values(text, WFMT, wcols) == [W(expected)] * len(ROWS)


def test_required_page_alloc_examples():
    fmt = fmt_of("kmem_mm_page_alloc")
    orders = [3, 0, 1, 10]
    pfns = [0x1234, M64, 7, 0]
    cols = decoded(fmt, [{"order": o, "pfn": p, "migratetype": -1} for o, p in zip(orders, pfns)])
    assert values("4096<<order", fmt, cols) == [4096 << o for o in orders]
    assert values("4096<<order", fmt, cols)[0] == 32768
    assert values("((4096<<order)/2)", fmt, cols) == [(4096 << o) // 2 for o in orders]
    # unsigned int order = 3: arithmetic is 64-bit, so order - 4 is -1, not 4294967295
    assert values("order - 4", fmt, cols)[0] == 0xFFFFFFFFFFFFFFFF
    assert values("order < -1", fmt, cols) == [1, 1, 1, 1]     # unsigned compare
    assert values("migratetype < 0", fmt, cols) == [1, 1, 1, 1]  # signed int field
    assert values("$pfn", fmt, cols) == pfns
    assert values("pfn.function == 3", fmt, cols) == pfns      # '.' skipped, rest ignored
    r = run("pfn", fmt, cols)
    assert as_ptr(r).tolist() == [0x1234, 0, 7, 0]             # -1 -> NULL
    assert as_size(r).tolist() == [0x1234, 1, 7, 0]            # -1 -> 1
    e = compile_expr("4096<<order", fmt.fields)
    assert e.fields_used == {"order"}


def test_division_by_zero_marks_rows_failed(wcols):
    # u32 = [3, 0xFFFFFFFF, 1, 4, 9]; s32 = [7, -7, 100, -1, 0]
    r = run("100 / s32", WFMT, wcols)
    assert r.failed.tolist() == [False, False, False, False, True]
    assert [int(v) for v in r.values[:4]] == [W(cdiv(100, a)) for a in (7, -7, 100, -1)]
    assert r.n_failed == 1
    m = run("5 % (u32 - 1)", WFMT, wcols)
    assert m.failed.tolist() == [False, False, True, False, False]
    # the failed rows map like -1
    assert as_ptr(m).tolist()[2] == 0 and as_size(m).tolist()[2] == 1
    assert filter_mask(m).tolist() == [5 % 2 > 0, True, False, 5 % 3 > 0, 5 % 8 > 0]


def test_unsigned_division_keeps_64_bit_precision_next_to_failed_rows(wcols):
    # u32 & 1 = [1, 1, 1, 0, 1]; u64 = [2**64-5, 10, 2**63, 0, 1]
    r = run("u64 / (u32 & 1)", WFMT, wcols)
    assert r.failed.tolist() == [False, False, False, True, False]
    assert [int(v) for v in r.values] == [M64 - 4, 10, 1 << 63, M64, 1]
    r = run("u64 % (u32 & 1) + s64 / (u32 & 1)", WFMT, wcols)
    assert [int(v) for v in r.values[[0, 1, 2, 4]]] == [W(b) for b in (2, 3, -4, 7)]


def test_short_circuit_does_not_fail_skipped_rows(wcols):
    r = run("s32 && 10 / s32", WFMT, wcols)
    assert not r.failed.any()
    assert [int(v) for v in r.values] == [W(cdiv(10, a)) if a else 0 for a in (7, -7, 100, -1, 0)]
    r = run("!s32 || 10 / s32", WFMT, wcols)
    assert not r.failed.any()
    r = run("s32 ? 10 / s32 : 1", WFMT, wcols)
    assert not r.failed.any() and int(r.values[4]) == 1
    r = run("s32 ? 1 : 10 / s32", WFMT, wcols)
    assert r.failed.tolist() == [False] * 4 + [True]
    # an assignment only happens on rows that execute it
    assert values("s32 > 0 && (s64 = 0), s64", WFMT, wcols) == [0, 3, 0, 5, 7]


def test_filter_mask_is_signed_positive(wcols):
    r = run("s32", WFMT, wcols)   # [7, -7, 100, -1, 0]
    assert filter_mask(r).tolist() == [True, False, True, False, False]


# --------------------------------------------------------------------------- strings

NAMES = [b"kmalloc-64", b"dentry", b"kmalloc-128", b"", b"kmalloc-rcl-8"]


@pytest.fixture(scope="module")
def kca():
    fmt = fmt_of("kmem_kmem_cache_alloc")
    rows = [{"call_site": 0xFFFFFFFF81000000 + i, "ptr": 0x1000 * (i + 1), "bytes_req": 8 * i,
                 "bytes_alloc": 64, "node": -1} for i in range(len(NAMES))]
    cols = decoded(fmt, rows, strings=[{"name": n} for n in NAMES], pid=[10, 20, 30, 40, 50])
    return fmt, cols


@pytest.mark.parametrize("text,ref", [
    ('name == "dentry"', lambda s: s == b"dentry"),
    ('name != "dentry"', lambda s: s != b"dentry"),
    ('name == ""', lambda s: s == b""),
    ('"dentry" == name', lambda s: s == b"dentry"),
    ('name ~ "kmalloc-*"', lambda s: s.startswith(b"kmalloc-")),
    ('name ~ "kmalloc-??"', lambda s: s.startswith(b"kmalloc-") and len(s) == 10),
    ('name ~ "kmalloc-[0-9]*"', lambda s: s[:9] in (b"kmalloc-6", b"kmalloc-1")),
    ('name ~ "kmalloc-[!0-9]*"', lambda s: s.startswith(b"kmalloc-r")),
    ('name ~ "kmalloc-[^0-9]*"', lambda s: s.startswith(b"kmalloc-r")),
    ('name ~ "*e*"', lambda s: b"e" in s),
    ('name ~ "dentry"', lambda s: s == b"dentry"),
    ('name ~ "dent"', lambda s: False),                  # anchored
    ('name ~ "DENTRY"', lambda s: False),                # case-sensitive
    ('name ~ "*"', lambda s: True),
    ('name[0] == 107', lambda s: s[:1] == b"k"),
    ('name_len', lambda s: len(s) + 1),
    ('strncmp(name, "kmalloc-1", 8) == 0', lambda s: s[:8] == b"kmalloc-"),
    ('(name == "x" ? "dentry" : name) == "dentry"', lambda s: s == b"dentry"),
])
def test_string_compare_and_glob(text, ref, kca):
    fmt, cols = kca
    assert values(text, fmt, cols) == [int(ref(s)) for s in NAMES]


def test_string_builtins_use_env(kca):
    fmt, cols = kca
    env = ExprEnv(
        ksymbol=lambda a: np.where(a % 2 == 0, b"__kmalloc", b"Unknown"),
        comm_get=lambda p: np.array([b"proc%d" % x for x in p]),
    )
    r = run('ksymbol(call_site) == "__kmalloc"', fmt, cols, env)
    assert r.values.tolist() == [1, 0, 1, 0, 1]
    r = run('comm_get(_pid) ~ "proc[1-3]0"', fmt, cols, env)
    assert r.values.tolist() == [1, 1, 1, 0, 0]
    # without callbacks: perf-prof's placeholders
    assert run('ksymbol(call_site) == "Unknown"', fmt, cols).values.tolist() == [1] * 5
    assert run('comm_get(_pid) == "<...>"', fmt, cols).values.tolist() == [1] * 5


def test_unsigned_char_array_is_not_a_string(wcols):
    # `ucomm` is reported signed:0 -> unsigned char *: == compares pointers, ~ does not compile
    assert values('ucomm == "xy"', WFMT, wcols) == [0] * len(ROWS)
    assert values('comm == "bash"', WFMT, wcols) == [1, 0, 0, 0, 0]
    with pytest.raises(ExprError) as ei:
        compile_expr('ucomm ~ "x*"', WFMT.fields)
    assert ei.value.message == "~ operator requires char * operand"


# --------------------------------------------------------------------------- errors

def caret_col(err: ExprError) -> int:
    return str(err).splitlines()[1].index("^")


@pytest.mark.parametrize("text,message,col", [
    ("foo + 1", "undefined variable", 4),            # perf-prof reports after the next token
    ("pfn +", "unexpected eof in expression", 4),
    ("(pfn", "close paren expected", 3),
    ("order ~ \"x\"", "~ operator requires char * operand", 6),
    ("pfn(1)", "bad function call", 5),
    ("*pfn", "bad dereference", 3),
    ("", "unexpected eof in expression", 0),
    ("pfn ? 1", "conditional missing colon", 6),
    ("pfn[1]", "pointer type expected", 5),
    (")", "bad expression", 0),
])
def test_error_message_caret_and_variables(text, message, col):
    fmt = fmt_of("kmem_mm_page_alloc")
    with pytest.raises(ExprError) as ei:
        compile_expr(text, fmt.fields)
    err = ei.value
    assert err.message == message
    lines = str(err).splitlines() if text else [""] + str(err).splitlines()[1:]
    assert lines[0] == text
    assert lines[1] == " " * col + "^ " + message
    assert caret_col(err) == col
    assert lines[2] == "Available variables:"
    assert lines[3:] == [
        "     int _cpu", "     int _pid", "     unsigned short common_type",
        "     unsigned char common_flags", "     unsigned char common_preempt_count",
        "     int common_pid", "     unsigned long pfn", "     unsigned int order",
        "     unsigned long gfp_flags", "     int migratetype",
    ]


def test_variables_block_lists_arrays_and_data_loc():
    err = pytest.raises(ExprError, compile_expr, "nope", fmt_of("kmem_kmem_cache_alloc").fields)
    block = str(err.value).split("Available variables:\n")[1].splitlines()
    assert "     unsigned short name_offset" in block and "     unsigned short name_len" in block
    assert block[-1] == "     char [] name"
    err = pytest.raises(ExprError, compile_expr, "nope", WFMT.fields)
    block = str(err.value).split("Available variables:\n")[1].splitlines()
    assert "     char [16] comm" in block and "     unsigned char [8] ucomm" in block


def test_odd_element_size_fails_whole_compile():
    extra = "\tfield:u8 odd[6];\toffset:64;\tsize:6;\tsigned:0;\n"
    big = "\tfield:__int128 big;\toffset:72;\tsize:16;\tsigned:1;\n"
    anchor = "\tfield:char ucomm[8];\toffset:56;\tsize:8;\tsigned:0;\n"
    ok = tracefs.parse_format(WIDTHS_FORMAT.replace(anchor, anchor + extra), "test")
    assert compile_expr("s32", ok.fields).fields_used == {"s32"}  # u8[6]: element size 1
    bad = tracefs.parse_format(WIDTHS_FORMAT.replace(anchor, anchor + extra + big), "test")
    with pytest.raises(ExprError, match="element size 16"):
        compile_expr("s32", bad.fields)   # s32 is fine, but another field is not


def test_unsupported_builtins_are_compile_errors():
    fmt = fmt_of("kmem_kfree")
    for text in ('printf("%d", ptr)', 'system("true")'):
        with pytest.raises(ExprError, match="not supported"):
            compile_expr(text, fmt.fields)


def test_glob_matches_the_plain_regex_translation_and_is_linear():
    """The segment matcher agrees with the anchored regex (`*` -> `.*`) on random patterns and
    strings, and a pattern of many stars against a long name stays fast (the regex was
    exponential: 16 stars took a minute)."""
    import re
    import time

    from kmemleak_offline.format.expr import _glob_matcher, _glob_units

    rng = np.random.default_rng(5)
    alphabet = [b"a", b"b", b"*", b"?", b"[ab]", b"[!a]", b"**"]
    for _ in range(3000):
        pat = b"".join(alphabet[i] for i in rng.integers(0, len(alphabet), rng.integers(0, 8)))
        rx = re.compile(b"".join(b".*" if u is None else u for u in _glob_units(pat)), re.DOTALL)
        m = _glob_matcher(pat)
        for _ in range(5):
            s = bytes(rng.choice(list(b"abc"), rng.integers(0, 10)).astype(np.uint8))
            assert m(s) == (rx.fullmatch(s) is not None), (pat, s)
    slow = _glob_matcher(b"*" * 16 + b"x")
    t0 = time.perf_counter()
    assert not slow(b"a" * 5000)
    assert _glob_matcher(b"*a*a*a*a*a*a*a*a*x")(b"a" * 3000) is False
    assert time.perf_counter() - t0 < 5.0  # a hang guard with wide slack, not a speed target
