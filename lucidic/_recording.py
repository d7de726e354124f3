"""The recording core: one Step and one Event for every path that records.

A step is opened and ended by the public calls (``create_step`` /
``end_step``), by ``@lai.step``, by the plugin API (``open_step``,
``step_scope``, ``StepHandle``) and, for steps left open, by the end of its
session; an event by ``create_event``, ``@lai.event``, a plugin's
``record_event`` or LLM call, and the crash hook. Each of them makes the same
:class:`Step` or :class:`Event` and ends it the same way, as OpenTelemetry's
SDK has one ``Span`` for every path. What they differ in (which fields, which
arguments are allowed) is theirs; how a record is built, masked, stamped with
its writer and queued is written once, here.

This is the hot path, run in the user's thread: no I/O, no lock, nothing but
building a record and appending it to the pipeline's queue. A ``Step`` is
also the frame the context keeps for "the current step" (see ``_context``),
so a decorated call makes one object, not two.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from ._context import Binding, EventRef, current_step, last_event
from ._records import mask_fields, mask_text, masking_raised, masking_returned, text_field

if TYPE_CHECKING:
    from .store import Record

_time = time.time
_perf = time.perf_counter
_step_get = current_step.get

#: Passed as ``parent``/``step_id``: the step current in the caller's context
#: (if it belongs to the same session).
CURRENT: Any = object()


def put(binding: Binding, kind: str, record_id: str, fields: dict[str, Any], ts: float) -> None:
    """Mask a record's text and queue it."""
    mask = binding.mask
    if mask is not None:
        mask_fields(mask, fields)
    binding.pipeline.put((kind, record_id, ts, fields))


# -- steps --------------------------------------------------------------------------

class Step:
    """A step being recorded, and its place in the context's stack of steps.

    Opened by :func:`open_step` (which queues the record that creates it),
    amended by :meth:`update`, finished by :meth:`end`. ``parent`` is the
    enclosing step in the same context (a frame of the stack, not a record)."""

    __slots__ = ("binding", "forks", "parent", "record", "session_id", "step_id")

    def __init__(self, binding: Binding, step_id: str, parent: Step | None = None,
                 record: Record | None = None, forks: int = 0) -> None:
        # (open_step makes a decorated call's Step without calling this: the two alike)
        self.binding = binding
        self.session_id = binding.session_id
        self.step_id = step_id
        self.parent = parent
        #: The record that opened the step, while its end may be merged into
        #: it (see open_step's ``merge_end``), and the pipeline's fork count then.
        self.record = record
        self.forks = forks

    def update(self, fields: dict[str, Any]) -> None:
        """Amend the step (fields that are None leave what is stored alone)."""
        fields["session_id"] = self.session_id
        put(self.binding, "step", self.step_id, fields, _time())

    def end(self, fields: dict[str, Any] | None = None, *, error: str | None = None) -> None:
        """Finish the step, with any last fields and the error that ended it."""
        now = _time()
        if fields is None:
            # The usual end (a decorated call returning or raising), merged
            # into the record that opened the step if that is still possible.
            fields = {"ended_at": now, "is_finished": True}
            if error is not None:
                mask = self.binding.mask
                fields["error"] = error if mask is None else mask_text(mask, error)
            record = self.record
            if record is not None:
                self.record = None
                if self.binding.pipeline.amend_last(record, fields, now, self.forks):
                    return
            fields["session_id"] = self.session_id
            self.binding.pipeline.put(("step", self.step_id, now, fields))
            return
        fields["session_id"] = self.session_id
        fields["ended_at"] = now
        fields["is_finished"] = True
        if error is not None:
            fields["error"] = error
        put(self.binding, "step", self.step_id, fields, now)

    def reparented(self, parent: Step | None) -> Step:
        """The same step as a frame of another stack (see _api.end_step)."""
        return Step(self.binding, self.step_id, parent)


def open_step(binding: Binding, fields: dict[str, Any], parent: Any = CURRENT,
              maskable: Iterable[str] | None = None, merge_end: bool = False,
              kind: type[Step] = Step) -> Step:
    """Open a step in ``binding``'s session, nested in ``parent`` (by default
    the context's current step, if it is this session's): queue the record
    that creates it, stamped with its writer. Takes ownership of ``fields``.
    ``kind``: the class of step to make (the plugin API's StepHandle is one).
    ``maskable``: the only fields that hold the user's text, each a str, when
    the caller knows (a decorator's, made once); else every field is looked at.

    ``merge_end``: if the step ends before anything else is queued after its
    start, and before the worker takes it, its end is merged into this
    record: one record to deliver and store instead of two, exactly what the
    store makes of the two (a short decorated call, the common case). Only
    for steps whose id nothing outside this process can know before they
    end, so that no other writer's record can fall between the two."""
    session_id = binding.session_id
    if parent is CURRENT:
        parent = _step_get()
        if parent is not None and parent.session_id != session_id:
            parent = None
    ids = binding.state.ids  # the session's, so updates can tell its ids (made_here)
    step_id = f"{ids.prefix}{next(ids.counter):x}"
    now = _time()
    fields["session_id"] = session_id
    if parent is not None:
        # (None is left out, which is the same to every store and costs
        # SQLite's driver less than binding a None among values)
        fields["parent_step_id"] = parent.step_id
    fields["started_at"] = now
    mask = binding.mask
    if mask is not None:
        if maskable is None:
            mask_fields(mask, fields)
        else:
            # (mask_text, written out: every decorated step of a masked
            # session runs this, and the calls it saves were half of what
            # masking cost beyond the masking function's own calls)
            for key in maskable:
                try:
                    masked = mask(fields[key])
                except Exception as exc:  # noqa: BLE001 - the user's function may raise anything
                    masked = masking_raised(exc)
                fields[key] = masked if type(masked) is str else masking_returned(masked)
    fields.update(binding.writer)  # the record that creates a row names its writer
    record = ("step", step_id, now, fields)
    pipeline = binding.pipeline
    pipeline.put(record)
    if merge_end and kind is Step:
        # Step(binding, step_id, parent, record, pipeline.forks), made here:
        # on Python 3.11 a class call's own call of __init__ costs more than
        # setting the six attributes (3% of a decorated step).
        step = _new_object(Step)
        step.binding, step.session_id, step.step_id = binding, session_id, step_id
        step.parent, step.record, step.forks = parent, record, pipeline.forks
        return step
    if merge_end:
        return kind(binding, step_id, parent, record, pipeline.forks)
    return kind(binding, step_id, parent)


_new_object = object.__new__


def current_step_of(binding: Binding) -> Step | None:
    """The context's current step, if it belongs to ``binding``'s session."""
    step = _step_get()
    return step if step is not None and step.session_id == binding.session_id else None


# -- events ---------------------------------------------------------------------------

class Event:
    """An event being recorded: begun when what it records starts (a decorated
    call, an LLM request), ended once with the one record that stores it.
    ``step_id`` is the step it belongs to: the one current when it began,
    unless named. (An event that has already happened, ``create_event``'s,
    is recorded by :func:`record_event` without an object to keep.)"""

    __slots__ = ("binding", "done", "event_id", "started", "started_at", "step_id")

    def __init__(self, binding: Binding, step_id: Any = CURRENT) -> None:
        self.binding = binding
        self.step_id: str | None = _step_of(binding) if step_id is CURRENT else step_id
        self.event_id: str | None = None
        self.started_at = _time()
        self.started = _perf()
        self.done = False

    def end(self, fields: dict[str, Any], *, event_id: str | None = None) -> str:
        """Record the event (once: later calls only return its id). Its start,
        end and duration are those of this object's life (fields already
        holding them win)."""
        if self.done:
            return self.event_id or ""
        self.done = True
        elapsed = _perf() - self.started
        fields.setdefault("started_at", self.started_at)
        fields.setdefault("ended_at", self.started_at + elapsed)
        fields.setdefault("duration", elapsed)
        self.event_id = _queue_event(self.binding, self.step_id, event_id, fields, _time())
        return self.event_id


def record_event(binding: Binding, fields: dict[str, Any], *, step_id: Any = CURRENT,
                 event_id: str | None = None) -> str:
    """Record one event that has already happened (begun and ended now)."""
    now = _time()
    fields.setdefault("started_at", now)
    fields.setdefault("ended_at", now)
    return _queue_event(binding, _step_of(binding) if step_id is CURRENT else step_id,
                        event_id, fields, now)


def _step_of(binding: Binding) -> str | None:
    step = _step_get()
    return step.step_id if step is not None and step.session_id == binding.session_id else None


def _queue_event(binding: Binding, step_id: str | None, event_id: str | None,
                 fields: dict[str, Any], ts: float) -> str:
    """The one place an event's record is built and queued: its id (the
    session's prefix and a counter), session and step, masking, writer; and
    it becomes the context's last event (update_event's default)."""
    session_id = binding.session_id
    if event_id is None:
        ids = binding.state.ids
        event_id = f"{ids.prefix}{next(ids.counter):x}"
    fields["session_id"] = session_id
    if step_id is not None:
        fields["step_id"] = step_id
    elif "step_id" in fields:
        del fields["step_id"]  # the event's step is the one given or current, never a field
    fields["is_finished"] = True
    if binding.mask is not None:
        mask_fields(binding.mask, fields)
    fields.update(binding.writer)  # the record that creates a row names its writer
    binding.pipeline.put(("event", event_id, ts, fields))
    last_event.set(_new_ref(EventRef, (session_id, event_id)))
    return event_id


#: EventRef made in C (a NamedTuple's own __new__ is Python): the hot path.
_new_ref = tuple.__new__


def amend_event(binding: Binding, event_id: str, fields: dict[str, Any], *,
                end: bool = False) -> None:
    """Amend a recorded event (update_event, end_event: by id, from anywhere);
    ``end`` stamps its end time."""
    now = _time()
    fields["session_id"] = binding.session_id
    if end:
        fields["ended_at"] = now
    put(binding, "event", event_id, fields, now)


def record_error(binding: Binding, description: str | None, error: str | None) -> None:
    """An error event (an uncaught exception, a failed run) in the session."""
    record_event(binding, {"type": "error", "description": text_field(description),
                           "error": text_field(error)})


# -- sessions' own records --------------------------------------------------------------

def put_session(binding: Binding, fields: dict[str, Any], ts: float | None = None) -> None:
    """Amend the session's own record (results, run fields); ``project`` is
    stamped, the guard a session record needs."""
    fields["project"] = binding.project
    put(binding, "session", binding.session_id, fields, _time() if ts is None else ts)
