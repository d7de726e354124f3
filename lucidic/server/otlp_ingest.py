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

from ..store import DeletedSessionError, Record, Store, clean_text
from .otlp_mapping import SpanIn, fields_of, session_fields


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
    """Store ``spans`` for ``project`` in one transaction, with a few
    statements per request rather than per trace."""
    by_trace: dict[str, list[SpanIn]] = {}
    for span in spans:
        by_trace.setdefault(span.trace_id, []).append(span)
    # What each trace's Langfuse spans say of its session, worked out once.
    said = {trace_id: session_fields(trace) for trace_id, trace in by_trace.items()}
    outcome = Outcome()

    def run(cur: Any) -> None:
        traces = sorted(by_trace)  # one lock order for every request
        lock_traces(store, cur, project, traces)
        stored = _stored_traces(store, cur, project, traces)
        targets = {t: _target(stored.get(t), by_trace[t]) for t in traces}
        # A deleted session's spans are refused for good, the others kept
        # (no session row made for them: migration 12's trigger would
        # refuse the whole request); so are those of a trace that was in a
        # deleted session (its otlp_traces row is kept for that), whatever
        # session they name.
        deleted = set(store.deleted_in(cur, sorted(
            {t.session_id for t in targets.values()} | {t.session_id for t in stored.values()})))
        for trace_id in traces:
            gone = next((t.session_id for t in (stored.get(trace_id), targets[trace_id])
                         if t is not None and t.session_id in deleted), None)
            if gone is not None:
                outcome.refuse(len(by_trace[trace_id]), deleted_reason(gone))
                del targets[trace_id]
        refused = _claim_sessions(store, cur, project, targets, by_trace, said)
        accepted = [t for t in traces if t in targets and targets[t].session_id not in refused]
        for trace_id in traces:
            if trace_id in targets and targets[trace_id].session_id in refused:
                outcome.refuse(len(by_trace[trace_id]),
                               f"session {targets[trace_id].session_id!r} belongs to another "
                               "project or cannot be used")
        if not accepted:
            return
        known = _known_spans(store, cur, project, accepted)
        records: list[Record] = []
        for trace_id in accepted:
            target, before = targets[trace_id], stored.get(trace_id)
            spans_known = known.setdefault(trace_id, {})
            if before is not None and before.session_id != target.session_id:
                _move(store, cur, project, trace_id, spans_known, before, target.session_id)
            records.extend(_rows(store, cur, project, trace_id, by_trace[trace_id], target,
                                 spans_known))
            if said[trace_id]:
                # Newer spans' word wins (the store's rule for every record).
                ts = max((s.end or s.start or 0.0 for s in by_trace[trace_id]), default=0.0)
                records.append(("session", target.session_id, ts, dict(said[trace_id])))
            outcome.accepted += len(by_trace[trace_id])
        ph = store.placeholder
        cur.executemany(
            "INSERT INTO otlp_traces (project, trace_id, session_id, is_placeholder, "
            f"named_start, named_span) VALUES ({ph}, {ph}, {ph}, {ph}, {ph}, {ph}) "
            "ON CONFLICT (project, trace_id) DO UPDATE SET session_id = excluded.session_id, "
            "is_placeholder = excluded.is_placeholder, named_start = excluded.named_start, "
            "named_span = excluded.named_span",
            [(project, t, targets[t].session_id, int(targets[t].is_placeholder),
              targets[t].named_start, targets[t].named_span) for t in accepted])
        cur.executemany(
            "INSERT INTO otlp_spans (project, trace_id, span_id, parent_span_id, is_step) "
            f"VALUES ({ph}, {ph}, {ph}, {ph}, {ph}) ON CONFLICT (project, trace_id, span_id) "
            "DO UPDATE SET parent_span_id = excluded.parent_span_id, is_step = excluded.is_step",
            [(project, t, s.span_id, s.parent_id, int(s.role == "step"))
             for t in accepted for s in by_trace[t]])
        store.apply(cur, records, project)
        _session_times(store, cur, {t: targets[t] for t in accepted}, by_trace, said)

    try:
        store.transaction(run)
    except DeletedSessionError:
        # (PostgreSQL) A deletion committed after this looked its sessions
        # up, and migration 12's trigger refused the lot: stored again, it
        # sees the deletion and refuses that session's spans alone.
        outcome.accepted, outcome.rejected, outcome.reason = 0, 0, None
        store.transaction(run)
    return outcome


def deleted_reason(session_id: str) -> str:
    """Why a record naming a deleted session is refused (every door says it so)."""
    return f"session {session_id!r} was deleted: records for a deleted session are refused"


def lock_traces(store: Store, cur: Any, project: str, traces: list[str]) -> None:
    """Hold the traces (sorted) for the rest of the transaction: on
    PostgreSQL an advisory lock each; SQLite serialises writers anyway."""
    if store.dialect == "postgresql":
        cur.executemany("SELECT pg_advisory_xact_lock(hashtextextended(%s, 7514203))",
                        [(f"{project}\n{trace_id}",) for trace_id in traces])


def trace_rows(store: Store, cur: Any, project: str, trace_id: str,
               span_ids: list[str]) -> tuple[str, dict[str, tuple[str, str]]]:
    """For something that names a trace and some of its spans before or
    after they arrive (a Langfuse score): the session the trace's rows are in,
    and each span's row as ("step" or "event", id); a span not arrived yet is
    taken for an event. A trace not seen yet is given its own session now,
    as ingest gives one (a span that names a session moves it there, what
    was attached to it included). ValueError when the trace was in a
    session since deleted. Call it in a transaction, after lock_traces."""
    ph = store.placeholder
    stored = _stored_traces(store, cur, project, [trace_id]).get(trace_id)
    if stored is not None and store.deleted_in(cur, [stored.session_id]):
        raise ValueError(deleted_reason(stored.session_id))
    if stored is None:
        stored = _Trace(str(uuid.uuid4()), True, None, None)
        now = time.time()
        # It starts now, until its spans say when (_session_times).
        cur.execute("INSERT INTO sessions (id, project, started_at, updated_at) "
                    f"VALUES ({ph}, {ph}, {ph}, {ph})", (stored.session_id, project, now, now))
        cur.execute("INSERT INTO otlp_traces (project, trace_id, session_id, is_placeholder, "
                    f"named_start, named_span) VALUES ({ph}, {ph}, {ph}, 1, NULL, NULL)",
                    (project, trace_id, stored.session_id))
        store.note_changed(cur, [stored.session_id])
    known = _known_spans(store, cur, project, [trace_id]).get(trace_id, {})
    rows = {span_id: ("step" if known.get(span_id, (None, False))[1] else "event",
                      row_id(project, trace_id, span_id)) for span_id in span_ids}
    return stored.session_id, rows


def _sort_key(span: SpanIn) -> tuple[float, str]:
    return (span.start if span.start is not None else float("inf"), span.span_id)


def _target(stored: _Trace | None, spans: list[SpanIn]) -> _Trace:
    """The session a trace belongs in, given what is stored and these spans."""
    naming = min((s for s in spans if s.session_name() is not None), key=_sort_key,
                 default=None)
    if naming is not None and (stored is None or stored.is_placeholder or _sort_key(naming) < (
            stored.named_start if stored.named_start is not None else float("inf"),
            stored.named_span or "")):
        return _Trace(str(naming.session_name()), False, naming.start, naming.span_id)
    return stored or _Trace(str(uuid.uuid4()), True, None, None)


def _chunks(items: list[str], size: int = 500) -> list[list[str]]:
    return [items[i:i + size] for i in range(0, len(items), size)]


def _stored_traces(store: Store, cur: Any, project: str,
                   traces: list[str]) -> dict[str, _Trace]:
    ph = store.placeholder
    found: dict[str, _Trace] = {}
    for chunk in _chunks(traces):
        cur.execute("SELECT trace_id, session_id, is_placeholder, named_start, named_span "
                    f"FROM otlp_traces WHERE project = {ph} AND trace_id IN "
                    f"({', '.join([ph] * len(chunk))})", (project, *chunk))
        for row in cur.fetchall():
            found[row[0]] = _Trace(row[1], bool(row[2]), row[3], row[4])
    return found


def _rows(store: Store, cur: Any, project: str, trace_id: str, spans: list[SpanIn],
          target: _Trace, known: dict[str, tuple[str | None, bool]]) -> list[Record]:
    """The step and event records of a trace's spans, each in the step of its
    nearest step ancestor; what stood under a span that turns out to be an
    event moves up to that span's own anchor."""
    ph = store.placeholder
    waiting = {parent for parent, _ in known.values() if parent is not None}
    for span in spans:
        known[span.span_id] = (span.parent_id, span.role == "step")

    def anchor(span_id: str) -> str | None:
        seen = set()
        parent = known[span_id][0]
        while parent is not None and parent not in seen:
            seen.add(parent)
            entry = known.get(parent)
            if entry is None or entry[1]:
                return row_id(project, trace_id, parent)
            parent = entry[0]
        return None

    records: list[Record] = []
    for span in spans:
        own = row_id(project, trace_id, span.span_id)
        fields = fields_of(span)
        ts = span.end or span.start or 0.0
        if span.role == "step":
            fields.update(session_id=target.session_id, parent_step_id=anchor(span.span_id))
            records.append(("step", own, ts, fields))
            continue
        fields.update(session_id=target.session_id, step_id=anchor(span.span_id))
        records.append(("event", own, ts, fields))
        if span.span_id in waiting:
            moved_to = anchor(span.span_id)
            for table, column in (("steps", "parent_step_id"), ("events", "step_id")):
                cur.execute(f"UPDATE {table} SET {column} = {ph} WHERE session_id = {ph} "
                            f"AND {column} = {ph}", (moved_to, target.session_id, own))
    return records


def _claim_sessions(store: Store, cur: Any, project: str, targets: dict[str, _Trace],
                    by_trace: dict[str, list[SpanIn]],
                    said: dict[str, dict[str, Any]]) -> set[str]:
    """Create the target sessions that do not exist (and give those of the
    project an agent and name where they have none); the ids of those that
    are another project's (which the traces naming them cannot use)."""
    ph = store.placeholder
    rows: dict[str, tuple[Any, ...]] = {}
    for trace_id, target in targets.items():
        spans = by_trace[trace_id]
        agent = next((clean_text(str(s.resource["service.name"])) for s in spans
                      if s.resource.get("service.name")), None)
        root = next((s for s in spans if s.parent_id is None), None)
        name = _own_name(root, said[trace_id]) if target.is_placeholder and root is not None \
            else None
        first = min((s.start for s in spans if s.start is not None), default=None)
        rows.setdefault(target.session_id, (target.session_id, project, agent, name, first,
                                            first if first is not None else time.time()))
    # A session made before its spans (by a Langfuse score, of the trace or
    # of the session id) gets the agent and name they would have made it
    # with, where it has none: what it says itself stands. (Only a row that
    # changes is written: most requests add to a session that has both.)
    cur.executemany("INSERT INTO sessions (id, project, agent_id, name, started_at, updated_at) "
                    f"VALUES ({ph}, {ph}, {ph}, {ph}, {ph}, {ph}) ON CONFLICT (id) DO UPDATE "
                    "SET agent_id = COALESCE(sessions.agent_id, excluded.agent_id), "
                    "name = COALESCE(sessions.name, excluded.name) "
                    "WHERE sessions.project = excluded.project "
                    "AND ((sessions.agent_id IS NULL AND excluded.agent_id IS NOT NULL) "
                    "OR (sessions.name IS NULL AND excluded.name IS NOT NULL))",
                    list(rows.values()))
    theirs: set[str] = set()
    for chunk in _chunks(sorted(rows)):
        cur.execute(f"SELECT id FROM sessions WHERE project <> {ph} AND id IN "
                    f"({', '.join([ph] * len(chunk))})", (project, *chunk))
        theirs.update(row[0] for row in cur.fetchall())
    return theirs


def _known_spans(store: Store, cur: Any, project: str,
                 traces: list[str]) -> dict[str, dict[str, tuple[str | None, bool]]]:
    """Each trace's stored spans: parent and whether it became a step."""
    ph = store.placeholder
    known: dict[str, dict[str, tuple[str | None, bool]]] = {}
    for chunk in _chunks(traces):
        cur.execute("SELECT trace_id, span_id, parent_span_id, is_step FROM otlp_spans "
                    f"WHERE project = {ph} AND trace_id IN ({', '.join([ph] * len(chunk))})",
                    (project, *chunk))
        for trace_id, span_id, parent, is_step in cur.fetchall():
            known.setdefault(trace_id, {})[span_id] = (parent, bool(is_step))
    return known


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
    store.note_changed(cur, (stored.session_id, session_id))
    if stored.is_placeholder:
        # What was attached to the trace before a span named its session (a
        # Langfuse score) goes with it: nothing else is in a trace's own session.
        cur.execute(f"UPDATE scores SET session_id = {ph} WHERE project = {ph} "
                    f"AND session_id = {ph}", (session_id, project, stored.session_id))
        cur.execute(f"DELETE FROM sessions WHERE id = {ph} AND project = {ph} "
                    f"AND NOT EXISTS (SELECT 1 FROM steps WHERE session_id = {ph}) "
                    f"AND NOT EXISTS (SELECT 1 FROM events WHERE session_id = {ph})",
                    (stored.session_id, project, stored.session_id, stored.session_id))


def _own_name(root: SpanIn, said: dict[str, Any]) -> str | None:
    """The name of a trace's own session: the Langfuse trace's name (in what
    its spans ``said``, see session_fields), else its root span's."""
    named = said.get("name")
    return clean_text(str(named) if named is not None else root.name) or None


def _session_times(store: Store, cur: Any, targets: dict[str, _Trace],
                   by_trace: dict[str, list[SpanIn]], said: dict[str, dict[str, Any]]) -> None:
    """Each session starts at its earliest span; a trace's own session is
    named and finished by its root span."""
    ph = store.placeholder
    starts: dict[str, float] = {}
    finished = []
    for trace_id, target in targets.items():
        spans = by_trace[trace_id]
        first = min((s.start for s in spans if s.start is not None), default=None)
        if first is not None:
            starts[target.session_id] = min(first, starts.get(target.session_id, first))
        root = next((s for s in spans if s.parent_id is None), None)
        if target.is_placeholder and root is not None:
            ended = max((s.end for s in spans if s.end is not None), default=None)
            finished.append((_own_name(root, said[trace_id]), ended, ended, target.session_id))
    if starts:
        cur.executemany(f"UPDATE sessions SET started_at = {ph} WHERE id = {ph} "
                        f"AND (started_at IS NULL OR started_at > {ph})",
                        [(first, sid, first) for sid, first in starts.items()])
    if finished:
        cur.executemany(f"UPDATE sessions SET name = {ph}, is_finished = 1, ended_at = CASE "
                        f"WHEN ended_at IS NULL OR ended_at < {ph} THEN {ph} ELSE ended_at END "
                        f"WHERE id = {ph}", finished)
