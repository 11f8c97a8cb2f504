"""Inline SVG charts for the admin console (no scripts, no external assets): bars and lines over days.

A chart spans the page's width (its viewBox scales; the text stays legible at 1400 px); counts get whole-number
ticks ("2.5 studies" is no count).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from html import escape

WIDTH, HEIGHT = 1200, 240
_LEFT, _RIGHT, _TOP, _BOTTOM = 48, 12, 42, 36
COLOURS = ("#2b6cb0", "#dd6b20", "#c53030", "#2f855a")


def _scale(maximum: float) -> float:
    """The smallest of 1, 2, 5 x 10^k at or above ``maximum`` (an axis top with round ticks)."""
    if maximum <= 0:
        return 1.0
    magnitude = 1.0
    while magnitude * 10 < maximum:
        magnitude *= 10
    while magnitude > maximum:
        magnitude /= 10
    return next(magnitude * step for step in (1, 2, 5, 10) if magnitude * step >= maximum)


def _ticks(top: float) -> list[float]:
    return [0, top / 2, top]


def _integer_ticks(maximum: float) -> list[int]:
    """Whole-number ticks from 0 covering ``maximum``: at most 6, at a step of 1, 2 or 5 x 10^k."""
    step = 1
    while maximum / step > 5:
        step = step * 5 // 2 if str(step)[0] == "2" else step * 2  # 1, 2, 5, 10, 20, 50, ...
    top = max(step, math.ceil(maximum / step) * step)
    return list(range(0, top + 1, step))


def _axes(title: str, labels: Sequence[str], ticks: Sequence[float], unit: str) -> list[str]:
    plot_w, plot_h = WIDTH - _LEFT - _RIGHT, HEIGHT - _TOP - _BOTTOM
    top = ticks[-1]
    parts = [f'<text x="{_LEFT}" y="15" class="chart-title">{escape(title)}</text>']
    for value in ticks:
        y = _TOP + plot_h * (1 - value / top)
        parts.append(f'<line x1="{_LEFT}" y1="{y:.1f}" x2="{WIDTH - _RIGHT}" y2="{y:.1f}" stroke="#ddd"/>')
        text = f"{value:g}{unit}"
        parts.append(f'<text x="{_LEFT - 4}" y="{y + 4:.1f}" text-anchor="end" class="axis">{escape(text)}</text>')
    step = max(1, len(labels) // 14)
    slot = plot_w / max(1, len(labels))
    for index in range(0, len(labels), step):
        x = _LEFT + slot * (index + 0.5)
        parts.append(f'<text x="{x:.1f}" y="{HEIGHT - _BOTTOM + 16}" text-anchor="middle" class="axis">'
                     f'{escape(labels[index])}</text>')
    return parts


def _svg(parts: list[str], label: str) -> str:
    return (f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}" width="100%" '
            f'role="img" aria-label="{escape(label)}" class="chart">'
            + "".join(parts) + "</svg>")


def bar_chart(title: str, labels: Sequence[str], series: dict[str, Sequence[float]], unit: str = "", *,
              integers: bool = False) -> str:
    """Grouped bars, one group per label, one bar per series (a legend names the series); ``integers``: the
    values are counts, ticked in whole numbers."""
    maximum = max((v for values in series.values() for v in values), default=0)
    ticks: Sequence[float] = _integer_ticks(maximum) if integers else _ticks(_scale(maximum))
    top = ticks[-1]
    plot_w, plot_h = WIDTH - _LEFT - _RIGHT, HEIGHT - _TOP - _BOTTOM
    parts = _axes(title, labels, ticks, unit)
    slot = plot_w / max(1, len(labels))
    bar = slot * 0.8 / max(1, len(series))
    for k, (name, values) in enumerate(series.items()):
        colour = COLOURS[k % len(COLOURS)]
        for index, value in enumerate(values):
            h = plot_h * (value / top)
            x = _LEFT + slot * index + slot * 0.1 + bar * k
            parts.append(f'<rect x="{x:.1f}" y="{_TOP + plot_h - h:.1f}" width="{max(bar - 1, 1):.1f}" '
                         f'height="{h:.1f}" fill="{colour}"><title>{escape(labels[index])} {escape(name)}: '
                         f'{value:g}</title></rect>')
    parts += _legend(series)
    return _svg(parts, title)


def line_chart(title: str, labels: Sequence[str], series: dict[str, Sequence[float | None]], unit: str = "") -> str:
    """One polyline per series; missing values (None) break the line and get no point."""
    top = _scale(max((v for values in series.values() for v in values if v is not None), default=0))
    plot_w, plot_h = WIDTH - _LEFT - _RIGHT, HEIGHT - _TOP - _BOTTOM
    parts = _axes(title, labels, _ticks(top), unit)
    slot = plot_w / max(1, len(labels))
    for k, (name, values) in enumerate(series.items()):
        colour = COLOURS[k % len(COLOURS)]
        run: list[str] = []
        for index, value in enumerate(list(values) + [None]):
            if value is None:
                if len(run) > 1:
                    parts.append(f'<polyline points="{" ".join(run)}" fill="none" stroke="{colour}" '
                                 'stroke-width="2"/>')
                run = []
                continue
            x, y = _LEFT + slot * (index + 0.5), _TOP + plot_h * (1 - value / top)
            run.append(f"{x:.1f},{y:.1f}")
            parts.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{colour}"><title>{escape(labels[index])} '
                         f'{escape(name)}: {value:.1f}{escape(unit)}</title></circle>')
    parts += _legend(series)
    return _svg(parts, title)


def _legend(series: dict[str, Sequence]) -> list[str]:
    parts = []
    x = WIDTH - _RIGHT - 110 * len(series)
    for k, name in enumerate(series):
        colour = COLOURS[k % len(COLOURS)]
        parts.append(f'<rect x="{x + 110 * k}" y="22" width="10" height="10" fill="{colour}"/>'
                     f'<text x="{x + 110 * k + 14}" y="31" class="axis">{escape(name)}</text>')
    return parts
