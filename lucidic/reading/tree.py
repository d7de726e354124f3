"""A session's steps and events: the whole nested tree (JSON API, CLI), or a
window of it flattened in reading order (the web UI), with who wrote what.

The window reads only light columns (no messages, arguments or results), so
a session of 10,000 events is ordered in a few tens of milliseconds; an
event's full record is read when it is asked for.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..store import Store

_LABEL_CHARS = 160

_STEP_COLUMNS = ("id", "parent_step_id", "state", "action", "goal", "function_name",
                 "started_at", "ended_at", "is_finished", "writer_host", "writer_pid",
                 "writer_agent")
_EVENT_COLUMNS = ("id", "step_id", "type", "model", "request_model", "provider",
                  "function_name", "started_at", "ended_at", "duration", "time_to_first_token",
                  "cost", "input_tokens", "output_tokens", "is_finished", "writer_host",
                  "writer_pid", "writer_agent")


def never_ended(node: dict[str, Any], session: dict[str, Any] | None) -> bool:
    """A step or event its session outlived: the session ended while it had
    not (its process was killed, or it ran in a thread nobody waited for).
    It is not running, and never will be."""
    return (session is not None and bool(session.get("is_finished"))
            and not node.get("is_finished") and node.get("ended_at") is None)


def build_tree(session: dict[str, Any], steps: list[dict[str, Any]],
               events: list[dict[str, Any]]) -> dict[str, Any]:
    """Nest steps under their parents and events under their steps. A step
    whose parent is unknown (not delivered yet) stays at the top level, and
    so does a step caught in a cycle of parents (ids are the client's).
    Every node says whether it ``never_ended``."""
    for node in (*steps, *events):
        node["never_ended"] = never_ended(node, session)
    by_id = {s["id"]: {**s, "steps": [], "events": []} for s in steps}
    top_steps: list[dict[str, Any]] = []
    for step in by_id.values():
        parent_id = step["parent_step_id"]
        parent = by_id.get(parent_id) if parent_id and not _in_cycle(by_id, step["id"]) \
            else None
        (parent["steps"] if parent is not None else top_steps).append(step)
    top_events: list[dict[str, Any]] = []
    for event in events:
        owner = by_id.get(event["step_id"]) if event["step_id"] else None
        (owner["events"] if owner is not None else top_events).append(event)
    return {**session, "steps": top_steps, "events": top_events}


def _in_cycle(by_id: dict[str, dict[str, Any]], step_id: str) -> bool:
    seen = {step_id}
    current = by_id[step_id].get("parent_step_id")
    while current and current in by_id:
        if current in seen:
            return True
        seen.add(current)
        current = by_id[current].get("parent_step_id")
    return False


def full_tree(store: Store, session: dict[str, Any]) -> dict[str, Any]:
    ph = store.placeholder
    steps, events = store.query_many([
        (f"SELECT * FROM steps WHERE session_id = {ph} ORDER BY started_at, id", [session["id"]]),
        (f"SELECT * FROM events WHERE session_id = {ph} ORDER BY started_at, id",
         [session["id"]]),
    ])
    return build_tree(session, steps, events)


def _short(value: Any) -> str:
    text = " ".join(str(value).split()) if value is not None else ""
    return text if len(text) <= _LABEL_CHARS else text[:_LABEL_CHARS - 1] + "…"


def writer_key(node: dict[str, Any]) -> str | None:
    """One process that wrote records: ``host:pid`` (None for rows written
    before writers were recorded)."""
    if node.get("writer_host") is None and node.get("writer_pid") is None:
        return None
    return f"{node.get('writer_host') or '?'}:{node.get('writer_pid') or '?'}"


@dataclass
class Outline:
    """A window of a session's tree, flattened in reading order."""

    rows: list[dict[str, Any]]
    offset: int
    total: int                     # rows (steps + events) in the whole tree
    step_count: int
    event_count: int
    start: float | None            # the timeline's origin and end (epoch seconds)
    end: float | None
    writers: list[dict[str, Any]] = field(default_factory=list)
    handovers: list[dict[str, Any]] = field(default_factory=list)


def outline(store: Store, session: dict[str, Any], offset: int = 0, limit: int = 300,
            now: float | None = None) -> Outline:
    """Rows ``offset .. offset+limit`` of the session's tree in depth-first
    order (children by start time), each with its depth, label and timing."""
    ph = store.placeholder
    sid = session["id"]
    steps, events = store.query_many([
        (f"SELECT {', '.join(_STEP_COLUMNS)}, substr(error, 1, 300) AS error "
         f"FROM steps WHERE session_id = {ph}", [sid]),
        (f"SELECT {', '.join(_EVENT_COLUMNS)}, substr(description, 1, 300) AS description, "
         f"substr(error, 1, 300) AS error FROM events WHERE session_id = {ph}", [sid]),
    ])
    for step in steps:
        step["kind"] = "step"
    for event in events:
        event["kind"] = "event"
    order = _depth_first(steps, events)
    times = [t for n in (*steps, *events) for t in (n.get("started_at"), n.get("ended_at"))
             if t is not None]
    start = session.get("started_at") or (min(times) if times else None)
    end_candidates = [*times, session.get("ended_at") or 0.0]
    if not session.get("is_finished") and now is not None:
        end_candidates.append(now)
    end = max(end_candidates) if start is not None else None
    window = order[offset:offset + limit]
    handovers = _handovers(steps, events)
    arrivals = {(h["first_kind"], h["first_id"]): h["from"] for h in handovers}
    for depth, node in window:
        node["depth"] = depth
        node["label"] = node_label(node)
        node["writer"] = writer_key(node)
        node["handover_from"] = arrivals.get((node["kind"], node["id"]))
        node["never_ended"] = never_ended(node, session)
    return Outline(rows=[n for _, n in window], offset=offset, total=len(order),
                   step_count=len(steps), event_count=len(events), start=start, end=end,
                   writers=_writers(steps, events), handovers=handovers)


def _depth_first(steps: list[dict[str, Any]],
                 events: list[dict[str, Any]]) -> list[tuple[int, dict[str, Any]]]:
    by_id = {s["id"]: s for s in steps}
    children: dict[str | None, list[dict[str, Any]]] = {}
    for step in steps:
        parent = step.get("parent_step_id")
        if parent not in by_id or parent == step["id"]:
            parent = None
        children.setdefault(parent, []).append(step)
    for event in events:
        owner = event.get("step_id")
        children.setdefault(owner if owner in by_id else None, []).append(event)
    for items in children.values():
        items.sort(key=lambda n: (n.get("started_at") or 0.0, n["kind"] == "event", n["id"]))
    for step in steps:
        step["child_count"] = len(children.get(step["id"], ()))
    order: list[tuple[int, dict[str, Any]]] = []
    placed: set[str] = set()
    stack: list[tuple[int, dict[str, Any]]] = [(0, n) for n in reversed(children.get(None, []))]
    while stack:
        depth, node = stack.pop()
        key = node["kind"] + node["id"]
        if key in placed:
            continue
        placed.add(key)
        order.append((depth, node))
        if node["kind"] == "step":
            stack.extend((depth + 1, child)
                         for child in reversed(children.get(node["id"], [])))
    if len(placed) < len(steps) + len(events):
        # Steps whose parents form a cycle are never reached from the top:
        # show them at the top level rather than lose them.
        for node in [*steps, *events]:
            if node["kind"] + node["id"] not in placed:
                placed.add(node["kind"] + node["id"])
                order.append((0, node))
    return order


def node_label(node: dict[str, Any]) -> str:
    """What a tree row is called: a step by its action (or state, or the
    function it wraps); an LLM call by its provider and model; any other
    event by its description, else its function."""
    if node["kind"] == "step":
        return _short(node.get("action") or node.get("state") or node.get("function_name")
                      or node.get("goal") or "step")
    if node.get("type") == "llm":
        model = node.get("model") or node.get("request_model") or "model"
        return _short(f"{node.get('provider') or 'llm'} · {model}")
    function = node.get("function_name")
    if function:
        function = str(function).rsplit(".", 1)[-1]  # the function, not its module path
    return _short(node.get("description") or function or node.get("type") or "event")


def _writers(steps: list[dict[str, Any]], events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    for node in (*steps, *events):
        key = writer_key(node)
        if key is None:
            continue
        entry = found.get(key)
        started = node.get("started_at")
        if entry is None:
            entry = found[key] = {"key": key, "host": node.get("writer_host"),
                                  "pid": node.get("writer_pid"), "agents": set(),
                                  "steps": 0, "events": 0, "first": started, "last": started}
        entry["steps" if node["kind"] == "step" else "events"] += 1
        if node.get("writer_agent"):
            entry["agents"].add(node["writer_agent"])
        last = node.get("ended_at") or started
        if started is not None and (entry["first"] is None or started < entry["first"]):
            entry["first"] = started
        if last is not None and (entry["last"] is None or last > entry["last"]):
            entry["last"] = last
    writers = sorted(found.values(), key=lambda w: (w["first"] or 0.0, w["key"]))
    for index, writer in enumerate(writers):
        writer["agents"] = sorted(writer["agents"])
        writer["index"] = index
    return writers


def _handovers(steps: list[dict[str, Any]],
               events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Where the session passed from one writer to the next, in time order."""
    timeline = sorted((n for n in (*steps, *events)
                       if writer_key(n) is not None and n.get("started_at") is not None),
                      key=lambda n: (n["started_at"], n["id"]))
    handovers: list[dict[str, Any]] = []
    previous: dict[str, Any] | None = None
    for node in timeline:
        if previous is not None and writer_key(node) != writer_key(previous):
            handovers.append({"at": node["started_at"], "from": writer_key(previous),
                              "to": writer_key(node), "first_id": node["id"],
                              "first_kind": node["kind"]})
        previous = node
    return handovers
