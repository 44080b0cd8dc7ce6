"""The protocol report's plot: real-val mIoU against N, one polyline per method (PIL only; moved
out of report.py to keep that module short)."""

from __future__ import annotations

import numpy as np


def plot_miou_vs_n(summary: dict, path: str, size=(640, 400)) -> None:
    """mIoU (%) against N, one coloured polyline per method with its interval as error bars (PIL;
    the oracle as a dashed level with its interval as a band edge)."""
    from PIL import Image, ImageDraw  # pylint: disable=import-outside-toplevel

    rows = [r for r in summary["rows"] if np.isfinite(r["miou"][0])]
    W, H, m, legend_w = size[0], size[1], 44, 150
    img = Image.new("RGB", (W, H), "white")
    d = ImageDraw.Draw(img)
    curves = {}
    ci = lambda r: (
        (r["miou_ci"]["lo"], r["miou_ci"]["hi"])
        if r.get("miou_ci") and np.isfinite(r["miou_ci"]["lo"])
        else (r["miou"][0], r["miou"][0])
    )
    for r in rows:
        if r["method"] != "oracle":
            curves.setdefault(r["method"], []).append(
                (r["n"], 100 * r["miou"][0], *(100 * v for v in ci(r)))
            )
    oracle = [
        (100 * r["miou"][0], *(100 * v for v in ci(r))) for r in rows if r["method"] == "oracle"
    ]
    ns = sorted({p[0] for c in curves.values() for p in c}) or [0]
    ys = [v for c in curves.values() for p in c for v in p[1:]] + [
        v for o in oracle for v in o
    ] or [0.0]
    y0, y1 = min(ys) - 2, max(ys) + 2
    x_right = W - m - legend_w
    # Methods at one N are spread sideways a little so their error bars do not hide each other.
    offs = {name: (i - (len(curves) - 1) / 2) * 3 for i, name in enumerate(sorted(curves))}
    px = lambda n, name=None: (
        m + (x_right - m) * (ns.index(n) / max(len(ns) - 1, 1)) + (offs.get(name, 0) if name else 0)
    )
    py = lambda y: H - m - (H - 2 * m) * (y - y0) / max(y1 - y0, 1e-6)
    d.line([(m, H - m), (x_right, H - m)], fill="black")
    d.line([(m, m), (m, H - m)], fill="black")
    for n in ns:
        d.text((px(n) - 4, H - m + 4), str(n), fill="black")
    for t in np.linspace(y0, y1, 5):
        d.text((4, py(t) - 5), f"{t:.0f}", fill="black")
        d.line([(m - 3, py(t)), (m, py(t))], fill="black")
    d.text((m + (x_right - m) // 2 - 40, H - 16), "N real labels", fill="black")
    d.text((m, 6), "real-val mIoU (%), mean and 95% interval", fill="black")
    palette = [
        (31, 119, 180),
        (255, 127, 14),
        (44, 160, 44),
        (214, 39, 40),
        (148, 103, 189),
        (140, 86, 75),
        (227, 119, 194),
        (127, 127, 127),
        (188, 189, 34),
        (23, 190, 207),
    ]
    for i, (name, pts) in enumerate(sorted(curves.items())):
        col = palette[i % len(palette)]
        pts = sorted(pts)
        xy = [(px(p[0], name), py(p[1])) for p in pts]
        if len(xy) > 1:
            d.line(xy, fill=col, width=2)
        for (x, y), p in zip(xy, pts):
            d.line([(x, py(p[2])), (x, py(p[3]))], fill=col, width=1)
            d.line([(x - 3, py(p[2])), (x + 3, py(p[2]))], fill=col)
            d.line([(x - 3, py(p[3])), (x + 3, py(p[3]))], fill=col)
            d.ellipse([x - 3, y - 3, x + 3, y + 3], fill=col)
        d.text((x_right + 10, m + 14 * i), name, fill=col)
    for y, lo, hi in oracle:
        for x in range(m, int(x_right), 8):
            d.line([(x, py(y)), (x + 4, py(y))], fill="black")
            d.line([(x, py(lo)), (x + 1, py(lo))], fill="gray")
            d.line([(x, py(hi)), (x + 1, py(hi))], fill="gray")
    if oracle:  # in the legend column, below the methods (a label at the line would hide others)
        d.text((x_right + 10, m + 14 * len(curves)), "- - oracle (all labels)", fill="black")
    img.save(path, format="PNG")
