"""`diff --fail-on-growth SIZE` (a CI gate) and `diff --format markdown` (a pull-request comment).

The markdown is read back with markdown-it-py (CommonMark plus GFM tables), as a forge would
render it: the table must keep its columns whatever the symbols contain.
"""

from __future__ import annotations

import html
import json
import re

import pytest
from markdown_it import MarkdownIt

from kmemleak_offline.diff import parse_size
from kmemleak_offline.synthetic import RecordingBuilder
from tests.test_analyze_cli import KFREE, KMALLOC, MS, START, STOP, K, build, run
from tests.test_diff import _allocs


@pytest.fixture
def runs(tmp_path):
    """base: udp 3 x 64, pipe 2 x 128. grown: udp 5 x 64 (+128), pipe gone, udp2 new 1 x 32.
    big: udp2 new with one 1025-byte leak."""
    base = build(_allocs(3, "udp", 64, 0x1000) + _allocs(2, "pipe", 128, 0x9000), tmp_path / "base.parquet")
    grown = build(_allocs(5, "udp", 64, 0x1000) + _allocs(1, "udp2", 32, 0x5000), tmp_path / "grown.parquet")
    big = build(_allocs(3, "udp", 64, 0x1000) + _allocs(2, "pipe", 128, 0x9000)
                + _allocs(1, "udp2", 1025, 0x5000), tmp_path / "big.parquet")
    return base, grown, big


def gate(capsys, base, new, size, *opts):
    return run(capsys, "diff", base, new, "--fail-on-growth", size, *opts)


def test_growth_beyond_the_limit_fails_below_or_at_it_passes(runs, capsys):
    base, grown, _ = runs
    code, out, err = run(capsys, "diff", base, grown)
    assert code == 0  # no gate: always 0, as before
    for size, want in (("0", 1), ("127", 1), ("128", 0), ("129", 0), ("1K", 0)):
        code, out2, err = gate(capsys, base, grown, size)
        assert code == want, (size, err)
        assert out2 == out  # the report is printed either way
        assert (err != "") == bool(want)
    code, _, err = gate(capsys, base, grown, "0")
    assert err == ("kmemleak-offline: leak gate: 2 call chains grew by more than 0 bytes (largest "
                   "+128 bytes, grown: __kmalloc_noprof+0x244 <- udp_init_sock+0x7c <- "
                   "do_syscall_64+0x71 <- ...)\n")
    code, _, err = gate(capsys, base, grown, "127")
    assert err.startswith("kmemleak-offline: leak gate: 1 call chain grew by more than 127 bytes ")


def test_a_new_chain_grows_from_zero(runs, capsys):
    base, grown, _ = runs
    # udp2 is new with 32 bytes, udp grew by 128: a limit between them trips on udp only
    code, _, err = gate(capsys, grown, grown, "0")
    assert code == 0 and err == ""  # nothing grew
    code, _, err = gate(capsys, base, grown, "100")
    assert code == 1 and "1 call chain grew" in err and "grown:" in err
    code, _, err = gate(capsys, base, grown, "31")
    assert code == 1 and "2 call chains grew" in err
    solo = build(_allocs(3, "udp", 64, 0x1000), base.parent / "solo.parquet")
    plus_new = build(_allocs(3, "udp", 64, 0x1000) + _allocs(1, "udp2", 32, 0x5000),
                     base.parent / "plus.parquet")
    code, _, err = gate(capsys, solo, plus_new, "31")
    assert code == 1
    assert "(largest +32 bytes, new: __kmalloc_noprof+0x100 <- udp_init_sock+0x10" in err
    assert gate(capsys, solo, plus_new, "32")[0] == 0


def test_shrinking_and_gone_chains_never_trip_the_gate(runs, capsys):
    base, grown, _ = runs
    code, _, err = gate(capsys, grown, base, "0")  # reversed: pipe new (+256), udp shrank, udp2 gone
    assert code == 1 and "1 call chain grew" in err and "new:" in err
    code, _, _ = gate(capsys, grown, base, "256")
    assert code == 0


@pytest.mark.parametrize(("size", "want"), [
    ("1K", 1), ("1KiB", 1), ("1k", 1), ("1kB", 1), ("1000", 1), ("1024", 1),
    ("1025", 0), ("2K", 0), ("1.5K", 0), ("1.001kB", 1), ("1.025kB", 0), ("1M", 0), ("1G", 0),
])
def test_suffixes(runs, capsys, size, want):
    base, _, big = runs  # one new chain of 1025 bytes
    assert gate(capsys, base, big, size)[0] == want


def test_parse_size():
    assert [parse_size(s) for s in ("0", "4096", "64K", "64k", "64KiB", "64kib", "64kB", "64KB",
                                    "1.5M", "1MiB", "1MB", "3G", "2GiB", "1GB", "1T", "0.5K",
                                    " 8 K ")] == [
        0, 4096, 65536, 65536, 65536, 65536, 64000, 64000, 1572864, 1 << 20, 10 ** 6, 3 << 30,
        2 << 30, 10 ** 9, 1 << 40, 512, 8192]
    for bad in ("", "-1", "K", "12Q", "1.1", "0x10", "1e3", "1.0001K", "1,5K", "5 bytes"):
        with pytest.raises(ValueError, match="invalid size"):
            parse_size(bad)


@pytest.mark.parametrize("size", ["", "-1", "12Q", "1.1", "ten", "1e3"])
def test_bad_size_is_one_line_exit_2_before_any_analysis(runs, capsys, tmp_path, size):
    base, grown, _ = runs
    for new in (grown, tmp_path / "missing.parquet"):  # the size is checked first
        code, out, err = gate(capsys, base, new, size)
        assert code == 2 and out == ""
        assert err.startswith(f"kmemleak-offline: --fail-on-growth: invalid size {size!r}")
        assert len(err.splitlines()) == 1


def test_bad_files_are_exit_2_with_the_gate(runs, capsys, tmp_path):
    base, _, _ = runs
    bad = tmp_path / "bad.json"
    bad.write_text('{"format_version": 1, "mode": ')
    for new in (tmp_path / "missing.parquet", bad):
        code, out, err = gate(capsys, base, new, "1K")
        assert code == 2 and out == "" and len(err.splitlines()) == 1 and "Traceback" not in err


def test_gate_with_a_json_report_side(runs, capsys, tmp_path):
    base, grown, _ = runs
    report = tmp_path / "base.json"
    assert run(capsys, "analyze", base, "--format", "json", "-o", report)[0] == 0
    assert gate(capsys, report, grown, "127")[0] == 1
    assert gate(capsys, report, grown, "128")[0] == 0
    # the JSON output is unchanged by the gate
    code, out, _ = gate(capsys, report, grown, "127", "--format", "json")
    assert code == 1 and {c["status"] for c in json.loads(out)["changes"]} == {"grown", "new", "gone"}


def test_gate_refuses_event_list_recordings(tmp_path, capsys):
    from tests.test_analyze_cli import EVENTS_B, PAGE_ALLOC, PAGE_FREE, page_fields

    rec = build(EVENTS_B, tmp_path / "b.parquet", alloc=[PAGE_ALLOC], free=[PAGE_FREE],
                alloc_event="kmem:mm_page_alloc", free_event="kmem:mm_page_free",
                extra_alloc_fields=page_fields)
    code, out, err = gate(capsys, rec, rec, "0")
    assert code == 2 and out == ""
    assert err == (f"kmemleak-offline: --fail-on-growth: {rec} and {rec} have no allocation sizes "
                   "(event-list mode): nothing to compare bytes of\n")


# ----------------------------------------------------------------------------------- markdown

def render(md: str) -> str:
    return MarkdownIt("commonmark").enable("table").render(md)


def rows(page: str) -> list[list[str]]:
    """Table body rows of the rendered HTML, each a list of cell HTML."""
    body = re.findall(r"<tbody>(.*?)</tbody>", page, re.DOTALL)
    return [re.findall(r"<td[^>]*>(.*?)</td>", tr, re.DOTALL)
            for b in body for tr in re.findall(r"<tr>(.*?)</tr>", b, re.DOTALL)]


def test_markdown_comment(runs, capsys):
    base, grown, _ = runs
    code, out, err = gate(capsys, base, grown, "100", "--format", "markdown")
    assert code == 1 and "1 call chain grew" in err
    assert out.splitlines()[2] == ("**Leak gate failed:** 1 call chain grew by more than 100 "
                                   "bytes (largest: +128 bytes).")
    page = render(out)
    assert f"<code>{base}</code> → <code>{grown}</code>" in page
    totals, changes = rows(page)[:4], rows(page)[4:]
    assert totals[0] == ["leaked bytes", "448", "352", "-96"]
    assert totals[1] == ["leaked objects", "5", "6", "+1"]
    # grown/new/gone chains, biggest |change| first; unchanged ones are not listed
    assert [r[:5] for r in changes] == [
        ["gone", "-256", "-2", "256", "0"],
        ["grown <strong>over limit</strong>", "+128", "+2", "192", "320"],
        ["new", "+32", "+1", "0", "32"],
    ]
    assert changes[1][5] == ("<code>__kmalloc_noprof+0x244 ([kernel.kallsyms])</code><br>"
                             "<code>udp_init_sock+0x7c ([kernel.kallsyms])</code><br>"
                             "<code>do_syscall_64+0x71 ([kernel.kallsyms])</code><br>"
                             "<code>entry_SYSCALL_64_after_hwframe+0x76 ([kernel.kallsyms])</code>")
    code, out, _ = gate(capsys, base, grown, "1M", "--format", "markdown", "--top", "1")
    assert code == 0 and "**Leak gate passed:** no call chain grew by more than 1,048,576 bytes." in out
    assert len(rows(render(out))) == 4 + 1
    assert out.rstrip().endswith("2 more changed call chains not shown (together +160 bytes).")
    code, out, _ = run(capsys, "diff", base, base, "--format", "markdown")
    assert code == 0 and "Leak gate" not in out and out.rstrip().endswith("No call chain changed.")


WEIRD = ["tmpl<a|b>::op|`x`", "*emph*_and_[link](http://x)", "``two``", "<script>alert(1)</script>"]


def _weird(path, n: int) -> object:
    b = RecordingBuilder()
    addrs = [0xFFFFFFFF81000000 + 0x100000 * i for i in range(len(WEIRD) + 1)]
    b.add_ksyms(addrs, ["__kmalloc_noprof", *WEIRD])
    (sid,) = b.add_stacks([(K, *[a + 0x10 for a in addrs])])
    b.add_samples("kmem:kmalloc", [START + (10 + i) * MS for i in range(n)], 0, 1, 1,
                  {"ptr": [0x1000 + 64 * i for i in range(n)], "bytes_alloc": 64, "bytes_req": 64},
                  stack_id=sid)
    b.add_samples("kmem:kfree", START + 500 * MS, 0, 1, 1, {"ptr": 0x9000})
    return b.write(path, [KMALLOC], [KFREE], start_ns=START, stop_ns=STOP)


def test_markdown_escapes_symbols(tmp_path, capsys):
    a, b = _weird(tmp_path / "a|b.parquet", 1), _weird(tmp_path / "c`d.parquet", 2)
    code, out, err = run(capsys, "diff", a, b, "--format", "markdown")
    assert code == 0, err
    page = render(out)
    ((status, *_, chain),) = rows(page)[4:]
    assert status == "grown"
    codes = [html.unescape(c) for c in re.findall(r"<code>(.*?)</code>", chain)]
    assert codes == ["__kmalloc_noprof+0x10 ([kernel.kallsyms])",
                     *[f"{w}+0x10 ([kernel.kallsyms])" for w in WEIRD]]
    assert "<script>" not in page and "<em>" not in page and "<a " not in page
    names = [html.unescape(c) for c in re.findall(r"<code>(.*?)</code>", page.split("</h3>")[0])]
    assert names == [str(a), str(b)]
