"""The bokeh plots of the HTML reports: outstanding bytes over time, the icicle with zoom and
search, and a diff's bytes per chain in both runs. Bokeh (its JavaScript ships in its wheel and
is inlined) draws them; our JavaScript is only the few CustomJS lines bokeh expects for
behaviour it has no model for (search, click-to-zoom, labels that fit their frames).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .icicle import Icicle

FONT = "system-ui, -apple-system, Segoe UI, Roboto, Helvetica Neue, Arial, sans-serif"
PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2",
           "#17becf", "#bcbd22", "#7f7f7f")
BYTES_TICKS = """
const u = ["B", "KiB", "MiB", "GiB", "TiB"]; let v = Math.abs(tick), i = 0;
while (v >= 1024 && i < u.length - 1) { v /= 1024; i++; }
return (tick < 0 ? "-" : "") + (i ? v.toFixed(v < 10 ? 1 : 0) : v.toFixed(0)) + " " + u[i];
"""


def _style(p) -> None:
    p.toolbar.logo = None
    p.background_fill_color = "#ffffff"
    p.border_fill_color = "#ffffff"
    p.outline_line_color = None
    for ax in (*p.xaxis, *p.yaxis):
        ax.major_label_text_font = FONT
        ax.axis_label_text_font = FONT
        ax.axis_label_text_font_style = "normal"
        ax.axis_label_text_color = "#6b7280"
    p.grid.grid_line_color = "#eef0f4"


def time_plot(lines: Sequence[tuple[str, str, np.ndarray, np.ndarray]],
              lost: Sequence[tuple[float, float]] = (), resets: Sequence[float] = (),
              duration_s: float | None = None):
    """Outstanding bytes of some chains over time: (label, class, t in s, bytes) each; grey
    bands where events were lost, dashed lines at early reports."""
    from bokeh.models import (
        AdaptiveTicker,
        BoxAnnotation,
        ColumnDataSource,
        CustomJSTickFormatter,
        HoverTool,
        Legend,
        LegendItem,
        Span,
    )
    from bokeh.plotting import figure

    p = figure(height=380, sizing_mode="stretch_width", name="time",
               tools="xpan,xwheel_zoom,box_zoom,reset,save", active_scroll=None,
               x_axis_label="seconds since the recording started",
               y_axis_label="outstanding bytes")
    _style(p)
    p.yaxis.formatter = CustomJSTickFormatter(code=BYTES_TICKS)
    p.yaxis.ticker = AdaptiveTicker(base=2, mantissas=[1, 1.5], min_interval=1,
                                    desired_num_ticks=6)  # round binary sizes: 16 KiB, 24 KiB...
    items = []
    renderers = []
    for i, (label, cls, t, y) in enumerate(lines):
        src = ColumnDataSource({"t": np.asarray(t, np.float64), "y": np.asarray(y, np.float64),
                                "label": [label] * len(t), "cls": [cls] * len(t)})
        r = p.line("t", "y", source=src, line_width=2.2, color=PALETTE[i % len(PALETTE)],
                   line_dash="solid" if cls == "growing" else "dashed" if cls == "bounded"
                   else "dotted")
        renderers.append(r)
        items.append(LegendItem(label=f"{label}  ({cls})", renderers=[r]))
    for a, b in lost:
        p.add_layout(BoxAnnotation(left=a, right=b, fill_color="#9aa0aa", fill_alpha=0.25,
                                   line_alpha=0))
    for x in resets:
        p.add_layout(Span(location=x, dimension="height", line_color="#6b7280", line_dash="dashed"))
    if duration_s:
        p.x_range.start, p.x_range.end = 0, duration_s
    p.add_tools(HoverTool(renderers=renderers, mode="mouse",
                          tooltips=[("chain", "@label"), ("class", "@cls"),
                                    ("time", "@t{0.000} s"), ("bytes", "@y{0,0}")]))
    legend = Legend(items=items, location="top_left", click_policy="hide",
                    label_text_font=FONT, label_text_font_size="12px", spacing=2,
                    background_fill_alpha=0.85)
    p.add_layout(legend, "right")
    return p


# Search: highlight frames whose name holds the text, and sum the bytes under them (a frame under
# a matching frame is not counted twice).
SEARCH_JS = """
const q = input.value_input.trim().toLowerCase(), d = src.data, n = d.name.length;
const hit = new Array(n).fill(false), fill = new Array(n);
let tot = 0;
for (let i = 0; i < n; i++) {
  hit[i] = q.length > 0 && d.name[i].toLowerCase().includes(q);
  fill[i] = hit[i] ? "#b42dd6" : d.color[i];
  if (!hit[i]) continue;
  let p = d.parent[i], top = true;
  while (p >= 0) { if (hit[p]) { top = false; break; } p = d.parent[p]; }
  if (top) tot += d.weight[i];
}
src.data = Object.assign({}, d, {fill: fill});
out.text = q ? "matched: " + (100 * tot / total).toFixed(2) + "% of the " + what : "";
"""
# Click a frame: zoom to it (the bokeh reset tool or the button zooms back out).
ZOOM_JS = """
const i = src.selected.indices[0];
if (i === undefined) return;
xr.setv({start: src.data.x0[i], end: src.data.x1[i]});
src.selected.indices = [];
"""
# Labels: each frame's name cut to what fits its visible width (about 7 px per character).
LABEL_JS = """
const d = src.data, s = xr.start, e = xr.end, w = fig.inner_width || 1000, k = w / (e - s);
const n = d.name.length, label = new Array(n), lx = new Array(n);
for (let i = 0; i < n; i++) {
  const a = Math.max(d.x0[i], s), b = Math.min(d.x1[i], e), c = Math.floor(((b - a) * k - 6) / 7);
  const nm = d.name[i];
  label[i] = c < 4 ? "" : nm.length <= c ? nm : nm.slice(0, c - 2) + "..";
  lx[i] = a;
}
src.data = Object.assign({}, d, {label: label, lx: lx});
"""


def icicle_plot(ic: Icicle, what: str = "leaked bytes", unit: str = "bytes"):
    """The icicle with a search box and a zoom reset; click a frame to zoom into it."""
    from bokeh.core.properties import value
    from bokeh.layouts import column, row
    from bokeh.models import (
        Button,
        ColumnDataSource,
        CustomJS,
        Div,
        HoverTool,
        Range1d,
        TapTool,
        TextInput,
    )
    from bokeh.plotting import figure

    total = max(ic.total, 1.0)
    colors = ic.colors()
    share = np.where(ic.weight > 0, 100 * ic.grow / np.where(ic.weight > 0, ic.weight, 1), 0)
    src = ColumnDataSource({
        "x0": ic.x0, "x1": ic.x1, "top": ic.depth.astype(np.float64),
        "bottom": ic.depth + 1.0, "mid": ic.depth + 0.5, "name": ic.name,
        "dso": [d or "-" for d in ic.dso], "weight": ic.weight, "pct": 100 * ic.weight / total,
        "grow": share, "parent": ic.parent, "color": colors, "fill": list(colors),
        "label": [""] * len(ic.name), "lx": ic.x0.copy(),
    }, name="flame-source")
    height = 24 * (ic.max_depth + 1) + 40
    xr = Range1d(0, total, bounds=(0, total), min_interval=total * 1e-7)
    p = figure(height=height, sizing_mode="stretch_width", name="flame", x_range=xr,
               y_range=Range1d(ic.max_depth + 1, 0), tools="xpan,xwheel_zoom,reset,save",
               active_scroll="xwheel_zoom", min_border_left=4, min_border_right=4)
    _style(p)
    p.axis.visible = False
    p.grid.visible = False
    quads = p.quad(left="x0", right="x1", top="top", bottom="bottom", source=src,
                   fill_color="fill", line_color="#ffffff", line_width=1,
                   hover_fill_color="#7ea6e0", nonselection_fill_alpha=1.0,
                   selection_fill_alpha=1.0, nonselection_line_alpha=1.0)
    p.text(x="lx", y="mid", text="label", source=src, x_offset=4, text_baseline="middle",
           text_font_size="11px", text_font=value(FONT), text_color="#1d2330")
    p.add_tools(HoverTool(renderers=[quads], tooltips=[
        ("frame", "@name"), ("dso", "@dso"), (unit, "@weight{0,0}"),
        ("share", "@pct{0.00}%"), ("from growing chains", "@grow{0}%")]))
    p.add_tools(TapTool(renderers=[quads]))
    labels = CustomJS(args={"src": src, "xr": xr, "fig": p}, code=LABEL_JS)
    xr.js_on_change("start", labels)
    xr.js_on_change("end", labels)
    p.js_on_change("inner_width", labels)
    src.selected.js_on_change("indices", CustomJS(args={"src": src, "xr": xr}, code=ZOOM_JS))
    found = Div(text="", styles={"color": "#b42dd6", "font-weight": "600", "padding-top": "6px"})
    search = TextInput(placeholder="search frames (part of a name)", width=320, name="flame-search")
    search.js_on_change("value_input", CustomJS(
        args={"src": src, "input": search, "out": found, "total": total, "what": what},
        code=SEARCH_JS))
    reset = Button(label="reset zoom", width=110)
    reset.js_on_click(CustomJS(args={"xr": xr, "total": total},
                               code="xr.setv({start: 0, end: total});"))
    return column(row(search, reset, found), p, sizing_mode="stretch_width", name="flame-root")


def diff_bars(labels: Sequence[str], base: Sequence[float], new: Sequence[float],
              status: Sequence[str], base_name: str, new_name: str):
    """Leaked bytes per chain in both runs, one pair of bars per chain (largest changes first)."""
    from bokeh.models import (
        AdaptiveTicker,
        ColumnDataSource,
        CustomJSTickFormatter,
        FactorRange,
        HoverTool,
    )
    from bokeh.plotting import figure
    from bokeh.transform import dodge

    ys = [f"{i + 1}. {lab}" for i, lab in enumerate(labels)]
    src = ColumnDataSource({"y": ys, "base": list(base), "new": list(new), "status": list(status)})
    p = figure(height=max(160, 26 * len(ys) + 70), sizing_mode="stretch_width", name="diff",
               y_range=FactorRange(*reversed(ys)), tools="xpan,xwheel_zoom,reset,save",
               x_axis_label="leaked bytes")
    _style(p)
    p.xaxis.formatter = CustomJSTickFormatter(code=BYTES_TICKS)
    p.xaxis.ticker = AdaptiveTicker(base=2, mantissas=[1, 1.5], min_interval=1)
    b = p.hbar(y=dodge("y", 0.18, range=p.y_range), right="base", height=0.34, source=src,
               color="#9aa7bd", legend_label=f"base: {base_name}")
    n = p.hbar(y=dodge("y", -0.18, range=p.y_range), right="new", height=0.34, source=src,
               color="#e8590c", legend_label=f"new: {new_name}")
    p.add_tools(HoverTool(renderers=[b, n], tooltips=[("chain", "@y"), ("status", "@status"),
                                                       ("base", "@base{0,0} bytes"),
                                                       ("new", "@new{0,0} bytes")]))
    p.legend.location = "bottom_right"
    p.legend.label_text_font = FONT
    p.yaxis.major_label_text_font_size = "12px"
    p.ygrid.grid_line_color = None
    return p
