"""Server-rendered SVG bar charts: no script, no asset from anywhere, readable without colour
(each bar has a <title> with its figures, and the numbers are printed above the bars)."""
from __future__ import annotations

import dataclasses

from markupsafe import Markup, escape

WIDTH, HEIGHT, MARGIN, AXIS = 640, 200, 24, 36


@dataclasses.dataclass(frozen=True)
class Series:
    name: str
    colour: str
    values: list[int]


def _scale(series: list[Series]) -> float:
    totals = [sum(values) for values in zip(*(s.values for s in series))]
    return max([1, *totals])


def _bar(x: float, width: float, stack: list[tuple[Series, int]], label: str,
         per_unit: float, labelled: bool = True) -> str:
    parts: list[str] = []
    base: float = HEIGHT - AXIS
    for series, value in stack:
        height = value * per_unit
        base -= height
        if value:
            parts.append(f'<rect x="{x:.1f}" y="{base:.1f}" width="{width:.1f}" '
                         f'height="{height:.1f}" fill="{series.colour}">'
                         f'<title>{escape(label)}: {value} {escape(series.name)}</title></rect>')
    total = sum(value for _, value in stack)
    if total and width >= 12:  # narrower bars have no room for their figure (<title> has it)
        parts.append(f'<text x="{x + width / 2:.1f}" y="{base - 3:.1f}" '
                     f'text-anchor="middle" font-size="10">{total}</text>')
    if labelled:
        parts.append(f'<text x="{x + width / 2:.1f}" y="{HEIGHT - AXIS + 14}" '
                     f'text-anchor="middle" font-size="10">{escape(label)}</text>')
    return "".join(parts)


def _legend(series: list[Series]) -> str:
    items = []
    for n, item in enumerate(series):
        x = MARGIN + n * 140
        items.append(f'<rect x="{x}" y="{HEIGHT - 14}" width="10" height="10" '
                     f'fill="{item.colour}"/><text x="{x + 14}" y="{HEIGHT - 5}" '
                     f'font-size="11">{escape(item.name)}</text>')
    return "".join(items)


def bar_chart(title: str, labels: list[str], series: list[Series],
              label_every: int = 1) -> Markup:
    """Stacked bars, one per label; ``series`` values line up with ``labels``. With many bars,
    ``label_every`` prints every n-th label only (counted from the last)."""
    slot = (WIDTH - 2 * MARGIN) / max(1, len(labels))
    per_unit = (HEIGHT - AXIS - MARGIN) / _scale(series)
    bars = [_bar(MARGIN + n * slot + slot * 0.15, slot * 0.7,
                 [(s, s.values[n]) for s in series], label, per_unit,
                 (len(labels) - 1 - n) % label_every == 0)
            for n, label in enumerate(labels)]
    axis = (f'<line x1="{MARGIN}" y1="{HEIGHT - AXIS}" x2="{WIDTH - MARGIN}" '
            f'y2="{HEIGHT - AXIS}" stroke="#888"/>')
    return Markup(f'<svg class="chart" role="img" aria-label="{escape(title)}" '
                  f'viewBox="0 0 {WIDTH} {HEIGHT}" xmlns="http://www.w3.org/2000/svg">'
                  f'<title>{escape(title)}</title>{axis}{"".join(bars)}{_legend(series)}</svg>')
