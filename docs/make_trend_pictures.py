"""Draws docs/img/trend-*.svg: typical shapes of a chain's outstanding bytes, each labelled with
the class trend.classify gives it (so the pictures cannot drift from the rule). Run from the
repository root: python3 docs/make_trend_pictures.py"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from kmemleak_offline.trend import classify

T = np.linspace(0, 1, 200)
SHAPES = {
    "leak": ("steady leak", 1000 * T + np.random.default_rng(1).normal(0, 40, 200)),
    "steps": ("leak in bursts", 100 * np.floor(10 * T)),
    "cache": ("LRU cache: fills, then replaces", np.minimum(1, 4 * T) * 1000
              + np.random.default_rng(2).normal(0, 30, 200)),
    "burst": ("start-up burst, never freed", np.where(T < 0.03, 1000 * T / 0.03, 1000)),
    "pool": ("pool: grows and shrinks", 500 + 400 * np.sin(12 * T)),
    "late": ("leak that starts late", np.where(T < 0.6, 50, 50 + 2000 * (T - 0.6))),
}
W, H, PAD = 320, 120, 10


def svg(title: str, y: np.ndarray, cls: str, slope: float, conf: float) -> str:
    lo, hi = min(0.0, y.min()), y.max() or 1.0
    xs = PAD + (W - 2 * PAD) * T
    ys = H - PAD - (H - 3 * PAD) * (y - lo) / (hi - lo)
    pts = " ".join(f"{x:.1f},{v:.1f}" for x, v in zip(xs, ys, strict=True))
    colour = {"growing": "#c0392b", "bounded": "#2471a3"}.get(cls, "#7f8c8d")
    half = f'<line x1="{W / 2}" y1="{2 * PAD}" x2="{W / 2}" y2="{H - PAD}" stroke="#ccc" stroke-dasharray="3"/>'
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" '
            f'font-size="11"><rect width="{W}" height="{H}" fill="white" stroke="#ddd"/>{half}'
            f'<text x="{PAD}" y="{PAD + 5}">{title}: <tspan fill="{colour}" font-weight="bold">{cls}</tspan>'
            f' (slope {slope:+.0f}/s, confidence {conf:.2f})</text>'
            f'<polyline fill="none" stroke="{colour}" stroke-width="1.5" points="{pts}"/></svg>\n')


def main() -> None:
    out = Path(__file__).resolve().parent / "img"
    out.mkdir(exist_ok=True)
    t_s = np.linspace(0.3, 60, 200)  # a 60 s recording
    for name, (title, y) in SHAPES.items():
        cls, slope, conf = classify(np.atleast_2d(y), t_s, np.array([1000]))
        (out / f"trend-{name}.svg").write_text(svg(title, y, cls[0], float(slope[0]), float(conf[0])))


if __name__ == "__main__":
    main()
