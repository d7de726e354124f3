"""Storing decoded OTLP spans so that the result does not depend on the order
they arrive in, nor on how they are split into requests, nor on retries.

Ids are derived from (project, trace id, span id), so a span sent twice is
one row. Per project and trace the database remembers which session the
trace landed in (``otlp_traces``) and each span's parent and whether it became
a step (``otlp_spans``). With that:

- A trace's session is the one named by its earliest-starting span that
  names one (ties by span id); until a span names one, the trace is a session
  of its own (a server-made UUID4), finished when its root span arrives. When
  a naming span arrives later, the trace's rows move to the named session and
  the trace's own session is deleted.
- An event (LLM or tool span) or a child step sits in the step of its nearest
  ancestor that is a step. While an ancestor has not arrived, its id stands in
  (as if it were a step); when it arrives and is an event, what stood under it
  moves up to its own anchor.

Each trace is handled under a per-trace lock (PostgreSQL advisory lock; SQLite
serialises writers anyway), so concurrent requests for one trace on several
server replicas cannot interleave.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from dataclasses import dataclass
from typing import Any

from ..store import Record, Store, clean_text
from .otlp_mapping import SpanIn, fields_of


def row_id(project: str, trace_id: str, span_id: str) -> str:
    """The step or event id of a span: stable, and distinct per project."""
    digest = hashlib.blake2b(f"{project}\0{trace_id}\0{span_id}".encode(), digest_size=16)
    return "otel-" + digest.hexdigest()


@dataclass
class _Trace:
    session_id: str
    is_placeholder: bool
    named_start: float | None
    named_span: str | None


@dataclass
class Outcome:
    accepted: int = 0
    rejected: int = 0
    reason: str | None = None

    def refuse(self, count: int, reason: str) -> None:
        self.rejected += count
        self.reason = self.reason or reason


def ingest(store: Store, project: str, spans: list[SpanIn]) -> Outcome:
    """Store ``spans`` for ``project`` in one transaction."""
    by_trace: dict[str, list[SpanIn]] = {}
    for span in spans:
        by_trace.setdefault(span.trace_id, []).append(span)
    outcome = Outcome()

    def run(cur: Any) -> None:
        for trace_id in sorted(by_trace):  # one lock order for every request
            _ingest_trace(store, cur, project, trace_id, by_trace[trace_id], outcome)

    store.transaction(run)
    return outcome


def _sort_key(span: SpanIn) -> tuple[float, str]:
    return (span.start if span.start is not None else float("inf"), span.span_id)


def _ingest_trace(store: Store, cur: Any, project: str, trace_id: str, spans: list[SpanIn],
                  outcome: Outcome) -> None:
    ph = store.placeholder
    if store.dialect == "postgresql":
        cur.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 7514203))",
                    (f"{project}\n{trace_id}",))
    cur.execute(f"SELECT session_id, is_placeholder, named_start, named_span FROM otlp_traces "
                f"WHERE project = {ph} AND trace_id = {ph}", (project, trace_id))
    found = cur.fetchone()
    stored = _Trace(found[0], bool(found[1]), found[2], found[3]) if found else None

    naming = min((s for s in spans if s.session_name() is not None), key=_sort_key,
                 default=None)
    target = stored
    if naming is not None and (stored is None or stored.is_placeholder or
                               _sort_key(naming) < (stored.named_start
                                                    if stored.named_start is not None
                                                    else float("inf"),
                                                    stored.named_span or "")):
        target = _Trace(str(naming.session_name()), False, naming.start, naming.span_id)
    if target is None:
        target = _Trace(str(uuid.uuid4()), True, None, None)

    first = min((s.start for s in spans if s.start is not None), default=None)
    if not _claim_session(store, cur, project, target, spans, first):
        outcome.refuse(len(spans), f"session {target.session_id!r} belongs to another project "
                                   "or cannot be used")
        return

    known = _known_spans(store, cur, project, trace_id)
    if stored is not None and stored.session_id != target.session_id:
        _move(store, cur, project, trace_id, known, stored, target.session_id)
    cur.execute("INSERT INTO otlp_traces (project, trace_id, session_id, is_placeholder, "
                f"named_start, named_span) VALUES ({ph}, {ph}, {ph}, {ph}, {ph}, {ph}) "
                "ON CONFLICT (project, trace_id) DO UPDATE SET session_id = excluded.session_id, "
                "is_placeholder = excluded.is_placeholder, named_start = excluded.named_start, "
                "named_span = excluded.named_span",
                (project, trace_id, target.session_id, int(target.is_placeholder),
                 target.named_start, target.named_span))

    previously = dict(known)
    for span in spans:
        known[span.span_id] = (span.parent_id, span.role == "step")
    cur.executemany(
        "INSERT INTO otlp_spans (project, trace_id, span_id, parent_span_id, is_step) "
        f"VALUES ({ph}, {ph}, {ph}, {ph}, {ph}) ON CONFLICT (project, trace_id, span_id) "
        "DO UPDATE SET parent_span_id = excluded.parent_span_id, is_step = excluded.is_step",
        [(project, trace_id, s.span_id, s.parent_id, int(s.role == "step")) for s in spans])

    def anchor(span_id: str) -> str | None:
        """The step id an event or step under ``span_id`` belongs in."""
        seen = set()
        parent = known[span_id][0]
        while parent is not None and parent not in seen:
            seen.add(parent)
            entry = known.get(parent)
            if entry is None or entry[1]:
                return row_id(project, trace_id, parent)
            parent = entry[0]
        return None

    waiting = {parent for parent, _ in previously.values() if parent is not None}
    records: list[Record] = []
    for span in spans:
        own = row_id(project, trace_id, span.span_id)
        fields = fields_of(span)
        if span.role == "step":
            fields.update(session_id=target.session_id, parent_step_id=anchor(span.span_id))
            records.append(("step", own, span.end or span.start or 0.0, fields))
            continue
        fields.update(session_id=target.session_id, step_id=anchor(span.span_id))
        records.append(("event", own, span.end or span.start or 0.0, fields))
        if span.span_id in waiting:  # rows that stood under this span move up
            moved_to = anchor(span.span_id)
            for table, column in (("steps", "parent_step_id"), ("events", "step_id")):
                cur.execute(f"UPDATE {table} SET {column} = {ph} WHERE session_id = {ph} "
                            f"AND {column} = {ph}", (moved_to, target.session_id, own))
    store.apply(cur, records, project)
    _session_times(store, cur, target, spans, first)
    outcome.accepted += len(spans)


def _claim_session(store: Store, cur: Any, project: str, target: _Trace,
                   spans: list[SpanIn], first: float | None) -> bool:
    """Create the target session unless it exists; False if it is another
    project's."""
    ph = store.placeholder
    agent = next((clean_text(str(s.resource["service.name"])) for s in spans
                  if s.resource.get("service.name")), None)
    root = next((s for s in spans if s.parent_id is None), None)
    name = clean_text(root.name) if target.is_placeholder and root is not None else None
    cur.execute("INSERT INTO sessions (id, project, agent_id, name, started_at, updated_at) "
                f"VALUES ({ph}, {ph}, {ph}, {ph}, {ph}, {ph}) ON CONFLICT (id) DO NOTHING",
                (target.session_id, project, agent, name, first,
                 first if first is not None else time.time()))
    cur.execute(f"SELECT project FROM sessions WHERE id = {ph}", (target.session_id,))
    owner = cur.fetchone()
    return owner is not None and owner[0] == project


def _known_spans(store: Store, cur: Any, project: str,
                 trace_id: str) -> dict[str, tuple[str | None, bool]]:
    ph = store.placeholder
    cur.execute(f"SELECT span_id, parent_span_id, is_step FROM otlp_spans WHERE project = {ph} "
                f"AND trace_id = {ph}", (project, trace_id))
    return {row[0]: (row[1], bool(row[2])) for row in cur.fetchall()}


def _move(store: Store, cur: Any, project: str, trace_id: str,
          known: dict[str, tuple[str | None, bool]], stored: _Trace, session_id: str) -> None:
    """Move the trace's stored rows to ``session_id``; drop the trace's own
    session once nothing is left in it."""
    ph = store.placeholder
    ids = [row_id(project, trace_id, span_id) for span_id in known]
    for start in range(0, len(ids), 500):
        chunk = ids[start:start + 500]
        marks = ", ".join([ph] * len(chunk))
        for table in ("steps", "events"):
            cur.execute(f"UPDATE {table} SET session_id = {ph} WHERE session_id = {ph} "
                        f"AND id IN ({marks})", (session_id, stored.session_id, *chunk))
    if stored.is_placeholder:
        cur.execute(f"DELETE FROM sessions WHERE id = {ph} AND project = {ph} "
                    f"AND NOT EXISTS (SELECT 1 FROM steps WHERE session_id = {ph}) "
                    f"AND NOT EXISTS (SELECT 1 FROM events WHERE session_id = {ph})",
                    (stored.session_id, project, stored.session_id, stored.session_id))


def _session_times(store: Store, cur: Any, target: _Trace, spans: list[SpanIn],
                   first: float | None) -> None:
    """Earliest start over every span; for a trace's own session, the root
    span's name and end finish it."""
    ph = store.placeholder
    if first is not None:
        cur.execute(f"UPDATE sessions SET started_at = {ph} WHERE id = {ph} "
                    f"AND (started_at IS NULL OR started_at > {ph})",
                    (first, target.session_id, first))
    root = next((s for s in spans if s.parent_id is None), None)
    if target.is_placeholder and root is not None:
        ended = max((s.end for s in spans if s.end is not None), default=None)
        cur.execute(f"UPDATE sessions SET name = {ph}, is_finished = 1, ended_at = CASE WHEN "
                    f"ended_at IS NULL OR ended_at < {ph} THEN {ph} ELSE ended_at END "
                    f"WHERE id = {ph}",
                    (clean_text(root.name) or None, ended, ended, target.session_id))
