"""The HTML page shared by `analyze --format html` and `diff --format html` (docs/html-report.md).

One self-contained file: our own markup and style (plain HTML tables, sparklines as inline SVG:
readable before any script runs) around bokeh plots whose JavaScript is inlined from bokeh's
wheel (INLINE resources, only the bundles the plots use). Nothing is fetched from elsewhere.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence

import numpy as np

from .. import __version__

CLASS_COLOR = {"growing": "#d62728", "bounded": "#2a9d3c", "insufficient": "#8c8c8c",
               "none": "#8c8c8c"}
SPARK_W, SPARK_H, SPARK_POINTS = 140, 30, 70


def esc(s: object) -> str:
    return html.escape(str(s), quote=True)


def human_bytes(n: float) -> str:
    """1536 -> '1.5 KiB' (binary units, as `info`)."""
    sign = "-" if n < 0 else ""
    n = abs(float(n))
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{sign}{n:.0f} {unit}" if unit == "B" else f"{sign}{n:.1f} {unit}"
        n /= 1024
    return f"{sign}{n:.1f} TiB"  # pragma: no cover


def num(n: int) -> str:
    return f"{n:,}"


def bytes_cell(n: int | None) -> str:
    """A byte count: readable, the exact value on hover."""
    if n is None:
        return '<td class="n">-</td>'
    return f'<td class="n" title="{n:,} bytes">{human_bytes(n)}</td>'


def slope_text(slope: float) -> str:
    return f"{'+' if slope >= 0 else '-'}{human_bytes(abs(slope))}/s"


def badge(cls: str, label: str | None = None) -> str:
    return f'<span class="badge {esc(cls)}">{esc(label or cls)}</span>'


def sparkline(y: np.ndarray | None, color: str, title: str = "") -> str:
    """Inline SVG of a series (its own scale: the shape matters), the maximum of each of
    SPARK_POINTS buckets so that short peaks survive."""
    if y is None or len(y) == 0:
        return '<span class="muted">-</span>'
    y = np.asarray(y, np.float64)
    if len(y) > SPARK_POINTS:
        edges = np.linspace(0, len(y), SPARK_POINTS + 1).astype(np.int64)
        y = np.maximum.reduceat(y, edges[:-1])
    top = max(float(y.max()), 1.0)
    xs = np.linspace(1, SPARK_W - 1, len(y)) if len(y) > 1 else np.array([SPARK_W / 2])
    ys = SPARK_H - 2 - (np.clip(y, 0, None) / top) * (SPARK_H - 4)
    pts = " ".join(f"{x:.1f},{v:.1f}" for x, v in zip(xs, ys, strict=True))
    area = f"{xs[0]:.1f},{SPARK_H - 1} {pts} {xs[-1]:.1f},{SPARK_H - 1}"
    return (f'<svg class="spark" width="{SPARK_W}" height="{SPARK_H}" role="img">'
            f"<title>{esc(title)}</title>"
            f'<polygon points="{area}" fill="{color}" fill-opacity="0.18"/>'
            f'<polyline points="{pts}" fill="none" stroke="{color}" stroke-width="1.5"/></svg>')


def share_bar(frac: float) -> str:
    """A horizontal bar for a share (0..1), in CSS only."""
    return (f'<div class="bar"><div style="width:{max(0.0, min(1.0, frac)) * 100:.1f}%"></div>'
            "</div>")


def stack_cell(headline: str, lines: Sequence[str], shown: int = 3) -> str:
    """The call chain: its headline, the first frames, all of them on demand (<details>)."""
    head = f'<div class="head">{esc(headline)}</div>'
    if not lines:
        return f'<td class="stack">{head}</td>'
    first = "\n".join(esc(x) for x in lines[:shown])
    if len(lines) <= shown:
        return f'<td class="stack">{head}<pre>{first}</pre></td>'
    rest = "\n".join(esc(x) for x in lines[shown:])
    return (f'<td class="stack">{head}<details><summary><pre class="inline">{first}</pre>'
            f'<span class="more">+{len(lines) - shown} frames</span></summary>'
            f"<pre>{rest}</pre></details></td>")


def table(head: Iterable[str], rows: Iterable[str], cls: str = "") -> str:
    ths = "".join(f"<th>{h}</th>" for h in head)
    return (f'<table class="{cls}"><thead><tr>{ths}</tr></thead><tbody>'
            + "\n".join(rows) + "</tbody></table>")


def section(sid: str, title: str, body: str, note: str = "") -> str:
    note_html = f'<p class="note">{note}</p>' if note else ""
    return f'<section id="{sid}"><h2>{esc(title)}</h2>{note_html}{body}</section>'


def facts(items: Sequence[tuple[str, str]]) -> str:
    """A grid of label/value pairs (values are HTML)."""
    return '<dl class="facts">' + "".join(f"<dt>{esc(k)}</dt><dd>{v}</dd>" for k, v in items) \
        + "</dl>"


STYLE = """
:root{--fg:#1d2330;--muted:#6b7280;--line:#e3e6ec;--bg:#f6f7f9;--card:#fff;--accent:#2f5fb3}
*{box-sizing:border-box}
body{margin:0;background:var(--bg);color:var(--fg);
 font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif}
header{background:#1f2a3d;color:#fff;padding:14px 28px}
header h1{margin:0;font-size:20px;font-weight:600}
header .sub{color:#c9d2e3;font-size:13px;margin-top:2px;word-break:break-all}
nav{padding:6px 28px;background:#28354c;font-size:13px}
nav a{color:#dfe6f3;margin-right:18px;text-decoration:none}
main{max-width:1500px;margin:0 auto;padding:8px 28px 40px}
section{background:var(--card);border:1px solid var(--line);border-radius:8px;margin:18px 0;
 padding:14px 18px}
h2{font-size:16px;margin:0 0 8px}
.note{color:var(--muted);margin:0 0 10px;font-size:13px}
.muted{color:var(--muted)}
dl.facts{display:grid;grid-template-columns:max-content 1fr max-content 1fr;gap:4px 18px;margin:0}
dl.facts dt{color:var(--muted)}
dl.facts dd{margin:0;font-variant-numeric:tabular-nums;word-break:break-all}
.cards{display:flex;gap:12px;flex-wrap:wrap;margin:12px 0 4px}
.card{border:1px solid var(--line);border-radius:6px;padding:8px 14px;min-width:150px}
.card .v{font-size:20px;font-weight:600;font-variant-numeric:tabular-nums}
.card .k{color:var(--muted);font-size:12px}
.card.growing{border-color:#f1b5b5;background:#fff5f5}
.card.bounded{border-color:#b9dfc0;background:#f5fbf6}
table{border-collapse:collapse;width:100%;font-variant-numeric:tabular-nums}
th{text-align:left;font-weight:600;color:var(--muted);font-size:12px;border-bottom:2px solid var(--line);
 padding:6px 8px;white-space:nowrap}
td{border-bottom:1px solid var(--line);padding:6px 8px;vertical-align:top}
td.n{text-align:right;white-space:nowrap}
tr.mark td{background:#fff7f2}
tr.mark td:first-child{box-shadow:inset 3px 0 0 #e8590c}
td.stack{font-size:12px;max-width:640px}
td.stack .head{font-weight:600;font-size:13px;font-family:ui-monospace,"DejaVu Sans Mono",Menlo,monospace}
pre{margin:2px 0 0;font:12px/1.35 ui-monospace,"DejaVu Sans Mono",Menlo,monospace;white-space:pre-wrap;
 word-break:break-all;color:#3d4556}
pre.inline{display:inline;margin:0}
details summary{cursor:pointer;list-style-position:outside}
.more{color:var(--accent);font-size:11px;margin-left:6px}
.badge{display:inline-block;padding:1px 8px;border-radius:10px;font-size:12px;font-weight:600;
 color:#fff;background:#8c8c8c;white-space:nowrap}
.badge.growing,.badge.new{background:#d62728}.badge.bounded{background:#2a9d3c}
.badge.grown{background:#e8590c}.badge.shrunk{background:#2a9d3c}.badge.gone{background:#6b7280}
.badge.same{background:#adb5bd}
.bar{background:#eef0f4;height:10px;border-radius:5px;min-width:120px}
.bar div{background:var(--accent);height:10px;border-radius:5px}
svg.spark{display:block}
ul.suspects{margin:6px 0 0;padding-left:20px}
footer{color:var(--muted);font-size:12px;text-align:center;padding:10px}
"""


def bokeh_parts(roots: dict[str, object]) -> tuple[str, str, dict[str, str]]:
    """(scripts for <head>: bokeh's own JS, only the bundles these plots need, inlined;
    the script that builds the plots; one <div> per root name)."""
    from bokeh.embed import components
    from bokeh.embed.bundle import bundle_for_objs_and_resources
    from bokeh.resources import INLINE

    if not roots:
        return "", "", {}
    libs = bundle_for_objs_and_resources(list(roots.values()), INLINE).scripts()
    script, divs = components(roots)
    return libs, script, divs


def page(title: str, subtitle: str, nav: Sequence[tuple[str, str]], body: str,
         roots: dict[str, object] | None = None) -> str:
    """The whole document. `body` may hold `{{plot:NAME}}` placeholders for bokeh roots."""
    libs, script, divs = bokeh_parts(roots or {})
    for name, div in divs.items():
        body = body.replace(f"{{{{plot:{name}}}}}", div)
    links = "".join(f'<a href="#{esc(i)}">{esc(t)}</a>' for i, t in nav)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{esc(title)}</title><style>{STYLE}</style>{libs}</head>\n<body>"
            f'<header><h1>{esc(title)}</h1><div class="sub">{esc(subtitle)}</div></header>'
            f"<nav>{links}</nav><main>{body}</main>"
            f"<footer>kmemleak-offline {esc(__version__)}: one self-contained file, "
            f"no network needed</footer>{script}</body></html>\n")
