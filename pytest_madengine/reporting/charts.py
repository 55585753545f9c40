"""Line charts as static SVG, written here: no JavaScript, no fonts or files to fetch,
so a report opens offline and renders the same in any browser or mail client.

Native `<title>` elements give each point a hover text without any script.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from xml.sax.saxutils import escape, quoteattr

# Distinct on white and for the common colour-vision deficiencies (Okabe-Ito).
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#D55E00", "#56B4E9", "#F0E442",
           "#000000")  # fmt: skip


@dataclass(frozen=True)
class Point:
    x: int  # the run: 1 for the first result of the series
    y: float
    label: str = ""  # the hover text's detail (build number, file)
    # A point standing for several runs (a long series, aggregated) draws a bar between
    # the least and the greatest of them.
    low: float | None = None
    high: float | None = None


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """Round tick values covering [low, high]: steps of 1, 2 or 5 times a power of ten."""
    if not (math.isfinite(low) and math.isfinite(high)):
        return [0.0]
    if high == low:
        spread = abs(high) * 0.1 or 1.0
        low, high = low - spread, high + spread
    raw = (high - low) / max(count - 1, 1)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    first = math.floor(low / step) * step
    ticks = [round(first, 12)]
    while ticks[-1] < high - step * 1e-9:  # the last tick is at or above the highest value
        ticks.append(round(first + len(ticks) * step, 12))
    return ticks


def _number(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 1e6 or abs(value) < 1e-3:
        return f"{value:.3g}"
    return f"{value:,.6g}"


def line_chart(
    series: Mapping[str, Sequence[Point]],
    *,
    title: str,
    y_label: str = "",
    reference: float | None = None,
    reference_label: str = "baseline",
    note: str = "",
    width: int = 640,
    height: int = 260,
) -> str:
    """An SVG line chart of one or more series over runs, with a dashed reference line."""
    # The legend takes a line per series above the plot, so it never hides a point.
    left, right, top, bottom = 72, 16, 36 + 14 * len(series), 40
    height += 14 * len(series)
    plot_w, plot_h = width - left - right, height - top - bottom
    values = [
        value
        for points in series.values()
        for point in points
        for value in (point.y, point.low, point.high)
        if value is not None
    ]
    if reference is not None:
        values.append(reference)
    runs = [point.x for points in series.values() for point in points] or [1]
    ticks = nice_ticks(min(values), max(values)) if values else [0.0, 1.0]
    y_low, y_high = ticks[0], ticks[-1] if ticks[-1] > ticks[0] else ticks[0] + 1
    x_low, x_high = min(runs), max(max(runs), min(runs) + 1)

    def x_of(run: float) -> float:
        return left + (run - x_low) / (x_high - x_low) * plot_w

    def y_of(value: float) -> float:
        return top + plot_h - (value - y_low) / (y_high - y_low) * plot_h

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" '
        f'width="{width}" height="{height}" role="img" aria-label={quoteattr(title)} '
        'font-family="sans-serif" font-size="11">',
        f"<title>{escape(title)}</title>",
        f'<rect x="0" y="0" width="{width}" height="{height}" fill="#ffffff"/>',
        f'<text x="{left}" y="18" font-size="13" font-weight="bold">{escape(title)}</text>',
    ]
    if note:  # how the points were drawn, where it is not one run a point
        parts.append(f'<text x="{left + plot_w}" y="18" text-anchor="end" '
                     f'fill="#59636e">{escape(note)}</text>')  # fmt: skip
    for tick in ticks:
        y = y_of(tick)
        parts.append(f'<line x1="{left}" x2="{left + plot_w}" y1="{y:.1f}" y2="{y:.1f}" '
                     'stroke="#e4e4e4"/>')  # fmt: skip
        parts.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end" '
                     f'fill="#444">{escape(_number(tick))}</text>')  # fmt: skip
    step = max(1, math.ceil((x_high - x_low + 1) / 12))
    for run in range(x_low, x_high + 1, step):
        x = x_of(run)
        parts.append(f'<text x="{x:.1f}" y="{top + plot_h + 16}" text-anchor="middle" '
                     f'fill="#444">{run}</text>')  # fmt: skip
    parts.append(f'<line x1="{left}" x2="{left + plot_w}" y1="{top + plot_h}" '
                 f'y2="{top + plot_h}" stroke="#888"/>')  # fmt: skip
    parts.append(f'<text x="{left + plot_w / 2:.1f}" y="{height - 6}" text-anchor="middle" '
                 'fill="#444">run</text>')  # fmt: skip
    if y_label:
        parts.append(f'<text transform="translate(14 {top + plot_h / 2:.1f}) rotate(-90)" '
                     f'text-anchor="middle" fill="#444">{escape(y_label)}</text>')  # fmt: skip
    if reference is not None:
        y = y_of(reference)
        parts.append(f'<line x1="{left}" x2="{left + plot_w}" y1="{y:.1f}" y2="{y:.1f}" '
                     'stroke="#b00020" stroke-dasharray="6 4"/>')  # fmt: skip
        parts.append(f'<text x="{left + plot_w}" y="{y - 4:.1f}" text-anchor="end" '
                     f'fill="#b00020">{escape(reference_label)} {escape(_number(reference))}'
                     "</text>")  # fmt: skip
    for index, (name, points) in enumerate(series.items()):
        color = PALETTE[index % len(PALETTE)]
        ordered = sorted(points, key=lambda point: point.x)
        if len(ordered) > 1:
            path = " ".join(f"{x_of(p.x):.1f},{y_of(p.y):.1f}" for p in ordered)
            parts.append(f'<polyline points="{path}" fill="none" stroke="{color}" '
                         'stroke-width="2"/>')  # fmt: skip
        for point in ordered:
            if point.low is not None and point.high is not None:
                parts.append(f'<line x1="{x_of(point.x):.1f}" x2="{x_of(point.x):.1f}" '
                             f'y1="{y_of(point.low):.1f}" y2="{y_of(point.high):.1f}" '
                             f'stroke="{color}" stroke-opacity="0.45"/>')  # fmt: skip
            hover = f"{name}, run {point.x}: {_number(point.y)} {y_label}".rstrip()
            if point.label:
                hover += f" ({point.label})"
            parts.append(f'<circle cx="{x_of(point.x):.1f}" cy="{y_of(point.y):.1f}" r="3.5" '
                         f'fill="{color}"><title>{escape(hover)}</title></circle>')  # fmt: skip
        legend_y = 26 + index * 14
        parts.append(f'<rect x="{left}" y="{legend_y}" width="10" height="10" '
                     f'fill="{color}"/>')  # fmt: skip
        parts.append(f'<text x="{left + 15}" y="{legend_y + 9}" '
                     f'fill="#222">{escape(name[:60])}</text>')  # fmt: skip
    parts.append("</svg>")
    return "\n".join(parts)


# The current point's colour by verdict: red a regression, green an improvement.
VERDICT_COLOURS = {"regression": "#b00020", "improvement": "#1a7f37"}


def sparkline_svg(
    history: Sequence[float], current: float, outcome: str, *, width: int = 160, height: int = 32
) -> str:
    """A small SVG line of a result's history, then its current value as a dot coloured
    by the verdict; the history's median as a dashed line; hover texts name the values."""
    values = [*history, current]
    low, high = min(values), max(values)
    spread = (high - low) or abs(high) * 0.1 or 1.0
    pad = 4

    def x(index: int) -> float:
        return pad + index * (width - 2 * pad) / max(len(values) - 1, 1)

    def y(value: float) -> float:
        return height - pad - (value - low) / spread * (height - 2 * pad)

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}"'
             f' viewBox="0 0 {width} {height}" role="img">']  # fmt: skip
    summary = f"{outcome}: {len(history)} earlier, now {_number(current)}"
    parts.append(f"<title>{escape(summary)}</title>")
    if history:
        middle = sorted(history)[len(history) // 2]
        level = f"{y(middle):.1f}"
        parts.append(f'<line x1="{pad}" x2="{width - pad}" y1="{level}" y2="{level}"'
                     ' stroke="#8c959f" stroke-dasharray="3,3"/>')  # fmt: skip
        path = " ".join(f"{x(i):.1f},{y(v):.1f}" for i, v in enumerate(values))
        parts.append(f'<polyline points="{path}" fill="none" stroke="#0072B2"'
                     ' stroke-width="1.5"/>')  # fmt: skip
    colour = VERDICT_COLOURS.get(outcome, "#0072B2")
    parts.append(
        f'<circle class="current" cx="{x(len(values) - 1):.1f}" cy="{y(current):.1f}" r="3"'
        f" fill={quoteattr(colour)}><title>now {_number(current)}</title></circle>"
    )
    parts.append("</svg>")
    return "".join(parts)
