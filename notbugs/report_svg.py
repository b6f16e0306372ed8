"""The report's figures as small SVG functions (no matplotlib: the library stays light): grouped bars (Figure 2),
a scatter plot (Figure 3) and the training curves as small multiples."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from notbugs.report_blocks import esc

SERIES_COLOURS = ("#1f5fa8", "#9fc3e9", "#c4501b", "#f4b48f")  # clean ours/paper, robust ours/paper


def _svg(width: int, height: int, label: str, body: list[str]) -> str:
    head = (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" role="img" aria-label="{esc(label)}" '
            f'font-family="Helvetica, Arial, sans-serif" font-size="12">')
    # a white background so the standalone .svg files read well in any viewer
    return "\n".join([head, f'<rect width="{width}" height="{height}" fill="#fff"/>', *body, "</svg>"])


def _text(x: float, y: float, text, anchor: str = "middle", size: int = 12, fill: str = "#222",
          extra: str = "") -> str:
    return (f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}" font-size="{size}" fill="{fill}"'
            f'{extra}>{esc(text)}</text>')


def _line(x1: float, y1: float, x2: float, y2: float, stroke: str = "#ccc") -> str:
    return f'<line x1="{x1:.1f}" y1="{y1:.1f}" x2="{x2:.1f}" y2="{y2:.1f}" stroke="{stroke}"/>'


def grouped_bars_svg(groups: list[str], series: list[tuple[str, str, list]], title: str) -> str:
    """Grouped vertical bars on a 0-100 (percent) axis; a missing value is written as 'n/a'."""
    width, height, left, right, top, bottom = 780, 360, 50, 12, 62, 44
    pw, ph = width - left - right, height - top - bottom
    body = [_text(width / 2, 20, title, size=14, extra=' font-weight="bold"')]
    for tick in range(0, 101, 20):
        y = top + ph - ph * tick / 100
        body += [_line(left, y, left + pw, y), _text(left - 6, y + 4, tick, anchor="end", size=11)]
    body.append(_text(14, top + ph / 2, "accuracy (%)", extra=f' transform="rotate(-90 14 {top + ph / 2:.1f})"'))
    group_w = pw / len(groups)
    bar_w = group_w * 0.84 / len(series)
    for g, group in enumerate(groups):
        x0 = left + g * group_w + group_w * 0.08
        for s, (_, colour, values) in enumerate(series):
            value, x = values[g], x0 + s * bar_w
            if value is None:
                body.append(_text(x + bar_w / 2, top + ph - 4, "n/a", size=10, fill="#888"))
                continue
            h = ph * min(max(value, 0.0), 100.0) / 100
            body.append(f'<rect x="{x + 1:.1f}" y="{top + ph - h:.1f}" width="{bar_w - 2:.1f}" height="{h:.1f}" '
                        f'fill="{colour}" stroke="#555" stroke-width="0.5"/>')
            body.append(_text(x + bar_w / 2, top + ph - h - 4, f"{value:.1f}", size=10))
        body.append(_text(left + (g + 0.5) * group_w, top + ph + 20, group))
    body.append(_line(left, top + ph, left + pw, top + ph, stroke="#333"))
    for s, (name, colour, _) in enumerate(series):
        x = left + s * 180
        body += [f'<rect x="{x}" y="34" width="12" height="12" fill="{colour}" stroke="#555" stroke-width="0.5"/>',
                 _text(x + 17, 44, name, anchor="start")]
    return _svg(width, height, title, body)


def _axis_range(values: list[float]) -> tuple[float, float, float]:
    """A 0-100 sub-range around the values, on a 5 or 10 grid: (low, high, tick step)."""
    lo = max(0.0, math.floor((min(values) - 5) / 10) * 10)
    hi = min(100.0, math.ceil((max(values) + 5) / 10) * 10)
    if hi - lo < 20:
        lo, hi = max(0.0, hi - 20), max(hi, 20.0)
    return lo, hi, 10.0 if hi - lo > 40 else 5.0


def scatter_svg(points: list[tuple[str, float, float]], xlabel: str, ylabel: str, title: str,
                y_chance: float | None = None) -> str:
    """y_chance: a dashed horizontal line at that value (the axis is stretched to show it)."""
    width, height, left, right, top, bottom = 560, 400, 60, 30, 40, 50
    pw, ph = width - left - right, height - top - bottom
    xlo, xhi, xstep = _axis_range([p[1] for p in points])
    ylo, yhi, ystep = _axis_range([p[2] for p in points] + ([] if y_chance is None else [y_chance]))

    def sx(v):
        return left + pw * (v - xlo) / (xhi - xlo)

    def sy(v):
        return top + ph - ph * (v - ylo) / (yhi - ylo)

    body = [_text(width / 2, 22, title, size=14, extra=' font-weight="bold"')]
    for tick in np.arange(xlo, xhi + 1e-9, xstep):
        body += [_line(sx(tick), top, sx(tick), top + ph), _text(sx(tick), top + ph + 16, f"{tick:.0f}", size=11)]
    for tick in np.arange(ylo, yhi + 1e-9, ystep):
        body += [_line(left, sy(tick), left + pw, sy(tick)),
                 _text(left - 6, sy(tick) + 4, f"{tick:.0f}", anchor="end", size=11)]
    body.append(f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#333"/>')
    if y_chance is not None:
        body.append(f'<line x1="{left}" y1="{sy(y_chance):.1f}" x2="{left + pw}" y2="{sy(y_chance):.1f}" '
                    f'stroke="#c4501b" stroke-dasharray="6 4"/>')
        body.append(_text(left + pw - 4, sy(y_chance) - 4, "chance", anchor="end", size=11, fill="#c4501b"))
    body.append(_text(left + pw / 2, height - 10, xlabel))
    body.append(_text(16, top + ph / 2, ylabel, extra=f' transform="rotate(-90 16 {top + ph / 2:.1f})"'))
    for label, x, y in points:
        body.append(f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="5" fill="{SERIES_COLOURS[0]}"/>')
        # labels go left of points in the right third so they stay inside the plot
        right_side = sx(x) < left + pw * 0.66
        body.append(_text(sx(x) + (8 if right_side else -8), sy(y) - 6, f"{label} ({x:.1f}, {y:.1f})",
                          anchor="start" if right_side else "end", size=11))
    return _svg(width, height, title, body)


def _line_panel(x: float, y: float, w: float, h: float, xs: list[int], ys: list[float],
                ylo: float, yhi: float, title: str, colour: str, yfmt: str) -> list[str]:
    """One small line chart with its top-left corner at (x, y)."""
    xlo, xhi = min(xs), max(max(xs), min(xs) + 1)

    def sx(v):
        return x + w * (v - xlo) / (xhi - xlo)

    def sy(v):
        return y + h - h * (v - ylo) / (yhi - ylo)

    body = [f'<rect x="{x:.1f}" y="{y:.1f}" width="{w:.1f}" height="{h:.1f}" fill="none" stroke="#999"/>',
            _text(x + w / 2, y - 5, title, size=11)]
    for tick in (ylo, (ylo + yhi) / 2, yhi):
        body += [_line(x, sy(tick), x + w, sy(tick), stroke="#eee"),
                 _text(x - 4, sy(tick) + 4, format(tick, yfmt), anchor="end", size=10)]
    body += [_text(sx(xlo), y + h + 13, xlo, size=10), _text(sx(xhi), y + h + 13, xhi, size=10),
             _text(x + w / 2, y + h + 13, "epoch", size=10, fill="#666")]
    path = " ".join(f"{sx(a):.1f},{sy(b):.1f}" for a, b in zip(xs, ys))
    body.append(f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="2"/>')
    if len(xs) == 1:
        body.append(f'<circle cx="{sx(xs[0]):.1f}" cy="{sy(ys[0]):.1f}" r="3" fill="{colour}"/>')
    return body


def training_curves_svg(curves: dict[str, pd.DataFrame]) -> str:
    """Small multiples: one row per model, training loss on the left, training accuracy on the right."""
    width, row_h, panel_w, panel_h = 780, 150, 320, 95
    body = []
    for r, (model_id, rows) in enumerate(curves.items()):
        top = r * row_h + 22
        epochs = rows["epoch"].astype(int).tolist()
        loss = rows["train_loss"].astype(float).tolist()
        acc = (100.0 * rows["train_acc"].astype(float)).tolist()
        final = f"{model_id}: {len(epochs)} epochs, final train acc {acc[-1]:.1f}%, {rows['wall_s'].sum():.0f} s"
        body.append(_text(10, top, final, anchor="start", size=12, extra=' font-weight="bold"'))
        loss_hi = max(max(loss) * 1.1, 1e-3) if all(map(math.isfinite, loss)) else 1.0
        body += _line_panel(60, top + 22, panel_w, panel_h, epochs, loss, 0.0, loss_hi, "training loss",
                            SERIES_COLOURS[2], ".2f")
        body += _line_panel(60 + panel_w + 70, top + 22, panel_w, panel_h, epochs, acc, 0.0, 100.0,
                            "training accuracy (%)", SERIES_COLOURS[0], ".0f")
    return _svg(width, len(curves) * row_h + 10, "training curves", body)
