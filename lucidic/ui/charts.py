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


def _nice_max(value: float) -> float:
    if value <= 0:
        return 1.0
    exponent = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 2.5, 5, 10):
        if value <= step * exponent:
            return float(step * exponent)
    return float(10 * exponent)


def stacked_columns(title: str, labels: list[str], series: list[tuple[str, str, list[float]]],
                    fmt: Any) -> Chart:
    """One column per label, each stacking the series' values bottom-up.
    ``series``: (css class, legend label, values)."""
    totals = [sum(values[i] for _, _, values in series) for i in range(len(labels))]
    top = _nice_max(max(totals, default=0.0))
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    slot = plot_w / max(len(labels), 1)
    gap = min(6.0, slot * 0.2)
    every = max(1, math.ceil(len(labels) / 10))  # at most ~10 date labels
    columns = []
    for i, label in enumerate(labels):
        column = Column(x=LEFT + i * slot + gap / 2, width=max(slot - gap, 1.0),
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
    ticks = [(HEIGHT - BOTTOM - plot_h * f, fmt(top * f)) for f in (0.0, 0.5, 1.0)]
    legend = [(css, name) for css, name, _ in series if name]
    return Chart(title, columns, ticks, legend, empty=not any(totals))


def dashboard_charts(board: Dashboard) -> dict[str, Chart]:
    labels = [day(d["date"]) for d in board.days]
    return {
        "cost": stacked_columns("Cost per day", labels,
                                [("bar-cost", "", [float(d["cost"]) for d in board.days])],
                                money),
        "tokens": stacked_columns(
            "Tokens per day", labels,
            [("bar-in", "input", [float(d["input_tokens"]) for d in board.days]),
             ("bar-out", "output", [float(d["output_tokens"]) for d in board.days])],
            lambda v: number(round(v))),
        "calls": stacked_columns(
            "LLM calls per day", labels,
            [("bar-ok", "succeeded",
              [float(d["llm_calls"] - d["llm_errors"]) for d in board.days]),
             ("bar-err", "failed", [float(d["llm_errors"]) for d in board.days])],
            lambda v: number(round(v))),
    }
