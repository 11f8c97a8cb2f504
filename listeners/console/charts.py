"""Inline SVG charts for the admin console (no scripts, no external assets): bars and lines over days."""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

WIDTH, HEIGHT = 720, 220
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


def _axes(title: str, labels: Sequence[str], top: float, unit: str) -> list[str]:
    plot_w, plot_h = WIDTH - _LEFT - _RIGHT, HEIGHT - _TOP - _BOTTOM
    parts = [f'<text x="{_LEFT}" y="15" class="chart-title">{escape(title)}</text>']
    for fraction in (0, 0.5, 1):
        y = _TOP + plot_h * (1 - fraction)
        parts.append(f'<line x1="{_LEFT}" y1="{y:.1f}" x2="{WIDTH - _RIGHT}" y2="{y:.1f}" stroke="#ddd"/>')
        value = top * fraction
        text = f"{value:g}{unit}"
        parts.append(f'<text x="{_LEFT - 4}" y="{y + 4:.1f}" text-anchor="end" class="axis">{escape(text)}</text>')
    step = max(1, len(labels) // 7)
    slot = plot_w / max(1, len(labels))
    for index in range(0, len(labels), step):
        x = _LEFT + slot * (index + 0.5)
        parts.append(f'<text x="{x:.1f}" y="{HEIGHT - _BOTTOM + 16}" text-anchor="middle" class="axis">'
                     f'{escape(labels[index])}</text>')
    return parts


def _svg(parts: list[str], label: str) -> str:
    return (f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" '
            f'height="{HEIGHT}" role="img" aria-label="{escape(label)}" class="chart">'
            + "".join(parts) + "</svg>")


def bar_chart(title: str, labels: Sequence[str], series: dict[str, Sequence[float]], unit: str = "") -> str:
    """Grouped bars, one group per label, one bar per series (a legend names the series)."""
    top = _scale(max((v for values in series.values() for v in values), default=0))
    plot_w, plot_h = WIDTH - _LEFT - _RIGHT, HEIGHT - _TOP - _BOTTOM
    parts = _axes(title, labels, top, unit)
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
    parts = _axes(title, labels, top, unit)
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
