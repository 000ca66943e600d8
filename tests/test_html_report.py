"""`analyze --format html` and `diff --format html` (docs/html-report.md): the page is one
self-contained file, says what the analysis found (classes, chains, totals, processes), and
renders in a real browser (headless Chromium) without console errors or network requests; the
flame graph's search and zoom work there. Screenshots are kept under $KMLO_ARTIFACTS (default
tests/artifacts/) to look at.

The recordings are synthetic (no root needed): named kernel call chains with known shapes."""

from __future__ import annotations

import json
import os
import pty
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from kmemleak_offline.reports.html_page import sparkline
from kmemleak_offline.reports.icicle import layout
from kmemleak_offline.synthetic import KERNEL_TEXT_START, PERF_CONTEXT_KERNEL, RecordingBuilder
from tests.browser import Browser, chromium

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "kmemleak_offline.cli"]
ALLOC = ["kmem:kmalloc//ptr=ptr/size=bytes_alloc/stack/"]
FREE = ["kmem:kfree//ptr=ptr/"]
START = 10_000_000_000
SEC = 1_000_000_000
K = KERNEL_TEXT_START
FUNCS = {"__kmalloc_noprof": K + 0x100, "leak_site": K + 0x1000, "cache_fill": K + 0x2000,
         "startup_burst": K + 0x3000, "rare_site": K + 0x4000, "new_site": K + 0x5000,
         "churn_site": K + 0x6000, "do_work": K + 0x8000, "do_syscall_64": K + 0x9000,
         "_etext": K + 0x10000}
PROCS = {100: "leaky", 200: "cached", 300: "newcomer"}


def artifacts() -> Path:
    d = Path(os.environ.get("KMLO_ARTIFACTS") or ROOT / "tests" / "artifacts")
    d.mkdir(parents=True, exist_ok=True)
    return d


def sites_recording(path: Path, seconds: int = 60, new_site: bool = False,
                    lost_at: float | None = None) -> Path:
    """Kernel chains `__kmalloc_noprof <- SITE <- do_work <- do_syscall_64`:
    leak_site (pid 100): 64 B every 100 ms, never freed -> growing;
    cache_fill (pid 200): 512 B every 50 ms into a 50-entry cache evicting the oldest -> bounded;
    startup_burst (pid 200): 100 x 4096 B at 0.1 s -> bounded; rare_site (pid 100): 3 x 32 B ->
    insufficient; churn_site (pid 100): alloc/free pairs (no leak); new_site (pid 300, when
    asked): 40 x 256 B spread out."""
    b = RecordingBuilder()
    sites = ["leak_site", "cache_fill", "startup_burst", "rare_site", "new_site", "churn_site"]
    ids = b.add_stacks([[PERF_CONTEXT_KERNEL, FUNCS["__kmalloc_noprof"] + 0x24, FUNCS[s] + 0x10,
                         FUNCS["do_work"] + 0x8, FUNCS["do_syscall_64"] + 0x40] for s in sites])
    sid = dict(zip(sites, ids, strict=True))
    names = sorted(FUNCS, key=FUNCS.get)
    b.add_ksyms([FUNCS[n] for n in names], names)
    for pid, comm in PROCS.items():
        b.add_comm(START, pid, pid, comm)
    allocs = []  # site, pid, size, t_alloc, t_free (None: never)
    for k in range(1, seconds * 10):
        allocs.append(("leak_site", 100, 64, START + k * SEC // 10, None))
    cache_t = [START + k * SEC // 20 for k in range(1, seconds * 20)]
    for i, t in enumerate(cache_t):
        allocs.append(("cache_fill", 200, 512, t, cache_t[i + 50] if i + 50 < len(cache_t) else None))
    for k in range(100):
        allocs.append(("startup_burst", 200, 4096, START + SEC // 10 + k * 1000, None))
    for k in range(3):
        allocs.append(("rare_site", 100, 32, START + (k + 1) * seconds * SEC // 4, None))
    if new_site:
        for k in range(40):
            allocs.append(("new_site", 300, 256, START + (k + 1) * seconds * SEC // 41, None))
    for k in range(1, 2000):
        t = START + k * seconds * SEC // 2000
        allocs.append(("churn_site", 100, 128, t, t + 500))
    allocs.sort(key=lambda a: a[3])
    ptr = 0xFFFF888000000000 + 64 * np.arange(len(allocs), dtype=np.uint64)
    pids = [a[1] for a in allocs]
    b.add_samples("kmem:kmalloc", [a[3] for a in allocs], 0, pids, pids,
                  {"ptr": ptr, "bytes_alloc": [a[2] for a in allocs], "bytes_req": 1,
                   "gfp_flags": 0, "call_site": 0}, stack_id=[sid[a[0]] for a in allocs])
    fr = [i for i, a in enumerate(allocs) if a[4] is not None]
    b.add_samples("kmem:kfree", [allocs[i][4] for i in fr], 1, [pids[i] for i in fr],
                  [pids[i] for i in fr], {"ptr": ptr[fr], "call_site": 0})
    if lost_at is not None:
        b.add_lost(START + int(lost_at * SEC), 0, 7)
    b.write(path, ALLOC, FREE, start_ns=START, stop_ns=START + seconds * SEC)
    return path


def cli(*args, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *map(str, args)], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, check=False, **kw)


def analyze_html(rec: Path, out: Path, *extra) -> Path:
    res = cli("analyze", rec, "--format", "html", "-o", out, *extra)
    assert res.returncode == 0, res.stderr
    return out


class _Tags(HTMLParser):
    """Every start tag with its attributes, the text outside <script> and <style>, and the style
    text."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.text: list[str] = []
        self.style: list[str] = []
        self._in: str | None = None

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        if tag in ("script", "style"):
            self._in = tag

    def handle_endtag(self, tag):
        if tag == self._in:
            self._in = None

    def handle_data(self, data):
        if self._in == "style":
            self.style.append(data)
        elif self._in is None:
            self.text.append(data)


def parse(path: Path) -> _Tags:
    p = _Tags()
    p.feed(path.read_text())
    return p


def text_of(p: _Tags) -> str:
    return re.sub(r"\s+", " ", " ".join(p.text))


@pytest.fixture(scope="module")
def sites(tmp_path_factory) -> Path:
    return sites_recording(tmp_path_factory.mktemp("html") / "sites.parquet")


@pytest.fixture(scope="module")
def page(sites, tmp_path_factory) -> Path:
    return analyze_html(sites, tmp_path_factory.mktemp("page") / "report.html")


# ------------------------------------------------------------------ the file

def test_page_needs_nothing_from_elsewhere(page):
    p = parse(page)
    assert page.stat().st_size < 2_500_000
    external = [(t, a) for t, a in p.tags for k in ("src", "href", "data", "action", "poster")
                if a.get(k) and not a[k].startswith("#")]
    assert external == []
    assert not [t for t, a in p.tags if t in ("link", "iframe", "img", "object", "embed", "base")]
    scripts = [a for t, a in p.tags if t == "script"]
    assert scripts and all("src" not in a for a in scripts)
    assert "url(" not in "".join(p.style) and "@import" not in "".join(p.style)
    # bokeh's JavaScript is inlined (the size above leaves out its 1.8 MB mathjax bundle)
    assert "Bokeh.embed" in page.read_text()


def test_page_says_what_the_analysis_found(page):
    text = text_of(parse(page))
    for fact in ("6.18.0-synthetic", "60.000 s", "3,900", "3,148", "lost events 0 in 0 LOST"):
        assert fact in text, fact
    rows = {}  # headline -> row text, from the chains table
    body = page.read_text()
    at = body.index('<table class="chains">')
    table = body[at:body.index("</table>", at)]
    for tr in re.findall(r'<tr id="chain-\d+".*?</tr>', table, re.DOTALL):
        head = re.search(r'<div class="head">([^<]*)</div>', tr)[1]
        cls = re.search(r'<span class="badge (\w+)">', tr)[1]
        rows[head] = (cls, re.sub(r"<[^>]+>", " ", tr))
    assert {h: c for h, (c, _) in rows.items()} == {
        "leak_site": "growing", "cache_fill": "bounded", "startup_burst": "bounded",
        "rare_site": "insufficient"}
    # perf-prof's order (most bytes first), the allocator leaf is not the headline
    assert list(rows) == ["startup_burst", "leak_site", "cache_fill", "rare_site"]
    assert "37.4 KiB" in rows["leak_site"][1] and " 599 " in rows["leak_site"][1]
    assert re.search(r"\+640 B/s|\+639 B/s", rows["leak_site"][1])
    assert "__kmalloc_noprof+0x24" in rows["leak_site"][1]
    assert "<svg class=\"spark\"" in table
    # the summary's suspects: the growing chain only
    sus = body[body.index('<ul class="suspects">'):]
    sus = sus[:sus.index("</ul>")]
    assert "leak_site" in sus and "cache_fill" not in sus
    # per process: leaky = leak_site + rare_site, cached = cache_fill + startup_burst
    procs = body[body.index('<table class="procs">'):]
    procs = re.sub(r"<[^>]+>", " ", procs[:procs.index("</table>")])
    procs = re.sub(r"\s+", " ", procs)
    assert re.search(r"200 cached 425\.0 KiB .*? 150 2 ", procs)
    assert re.search(r"100 leaky 37\.5 KiB .*? 602 2 ", procs)


def test_html_to_a_terminal_asks_for_o(sites, tmp_path):
    """No -o and stdout a terminal: one line, exit 2; redirected: the page on stdout."""
    main, sub = pty.openpty()
    try:
        res = subprocess.run([*CLI, "analyze", str(sites), "--format", "html"], cwd=ROOT,
                             stdout=sub, stderr=subprocess.PIPE, text=True, timeout=120, check=False)
    finally:
        os.close(sub)
        os.close(main)
    assert res.returncode == 2
    [line] = res.stderr.strip().splitlines()
    assert line.endswith("--format html writes a page to open in a browser: give -o FILE "
                         "(or redirect stdout to a file)")
    res = cli("analyze", sites, "--format", "html")
    assert res.returncode == 0 and res.stdout.startswith("<!DOCTYPE html>")
    res = cli("diff", sites, sites, "--format", "html", "-o", tmp_path / "nodir" / "d.html")
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1
    assert "-o" in res.stderr and "Traceback" not in res.stderr


def test_lost_events_and_early_reports_are_shown(tmp_path):
    rec = sites_recording(tmp_path / "lost.parquet", lost_at=5.0)
    text = text_of(parse(analyze_html(rec, tmp_path / "lost.html")))
    assert "lost events 7 in 1 LOST records, 1 early report" in text


def test_frame_names_are_text_not_markup(tmp_path):
    """A symbol name with markup in it (symbols come from the traced machine) stays text."""
    evil = '</script><script>alert("x")</script>&<b>'
    b = RecordingBuilder()
    ids = b.add_stacks([[PERF_CONTEXT_KERNEL, K + 0x1010, K + 0x2010]])
    b.add_ksyms([K + 0x1000, K + 0x2000, K + 0x10000], [evil, "do_work", "_etext"])
    t = START + np.arange(1, 51) * SEC // 10
    ptr = 0xFFFF888000000000 + 64 * np.arange(50, dtype=np.uint64)
    b.add_samples("kmem:kmalloc", t, 0, 1, 1, {"ptr": ptr, "bytes_alloc": 64, "bytes_req": 1,
                                               "gfp_flags": 0, "call_site": 0}, stack_id=ids[0])
    b.add_samples("kmem:kfree", t[:5] + 1000, 0, 1, 1, {"ptr": ptr[:5], "call_site": 0})
    rec = b.write(tmp_path / "evil.parquet", ALLOC, FREE, start_ns=START, stop_ns=START + 6 * SEC)
    out = analyze_html(rec, tmp_path / "evil.html")
    p = parse(out)
    assert len([t for t, _ in p.tags if t == "script"]) == 4  # bokeh's 3 and the plots'
    assert evil in " ".join(p.text)
    assert "<script>alert" not in out.read_text()


def test_nothing_leaked_is_a_page_too(sites, tmp_path):
    """A filter that keeps no allocation: the summary, and no plots (no script at all)."""
    out = analyze_html(sites, tmp_path / "none.html", "--alloc",
                       "kmem:kmalloc/bytes_alloc>100000/ptr=ptr/size=bytes_alloc/stack/")
    p = parse(out)
    assert not [t for t, _ in p.tags if t == "script"]
    text = text_of(p)
    assert "allocations 0 " in text and text.count("no leaks") == 2


def test_event_list_recording_lists_objects(tmp_path):
    """Page allocations have no size: perf-prof's event-list mode; the page counts objects."""
    b = RecordingBuilder()
    ids = b.add_stacks([[PERF_CONTEXT_KERNEL, FUNCS[s] + 0x10, FUNCS["do_work"] + 0x8]
                        for s in ("leak_site", "cache_fill")])
    names = sorted(FUNCS, key=FUNCS.get)
    b.add_ksyms([FUNCS[n] for n in names], names)
    b.add_comm(START, 100, 100, "leaky")
    n = 30
    t = START + np.arange(1, n + 1) * SEC // 10
    b.add_samples("kmem:mm_page_alloc", t, 0, 100, 100,
                  {"pfn": 0x1000 + np.arange(n), "order": 0, "gfp_flags": 0, "migratetype": 0},
                  stack_id=[ids[i % 3 == 0] for i in range(n)])  # 10 from cache_fill
    b.add_samples("kmem:mm_page_free", t[:5] + 1000, 0, 100, 100, {"pfn": 0x1000 + np.arange(5),
                                                                   "order": 0})
    rec = b.write(tmp_path / "pages.parquet", ["kmem:mm_page_alloc//ptr=pfn/stack/"],
                  ["kmem:mm_page_free//ptr=pfn/"], start_ns=START, stop_ns=START + 4 * SEC)
    out = analyze_html(rec, tmp_path / "ev.html")
    text = text_of(parse(out))
    assert "sizes unknown: objects only" in text
    assert "Flame graph of leaked objects" in text
    body = out.read_text()
    heads = re.findall(r'<div class="head">([^<]*)</div>', body)
    assert heads == ["leak_site", "cache_fill"]  # 17 and 8 objects left
    assert re.search(r"100 leaky - .*? 25 2 ", re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", body)))


# ------------------------------------------------------------------ pieces

def test_icicle_layout_nests_and_prunes():
    paths = [([("main", "a"), ("f", "a"), ("leak", "a")], 600.0, True),
             ([("main", "a"), ("f", "a"), ("cache", "a")], 300.0, False),
             ([("main", "a"), ("g", "a")], 100.0, False),
             ([("main", "a"), ("tiny", "a")], 0.01, False)]
    ic = layout(paths)
    idx = {n: i for i, n in enumerate(ic.name)}
    assert "tiny" not in idx and ic.dropped == 1  # below 0.01% of the total
    assert ic.total == pytest.approx(1000.01)
    for i, par in enumerate(ic.parent.tolist()):
        if par >= 0:  # inside its parent, one level down
            assert ic.x0[par] <= ic.x0[i] <= ic.x1[i] <= ic.x1[par] + 1e-9
            assert ic.depth[i] == ic.depth[par] + 1
    assert ic.weight[idx["f"]] == 900 and ic.grow[idx["f"]] == 600
    assert ic.x0[idx["leak"]] == ic.x0[idx["f"]]  # heaviest child first
    c = ic.colors()
    assert c[idx["leak"]] == "#d62728" and c[idx["g"]] != "#d62728"
    many = [([("root", ""), (f"leaf{i}", "")], float(i + 1), False) for i in range(5000)]
    assert len(layout(many, max_nodes=300).name) <= 300


def test_sparkline_keeps_short_peaks():
    y = np.zeros(1000)
    y[500] = 100
    svg = sparkline(y, "#000")
    pts = [tuple(map(float, p.split(","))) for p in re.search(r'polyline points="([^"]+)"', svg)[1].split()]
    assert min(p[1] for p in pts) < 5  # the peak reaches the top of the box
    assert len(pts) <= 70


# ------------------------------------------------------------------ diff

@pytest.fixture(scope="module")
def diff_page(sites, tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("diff")
    base = sites_recording(d / "base.parquet", seconds=30)
    new = sites_recording(d / "new.parquet", seconds=60, new_site=True)
    js = d / "base.json"
    res = cli("analyze", base, "--format", "json", "-o", js)
    assert res.returncode == 0, res.stderr
    out = d / "diff.html"
    res = cli("diff", js, new, "--format", "html", "-o", out)  # a JSON side keeps its trends
    assert res.returncode == 0, res.stderr
    return out


def _diff_rows(body: str) -> dict[str, tuple[str, bool, list[str]]]:
    table = body[body.index('<table class="changes">'):]
    rows = {}
    for tr in re.findall(r"<tr class=\"(mark|)\">(.*?)</tr>", table, re.DOTALL):
        head = re.search(r'<div class="head">([^<]*)</div>', tr[1])[1]
        badges = re.findall(r'<span class="badge (\w+)">', tr[1])
        rows[head] = (badges[0], tr[0] == "mark", badges[1:])
    return rows


def test_diff_marks_new_and_grown_chains_with_both_trends(diff_page):
    rows = _diff_rows(diff_page.read_text())
    assert rows == {"new_site": ("new", True, ["growing"]),  # only in the new run
                    "leak_site": ("grown", True, ["growing", "growing"])}  # the rest: same
    text = text_of(parse(diff_page))
    assert "18.7 KiB" in text and "37.4 KiB" in text  # leak_site in each run


def test_diff_o_writes_every_format(sites, tmp_path):
    for fmt in ("text", "json"):
        out = tmp_path / f"d.{fmt}"
        res = cli("diff", sites, sites, "--format", fmt, "-o", out)
        assert res.returncode == 0 and res.stdout == ""
        assert out.read_text() == cli("diff", sites, sites, "--format", fmt).stdout
    assert json.loads((tmp_path / "d.json").read_text())["format_version"] == 1


# ------------------------------------------------------------------ in a browser

needs_browser = pytest.mark.skipif(
    chromium() is None and not os.environ.get("KMLO_REQUIRE_BROWSER"),
    reason="chromium is not installed (.ci/run installs it and sets KMLO_REQUIRE_BROWSER)")

READY = "window.Bokeh && Bokeh.documents.length > 0 && Bokeh.documents[0].is_idle"


@pytest.fixture(scope="module")
def browser():
    with Browser(width=1400, height=1000, timeout=60) as b:
        yield b


def load(browser: Browser, path: Path) -> None:
    browser.open(path)
    browser.wait_for(READY, timeout=30)
    browser.drain(0.2)
    assert browser.log.errors() == []
    assert browser.log.remote_requests() == []


def red_pixels(png: Path) -> int:
    from PIL import Image

    im = np.asarray(Image.open(png).convert("RGB")).astype(int)
    return int((np.abs(im - np.array([214, 39, 40])).sum(axis=2) < 30).sum())


@needs_browser
def test_report_renders_in_chromium(browser, page):
    load(browser, page)
    rows = browser.evaluate("""[...document.querySelectorAll('table.chains tbody tr[id]')].map(
        tr => [tr.querySelector('.head').textContent, tr.querySelector('.badge').textContent])""")
    assert rows == [["startup_burst", "bounded"], ["leak_site", "growing"],
                    ["cache_fill", "bounded"], ["rare_site", "insufficient"]]
    text = browser.evaluate("document.body.innerText")
    assert "Leak suspects" in text and "3,900" in text and "leaky" in text
    # the plots were built and laid out at the page's width
    views = browser.evaluate("[...Bokeh.index].map(v => [v.model.type, "
                             "Math.round(v.el.getBoundingClientRect().width)])")
    assert {t for t, w in views if w > 1000} >= {"Figure", "Column"}
    doc = "Bokeh.documents[0]"
    legend = browser.evaluate(f"{doc}.get_model_by_name('time').renderers.length")
    assert legend == 4
    src = f"{doc}.get_model_by_name('flame-source')"
    names = browser.evaluate(f"{src}.data.name")
    assert {"all", "do_syscall_64", "leak_site", "cache_fill", "__kmalloc_noprof"} <= set(names)
    labels = browser.evaluate(f"{src}.data.label")
    assert labels[names.index("all")] == "all"  # fitted to the frames by the page
    # search: frames holding the text turn purple, and their share is summed once
    search = f"{doc}.get_model_by_name('flame-search').value_input"
    found = f"{doc}.get_model_by_name('flame-root').children[0].children[2].text"
    browser.evaluate(f"{search} = 'SITE'")
    fill = browser.evaluate(f"{src}.data.fill")
    assert {n for n, f in zip(names, fill, strict=True) if f == "#b42dd6"} == {
        "leak_site", "rare_site"}
    assert browser.evaluate(found) == "matched: 8.11% of the leaked bytes"  # 38432 of 473632
    browser.evaluate(f"{search} = 'do_'")  # do_work lies under do_syscall_64: counted once
    assert browser.evaluate(found) == "matched: 100.00% of the leaked bytes"
    # click-zoom: selecting a frame zooms the x range to it
    i = names.index("leak_site")
    browser.evaluate(f"{src}.selected.indices = [{i}]")
    x0, x1 = browser.evaluate(f"{src}.data.x0[{i}]"), browser.evaluate(f"{src}.data.x1[{i}]")
    xr = browser.evaluate(f"[{doc}.get_model_by_name('flame').x_range.start, "
                          f"{doc}.get_model_by_name('flame').x_range.end]")
    assert xr == [x0, x1]
    assert browser.evaluate(f"{src}.data.label")[i] == "leak_site"
    browser.evaluate(f"{doc}.get_model_by_name('flame-search').value_input = ''")
    browser.evaluate(f"{doc}.get_model_by_name('flame').x_range.setv({{start: 0, end: {src}.data.x1[0]}})")
    browser.drain(0.3)
    shot = browser.screenshot(artifacts() / "report-synthetic.png")
    assert red_pixels(shot) > 500  # the growing chain's red, in the icicle and badges
    assert browser.log.errors() == []


@needs_browser
def test_diff_renders_in_chromium(browser, diff_page):
    load(browser, diff_page)
    rows = browser.evaluate("""[...document.querySelectorAll('table.changes tbody tr')].map(
        tr => [tr.querySelector('.head').textContent, tr.className,
               [...tr.querySelectorAll('.badge')].map(b => b.textContent)])""")
    assert rows[0] == ["leak_site", "mark", ["grown", "growing", "growing"]]
    assert ["new_site", "mark", ["new", "growing"]] in rows
    bars = browser.evaluate("Bokeh.documents[0].get_model_by_name('diff').y_range.factors")
    assert any("new_site [new]" in f for f in bars)
    browser.screenshot(artifacts() / "diff-synthetic.png")
    assert browser.log.errors() == []
