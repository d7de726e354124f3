"""Server-drawn charts for the dashboard: the geometry is computed here and
drawn as SVG by templates/_charts.html, beside a table of the same numbers.
(SVG attributes, unlike inline styles, need no exception in the CSP.)"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from ..reading import Dashboard
from .render import day, money, number

WIDTH, HEIGHT = 900, 210
LEFT, RIGHT, TOP, BOTTOM = 64, 12, 12, 28


@dataclass
class Segment:
    y: float
    height: float
    css: str
    title: str


@dataclass
class Column:
    x: float
    width: float
    label: str
    segments: list[Segment] = field(default_factory=list)


@dataclass
class Chart:
    title: str
    columns: list[Column]
    ticks: list[tuple[float, str]]     # (y, label) of the value axis
    legend: list[tuple[str, str]]      # (css class, label)
    width: int = WIDTH
    height: int = HEIGHT
    left: int = LEFT
    baseline: float = HEIGHT - BOTTOM
    empty: bool = False


#: The width of a character of the value axis's labels (11px text), with
#: room to spare: the plot starts where the longest label ends.
AXIS_CHAR_WIDTH = 7


def _nice_max(value: float, whole: bool) -> float:
    """The top of a value axis: the least round number at or above ``value``.
    For counts (``whole``) its half, the middle gridline, is a whole number
    too: 1 call drew gridlines 0, 0.5 and 1, labelled 0, 0 and 1."""
    if whole:
        value = max(value, 2.0)
    elif value <= 0:
        return 1.0
    exponent = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 2.5, 3, 4, 5, 6, 8, 10) if whole else (1, 2, 2.5, 5, 10):
        top = step * exponent
        if value <= top and (not whole or float(top / 2).is_integer()):
            return float(top)
    return float(10 * exponent)


def stacked_columns(title: str, labels: list[str], series: list[tuple[str, str, list[float]]],
                    fmt: Any, whole: bool = False, min_left: int = LEFT) -> Chart:
    """One column per label, each stacking the series' values bottom-up.
    ``series``: (css class, legend label, values); ``whole``: the values
    are counts; the plot starts at ``min_left`` or right of the longest
    value label."""
    totals = [sum(values[i] for _, _, values in series) for i in range(len(labels))]
    top = _nice_max(max(totals, default=0.0), whole)
    tick_labels = [fmt(top * f) for f in (0.0, 0.5, 1.0)]
    left = max(min_left, AXIS_CHAR_WIDTH * max(map(len, tick_labels)) + 16)
    plot_w, plot_h = WIDTH - left - RIGHT, HEIGHT - TOP - BOTTOM
    slot = plot_w / max(len(labels), 1)
    gap = min(6.0, slot * 0.2)
    every = max(1, math.ceil(len(labels) / 10))  # at most ~10 date labels
    columns = []
    for i, label in enumerate(labels):
        column = Column(x=left + i * slot + gap / 2, width=max(slot - gap, 1.0),
                        label=label if i % every == 0 else "")
        base = float(HEIGHT - BOTTOM)
        for css, name, values in series:
            height = values[i] / top * plot_h if top else 0.0
            if values[i] > 0:
                height = max(height, 1.0)
                base -= height
                column.segments.append(Segment(base, height, css, f"{label}: {fmt(values[i])} "
                                                                   f"{name}".strip()))
        columns.append(column)
    ticks = [(HEIGHT - BOTTOM - plot_h * f, label)
             for f, label in zip((0.0, 0.5, 1.0), tick_labels, strict=True)]
    legend = [(css, name) for css, name, _ in series if name]
    return Chart(title, columns, ticks, legend, left=left, empty=not any(totals))


def _count(value: float) -> str:
    """A count on a value axis, short: 2.5M, 750k, 40."""
    for size, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k")):
        if value >= size:
            return f"{value / size:.3g}{suffix}"
    return number(round(value))


def dashboard_charts(board: Dashboard) -> dict[str, Chart]:
    """The dashboard's charts, one above another, their plots aligned."""
    labels = [day(d["date"]) for d in board.days]

    def drawn(left: int) -> dict[str, Chart]:
        return {
            "cost": stacked_columns("Cost per day", labels,
                                    [("bar-cost", "", [float(d["cost"]) for d in board.days])],
                                    money, min_left=left),
            "tokens": stacked_columns(
                "Tokens per day", labels,
                [("bar-in", "input", [float(d["input_tokens"]) for d in board.days]),
                 ("bar-out", "output", [float(d["output_tokens"]) for d in board.days])],
                _count, whole=True, min_left=left),
            "calls": stacked_columns(
                "LLM calls per day", labels,
                [("bar-ok", "succeeded",
                  [float(d["llm_calls"] - d["llm_errors"]) for d in board.days]),
                 ("bar-err", "failed", [float(d["llm_errors"]) for d in board.days])],
                _count, whole=True, min_left=left),
        }

    return drawn(max(chart.left for chart in drawn(LEFT).values()))
