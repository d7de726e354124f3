"""Sessions in this process: opened (new or continued), bound to a scope,
amended, ended or detached.

Part of the recording core, under the public calls: ``lai.init``,
``continue_session``, ``continued``, ``session``, ``end_session``,
``detach``, auto_end at exit and ``lucidic.evals`` all open and end sessions
here. A :class:`~lucidic._context.Binding` is one use of a session by a
scope (the process, or a block); the session's own state in this process is
shared by its bindings (``SessionState``).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

from . import _config, _continuation
from ._context import Binding, install_context_propagation
from ._internal import log_rate_limited, swallow
from ._pipeline import Pipeline
from ._recording import Step, put_session
from ._records import Mask, mask_fields
from ._runtime import flush_pipeline, runtime, writer
from ._sinks import Sink, SinkError
from .errors import InvalidOperationError, ServerUnavailableError
from .store import Record

#: The project the SDK names on session (and experiment) records. The
#: embedded store has no accounts, so everything in it is one project; a
#: server stamps its API key's project on what it takes instead.
LOCAL_PROJECT = "default"

#: Called with each binding whose session this process ends, once its records
#: are delivered: lucidic.evals, when imported, scores the sessions that name
#: an experiment or rubrics there.
session_end_hooks: list[Callable[[Binding], None]] = []


def sink_for(base_url: str | None, api_key: str | None) -> Sink:
    """Where this process's records for these credentials go."""
    sink = runtime.make_sink(base_url, api_key)
    sink.verify()  # no key at all: APIKeyVerificationError, without the network
    return sink


def _bind(session_id: str, pipeline: Pipeline, project: str, *, mask: Mask | None,
          auto_end: bool, agent_id: str | None) -> Binding:
    install_context_propagation()
    binding = Binding(runtime.state(session_id), pipeline, mask=mask, auto_end=auto_end,
                      agent_id=agent_id, project=project, writer=writer.fields(agent_id))
    runtime.register(binding)
    return binding


def create(sink: Sink, session_id: str | None, fields: dict[str, Any], *, mask: Mask | None,
           auto_end: bool, agent_id: str | None) -> Binding:
    """Make a new session and bind it; the caller decides the scope. With no
    ``session_id`` (a UUID4 is made) nothing waits on the network; a given
    one is claimed first, and refused if it is taken."""
    given = session_id is not None
    if session_id is None:
        session_id = str(uuid.uuid4())
    pipeline = runtime.pipeline_for(sink)
    project = LOCAL_PROJECT
    now = time.time()
    record_fields = {"project": project, "agent_id": agent_id, "started_at": now, **fields}
    if mask is not None:
        mask_fields(mask, record_fields)
    record: Record = ("session", session_id, now, record_fields)
    if given:
        _claim(sink, pipeline, record)
    else:
        write_at_once(sink, pipeline, record)
    binding = _bind(session_id, pipeline, project, mask=mask, auto_end=auto_end,
                    agent_id=agent_id)
    binding.state.evaluated = bool(fields.get("experiment_id") or fields.get("rubrics"))
    return binding


def resume(sink: Sink, session_id: str, *, mask: Mask | None, auto_end: bool,
           agent_id: str | None) -> Binding:
    """Continue an existing, unfinished session of these credentials and
    bind it; InvalidOperationError says why it cannot be continued."""
    info = check_continuable(sink, session_id, agent_id)
    # Over the embedded store, a session written through a server sharing its
    # file keeps its project: session records carry it, or they would not apply.
    project = (info or {}).get("project") or LOCAL_PROJECT
    binding = _bind(session_id, runtime.pipeline_for(sink), project, mask=mask,
                    auto_end=auto_end, agent_id=agent_id)
    if info is not None:
        binding.state.evaluated = bool(info.get("experiment_id") or info.get("rubrics"))
    return binding


def _claim(sink: Sink, pipeline: Pipeline, record: Record) -> None:
    """Create a session under the id its caller chose, refusing an id that is
    taken: InvalidOperationError, in the same words whoever holds it."""
    try:
        # A server decides atomically, within LUCIDIC_CONNECT_TIMEOUT.
        sink.claim_session(record)
    except (SinkError, ServerUnavailableError) as exc:
        log_rate_limited("claim_unanswered", "lucidic: could not check that session id %r is "
                         "free (%s); the session is queued and created when the store or "
                         "server answers (if the id is taken by then, its records are "
                         "refused)", record[1], exc)
        _deliver_soon(pipeline, record)


def write_at_once(sink: Sink, pipeline: Pipeline, record: Record) -> None:
    """Store a record now (what others must find as soon as the call that
    made it returns); if the backend cannot take it now, queue it. A remote
    backend is never waited for: the record goes first in line instead."""
    if sink.remote:
        _deliver_soon(pipeline, record)
        return
    try:
        sink.write([record])
    except Exception as exc:  # noqa: BLE001
        log_rate_limited(f"{record[0]}_create", "lucidic: could not store %s %s yet (%s); it "
                         "is queued and will be delivered later", record[0], record[1], exc)
        pipeline.put(record)


def _deliver_soon(pipeline: Pipeline, record: Record) -> None:
    pipeline.put(record)
    pipeline.deliver_soon()


def check_continuable(sink: Sink, session_id: str,
                      agent_id: str | None) -> dict[str, Any] | None:
    """Refuse to continue an unknown, finished or other agent's session (the
    rule of lucidic._continuation); returns the stored session when the
    backend was asked."""
    state = runtime.states.get(session_id)
    if state is not None and state.finished:
        raise InvalidOperationError(_continuation.finished_message(session_id))
    if state is not None and state.bindings:
        # This process holds it open right now: no need to ask the backend.
        refused = _continuation.refusal({"agent_id": state.bindings[0].agent_id}, session_id,
                                        agent_id)
        if refused:
            raise InvalidOperationError(refused)
        return None
    try:
        # A server applies the rule itself, within LUCIDIC_CONNECT_TIMEOUT,
        # and raises what it answers (or ServerUnavailableError, naming it).
        return sink.check_continuable(session_id, agent_id)
    except SinkError as exc:
        # The embedded store is busy (another process holds its lock): the
        # records wait in the queue and the spool until it is free.
        log_rate_limited("lookup_failed", "lucidic: could not check session %s (%s); "
                         "continuing it, records will be delivered when the store answers",
                         session_id, exc)
        return None


# -- amending and ending ---------------------------------------------------------------

def update(binding: Binding, fields: dict[str, Any]) -> None:
    """Amend the session (its results, name, task, tags): None leaves a field
    as it is. An outcome given here is the user's, which a crash or an
    escaping exception no longer overrides."""
    if fields.get("is_successful") is not None:
        binding.state.outcome_set = True
    put_session(binding, fields)


def end(binding: Binding, result: dict[str, Any] | None = None, *,
        failure: str | None = None, wait: bool = True, timeout: float | None = None) -> None:
    """Finish the session for everyone: the steps opened with create_step or
    by a plugin and left open end with it; ``failure`` (why this process
    thinks it failed) marks it unsuccessful unless the user said otherwise.
    With ``wait``, its records are delivered before this returns (waiting
    ``timeout`` at most, the flush bound by default), so that another process
    sees it finished at once."""
    fields = dict(result or {})
    if fields.get("is_successful") is not None:
        binding.state.outcome_set = True
    if failure is not None and not binding.state.outcome_set \
            and fields.get("is_successful") is None:
        fields.update(is_successful=False, is_successful_reason=failure)
    for step_id in list(binding.state.open_steps):
        Step(binding, step_id).end()
    binding.state.open_steps.clear()
    for handle in list(binding.state.open_handles.values()):
        handle.end()  # (a plugin's StepHandle: it leaves open_handles as it ends)
    binding.state.open_handles.clear()
    now = time.time()
    fields.update(ended_at=now, is_finished=True)
    put_session(binding, fields, now)
    runtime.finish_state(binding.state)
    if wait:
        flush_pipeline(binding.pipeline,
                       _config.flush_timeout() if timeout is None else timeout, fail_fast=True)
    for hook in session_end_hooks:
        with swallow("session_end_hook"):
            hook(binding)


def detach(binding: Binding, *, wait: bool = True) -> None:
    """Stop this binding writing to its session without finishing it, after
    delivering what it recorded (with ``wait``)."""
    if wait:
        flush_pipeline(binding.pipeline, _config.flush_timeout(), fail_fast=True)
    runtime.release(binding)
