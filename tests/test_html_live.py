"""Issue 10's acceptance on real recordings (root): compiled programs whose allocation sites have
known growth shapes, paced by wall time so that the shapes hold on a loaded machine.

- tests/c/trend_sites.c under `record --malloc -g`: leak_step growing, cache_put (an LRU cache
  that fills, then replaces its entries) bounded, startup_burst bounded, in `analyze --format
  json` and in the HTML page as Chromium renders it.
- tests/c/udp_steady.c under kernel kmalloc/kmem_cache_alloc recording with -g: the chain of the
  UDP sockets it holds (sk_alloc / sk_prot_alloc, with the program in the user part) is growing,
  while its pipe churn (a ring of 16 pipes, the oldest closed as a new one opens) is bounded.
  (The user frames skip the program's function that called libc: libc's syscall wrappers keep
  no frame pointer, so the unwinder goes from them straight to main. Only hold_socket opens
  sockets and only churn_pipes opens pipes, so the kernel frames tell them apart.)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.browser import Browser
from tests.test_html_report import READY, artifacts, needs_browser
from tests.test_malloc_e2e import no_probes_left, our_probes  # noqa: F401 (autouse fixture)

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="live recording tests need root")

ROOT = Path(__file__).resolve().parents[1]
C_DIR = ROOT / "tests" / "c"
CLI = [sys.executable, "-m", "kmemleak_offline.cli"]
SECONDS = "5"
TICKS = 250  # 5 s of 20 ms ticks


def cli(*args, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *map(str, args)], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, check=False)


def compile_c(name: str, folder: Path) -> Path:
    exe = folder / name
    subprocess.run(["gcc", "-O1", "-fno-omit-frame-pointer", "-o", str(exe), str(C_DIR / f"{name}.c")],
                   check=True)
    return exe


def groups(rec: Path) -> list[dict]:
    res = cli("analyze", rec, "--format", "json")
    assert res.returncode == 0, res.stderr
    return [g for r in json.loads(res.stdout)["reports"] for g in r["groups"]]


def symbols(g: dict) -> list[str]:
    return [f["symbol"] or "" for f in g["stack"]]


def rendered_rows(html: Path, shot: str) -> list[tuple[str, str, str]]:
    """(headline, class, all frames) of each chain row, as Chromium renders the page."""
    with Browser(width=1400, height=1000) as b:
        b.open(html)
        b.wait_for(READY, timeout=30)
        b.drain(0.2)
        assert b.log.errors() == [] and b.log.remote_requests() == []
        rows = b.evaluate("""[...document.querySelectorAll('table.chains tbody tr[id]')].map(
            tr => [tr.querySelector('.head').textContent, tr.querySelector('.badge').textContent,
                   tr.querySelector('td.stack').textContent])""")
        b.screenshot(artifacts() / shot)
    return [tuple(r) for r in rows]


@pytest.fixture(scope="module")
def malloc_sites(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("trend-sites")
    exe = compile_c("trend_sites", folder)
    out = folder / "sites.parquet"
    res = cli("record", "--malloc", "-g", "-o", out, "--", exe, SECONDS, timeout=120)
    assert res.returncode == 0, res.stderr
    assert our_probes() == []
    return out


def test_malloc_leak_cache_burst_classes_in_json(malloc_sites):
    by_site = {}
    for g in groups(malloc_sites):
        site = next((s for s in symbols(g) if s in ("leak_step", "cache_put", "startup_burst")), None)
        if site:
            assert site not in by_site, f"{site}: one call chain expected"
            by_site[site] = g
    assert {s: (g["trend"]["class"], g["objects"]) for s, g in by_site.items()} == {
        "leak_step": ("growing", TICKS), "cache_put": ("bounded", 64),
        "startup_burst": ("bounded", 200)}
    # the leak's slope is its rate: 512 bytes per 20 ms tick
    assert by_site["leak_step"]["trend"]["slope_bytes_per_s"] == pytest.approx(25600, rel=0.15)


@needs_browser
def test_malloc_leak_cache_burst_classes_in_html(malloc_sites, tmp_path):
    out = tmp_path / "sites.html"
    res = cli("analyze", malloc_sites, "--format", "html", "-o", out)
    assert res.returncode == 0, res.stderr
    rows = {h: c for h, c, _ in rendered_rows(out, "report-live-malloc.png")}
    assert {k: rows.get(k) for k in ("leak_step", "cache_put", "startup_burst")} == {
        "leak_step": "growing", "cache_put": "bounded", "startup_burst": "bounded"}


@pytest.fixture(scope="module")
def udp(tmp_path_factory) -> tuple[Path, str]:
    folder = tmp_path_factory.mktemp("udp")
    exe = compile_c("udp_steady", folder)
    out = folder / "udp.parquet"
    res = cli("record", "--alloc", "kmem:kmalloc,kmem:kmem_cache_alloc",
              "--free", "kmem:kfree,kmem:kmem_cache_free", "-g", "-o", out, "--", exe, SECONDS,
              timeout=120)
    assert res.returncode == 0, res.stderr
    return out, str(exe)


SOCKET = {"sk_alloc", "sk_prot_alloc"}


def test_kernel_udp_sockets_held_are_growing_beside_bounded_churn(udp):
    rec, exe = udp
    ours = [g for g in groups(rec) if any(f["dso"] == exe for f in g["stack"])]
    sock = [g for g in ours if SOCKET & set(symbols(g))]
    assert sock, "no socket chain of the program"
    top = max(sock, key=lambda g: g["bytes"])  # the socket objects (the rest: slab metadata)
    assert (top["trend"]["class"], top["objects"]) == ("growing", TICKS)
    # the pipe objects: alloc_pipe_info called the allocator (not slab metadata such as the memcg
    # vector alloc_slab_obj_exts allocates now and then when a pipe needs a new slab page)
    pipes = [g for g in ours if symbols(g)[1] == "alloc_pipe_info"]
    assert pipes and all((g["trend"]["class"], g["objects"]) == ("bounded", 16) for g in pipes)


@needs_browser
def test_kernel_udp_sockets_growing_in_html(udp, tmp_path):
    rec, exe = udp
    out = tmp_path / "udp.html"
    res = cli("analyze", rec, "--format", "html", "-o", out)
    assert res.returncode == 0, res.stderr
    rows = [r for r in rendered_rows(out, "report-live-udp.png") if exe in r[2]]
    sock = [c for h, c, _ in rows if h in SOCKET]
    assert sock and sock[0] == "growing"  # the first (most bytes): the socket objects
    pipes = [c for h, c, _ in rows if h == "alloc_pipe_info"]
    assert pipes and set(pipes) == {"bounded"}
