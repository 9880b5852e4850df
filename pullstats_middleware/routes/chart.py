"""Pulls per day as an SVG bar chart, rendered on the server in plain Python.

No script and no chart library: the page works offline, under a policy that
forbids every script, and a browser draws it before any JSON could have been
fetched. Each day is one `<rect class="pulls">` carrying its values in `data-*`
attributes (what the browser test compares with the JSON routes) and a `<title>`
(the tooltip); unique pullers are a line over the bars, on the same scale.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

from markupsafe import Markup, escape

WIDTH, HEIGHT = 960, 220
LEFT, RIGHT, TOP, BOTTOM = 48, 12, 12, 26  # room for the axis labels
PLOT_W, PLOT_H = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
X_LABELS = 6  # dates written under the axis, first and last included


class Point(NamedTuple):
    date: str  # YYYY-MM-DD
    pulls: int
    pullers: int


def nice_ceiling(value: int) -> tuple[int, int]:
    """The axis maximum and its step: 1, 2 or 5 times a power of ten, at most 4 steps."""
    if value <= 0:
        return 1, 1
    step = 10 ** max(0, math.floor(math.log10(value / 4)))
    for factor in (1, 2, 5, 10):
        if value <= 4 * step * factor:
            step *= factor
            break
    return step * math.ceil(value / step), step


def _number(value: float) -> str:
    """SVG coordinates with two decimals at most: small pages, exact enough on screen."""
    return f"{value:.2f}".rstrip("0").rstrip(".")


def bar_chart(points: Sequence[Point], *, chart_id: str, label: str) -> Markup:
    """`points`: one per day, oldest first (at least one). `label` names the chart for
    screen readers; it is escaped like every other value."""
    top, step = nice_ceiling(max(max(p.pulls, p.pullers) for p in points))
    slot = PLOT_W / len(points)
    bar = max(slot * 0.8, 1.0)

    def y(value: int) -> float:
        return TOP + PLOT_H - PLOT_H * value / top

    parts = [
        Markup('<svg class="chart" id="{}" viewBox="0 0 {} {}" role="img" aria-label="{}">').format(
            chart_id, WIDTH, HEIGHT, label
        )
    ]
    for tick in range(0, top + 1, step):
        parts.append(
            Markup(
                '<line class="grid" x1="{x1}" x2="{x2}" y1="{y}" y2="{y}"/>'
                '<text class="axis" x="{tx}" y="{ty}" text-anchor="end">{tick}</text>'
            ).format(
                x1=LEFT,
                x2=WIDTH - RIGHT,
                y=_number(y(tick)),
                tx=LEFT - 6,
                ty=_number(y(tick) + 4),
                tick=f"{tick:,}",
            )
        )
    # One bar a day, up to 400: formatted as plain text, the one string (the date) escaped
    # by hand; Markup.format, per bar, was most of the time a year's page took.
    bars, line = [], []
    for n, point in enumerate(points):
        x, date = LEFT + n * slot + (slot - bar) / 2, escape(point.date)
        pulls, pullers = int(point.pulls), int(point.pullers)
        bars.append(
            f'<rect class="pulls" x="{_number(x)}" y="{_number(y(pulls))}" '
            f'width="{_number(bar)}" height="{_number(PLOT_H * pulls / top)}" '
            f'data-date="{date}" data-pulls="{pulls}" data-pullers="{pullers}">'
            f"<title>{date}: {pulls:,} pulls, {pullers:,} unique pullers</title></rect>"
        )
        line.append(f"{_number(LEFT + (n + 0.5) * slot)},{_number(y(pullers))}")
    parts.append(Markup("".join(bars)))
    parts.append(Markup('<polyline class="pullers" points="{}"/>').format(" ".join(line)))
    labels = min(X_LABELS, len(points))
    for k in range(labels):
        n = round(k * (len(points) - 1) / max(labels - 1, 1))
        anchor = "start" if k == 0 else "end" if k == labels - 1 else "middle"
        x = LEFT + (n + 0.5) * slot if anchor == "middle" else LEFT if k == 0 else WIDTH - RIGHT
        parts.append(
            Markup('<text class="axis" x="{}" y="{}" text-anchor="{}">{}</text>').format(
                _number(x), HEIGHT - 8, anchor, points[n].date
            )
        )
    parts.append(Markup("</svg>"))
    return Markup("").join(parts)
