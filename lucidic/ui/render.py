"""Templates and the filters they format values with.

Every template is autoescaped: recorded text is always shown as text, never
as markup. Nothing in a template is marked safe.
"""

from __future__ import annotations

import math
from datetime import datetime, timezone
from functools import lru_cache
from typing import Any

from jinja2 import Environment, PackageLoader, select_autoescape

from .. import __version__
from .._render import plural
from ..reading import status_of
from ..reading.tree import never_ended
from . import assets
from .messages import conversation, image_src, pretty


def money(value: Any) -> str:
    """Dollars, with the digits a small cost needs ($0.000137, not $0.00)."""
    if value is None:
        return "—"
    amount = float(value)
    if amount == 0:
        return "$0"
    if abs(amount) >= 0.01:
        return f"${amount:,.2f}" if abs(amount) < 1000 else f"${amount:,.0f}"
    places = -math.floor(math.log10(abs(amount))) + 2
    return f"${amount:.{places}f}".rstrip("0")


def duration(seconds: Any) -> str:
    if seconds is None:
        return "—"
    value = float(seconds)
    if value < 0:
        return "—"
    if value < 0.001:
        return f"{value * 1e6:.0f} µs"
    if value < 1:
        return f"{value * 1000:.3g} ms"
    if value < 60:
        return f"{value:.3g} s" if value < 10 else f"{value:.1f} s"
    if value < 3600:
        return f"{int(value // 60)} min {int(value % 60)} s"
    hours = value / 3600
    if hours < 48:
        return f"{int(hours)} h {int((value % 3600) // 60)} min"
    return f"{hours / 24:.1f} days"


def number(value: Any) -> str:
    if value is None:
        return "—"
    return f"{int(value):,}"


def iso(ts: Any) -> str:
    if ts is None:
        return ""
    return datetime.fromtimestamp(float(ts), timezone.utc).isoformat(timespec="milliseconds")


def when(ts: Any) -> str:
    """UTC text; the page script rewrites it in the reader's own time zone."""
    if ts is None:
        return "—"
    return datetime.fromtimestamp(float(ts), timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def day(ts: Any) -> str:
    return datetime.fromtimestamp(float(ts), timezone.utc).strftime("%b %d")


def session_duration(session: dict[str, Any], now: float) -> float | None:
    started = session.get("started_at")
    if started is None:
        return None
    ended = session.get("ended_at") if session.get("is_finished") else None
    return float((ended if ended is not None else now) - started)


def node_span(node: dict[str, Any], now: float) -> tuple[float | None, float | None]:
    """When a tree row started and how long it took (running: until now)."""
    started = node.get("started_at")
    if started is None:
        return None, None
    if node.get("duration") is not None:
        return started, float(node["duration"])
    if node.get("ended_at") is not None:
        took = node["ended_at"] - started  # unknown if it ended before it started
        return started, took if took >= 0 else None
    if node.get("never_ended"):
        return started, None  # no length to show: its session ended, it did not
    return started, (now - started) if not node.get("is_finished") else 0.0


def bar(node: dict[str, Any], start: float | None, end: float | None,
        now: float) -> dict[str, float] | None:
    """A row's bar on the session's timeline, in thousandths of its width;
    an LLM call's bar is split at its time to first token."""
    began, took = node_span(node, now)
    if began is None or took is None or start is None or end is None:
        return None
    span = max(end - start, 1e-6)
    x = min(max((began - start) / span * 1000, 0.0), 1000.0)
    width = min(max(took / span * 1000, 3.0), 1000.0 - x + 3.0)
    ttft = node.get("time_to_first_token")
    wait = min(max(float(ttft) / span * 1000, 0.0), width) if ttft is not None else 0.0
    return {"x": round(x, 2), "width": round(width, 2), "wait": round(wait, 2)}


def percent(value: Any) -> str:
    return "—" if value is None else f"{float(value) * 100:.1f}%"


def score(value: Any) -> str:
    """A score's value: pass/fail, three significant digits, or the label."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "pass" if value else "fail"
    if isinstance(value, (int, float)):
        return f"{float(value):.3g}"
    return str(value)


def signed(value: Any, unit: str = "") -> str:
    """A delta with its sign: +0.25, -$0.0012, +1.2 s."""
    if value is None:
        return "—"
    amount = float(value)
    sign = "+" if amount >= 0 else "−"
    if unit == "$":
        return sign + money(abs(amount))
    if unit == "s":
        return sign + duration(abs(amount))
    return f"{sign}{abs(amount):.3g}"


def trend(value: Any, higher_is_better: bool = True) -> str:
    """better, worse or same, for a delta's colour."""
    if value is None or float(value) == 0:
        return "same"
    return "better" if (float(value) > 0) == higher_is_better else "worse"


@lru_cache(maxsize=1)
def environment() -> Environment:
    env = Environment(loader=PackageLoader("lucidic.ui", "templates"),
                      autoescape=select_autoescape(["html", "svg"], default=True),
                      trim_blocks=True, lstrip_blocks=True)
    env.filters.update(money=money, duration=duration, number=number, iso=iso, when=when,
                       day=day, percent=percent, pretty=pretty, image_src=image_src,
                       score=score, signed=signed, trend=trend, plural=plural)
    env.globals.update(status_of=status_of, conversation=conversation,
                       session_duration=session_duration, asset=assets.url, bar=bar,
                       node_span=node_span, never_ended=never_ended,
                       version=__version__)
    return env


def compile_templates() -> None:
    """Compile every page's templates now (each is compiled once, at its
    first use otherwise: the first page opened paid for it)."""
    env = environment()
    for name in env.list_templates():
        env.get_template(name)


def render(template: str, **context: Any) -> str:
    return environment().get_template(template).render(**context)
