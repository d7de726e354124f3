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

from . import _config
from ._context import Binding, install_context_propagation
from ._internal import log_rate_limited, swallow
from ._pipeline import Pipeline
from ._recording import Step, put_session
from ._records import Mask, mask_fields
from ._runtime import runtime, writer
from ._sinks import Sink, SinkError
from .errors import APIKeyVerificationError, InvalidOperationError
from .store import Record

#: The embedded store has no accounts; everything in it is one project.
LOCAL_PROJECT = "default"

#: Called with each binding whose session this process ends, once its records
#: are delivered: lucidic.evals, when imported, scores the sessions that name
#: an experiment or rubrics there.
session_end_hooks: list[Callable[[Binding], None]] = []


def sink_for(base_url: str | None, api_key: str | None) -> Sink:
    """Where this process's records for these credentials go, its key checked."""
    sink = runtime.make_sink(base_url, api_key)
    verify = getattr(sink, "verify", None)
    if verify is not None:
        verify()  # raises APIKeyVerificationError for a bad key
    return sink


def project_of(sink: Sink) -> str:
    return getattr(sink, "project", None) or LOCAL_PROJECT


def _bind(session_id: str, sink: Sink, *, mask: Mask | None, auto_end: bool,
          agent_id: str | None) -> Binding:
    install_context_propagation()
    binding = Binding(runtime.state(session_id), runtime.pipeline_for(sink), mask=mask,
                      auto_end=auto_end, agent_id=agent_id, project=project_of(sink),
                      writer=writer.fields(agent_id))
    runtime.register(binding)
    return binding


def create(sink: Sink, session_id: str | None, fields: dict[str, Any], *, mask: Mask | None,
           auto_end: bool, agent_id: str | None) -> Binding:
    """Make a new session (a UUID4 unless ``session_id`` is given, which must
    be new) and bind it; the caller decides the scope."""
    if session_id is None:
        session_id = str(uuid.uuid4())
    else:
        try:
            if sink.lookup_session(session_id) is not None:
                raise InvalidOperationError(
                    f"a session with id {session_id!r} already exists; continue it with "
                    "lai.continue_session() or pass another session_id")
        except SinkError as exc:
            log_rate_limited("lookup_failed", "lucidic: could not check session %s (%s); "
                             "creating it", session_id, exc)
    binding = _bind(session_id, sink, mask=mask, auto_end=auto_end, agent_id=agent_id)
    binding.state.evaluated = bool(fields.get("experiment_id") or fields.get("rubrics"))
    now = time.time()
    record_fields = {"project": binding.project, "agent_id": agent_id, "started_at": now,
                     **fields}
    if mask is not None:
        mask_fields(mask, record_fields)
    # Written at once, so another process can continue the session as soon
    # as this call returns.
    write_at_once(sink, binding.pipeline, ("session", session_id, now, record_fields))
    return binding


def resume(sink: Sink, session_id: str, *, mask: Mask | None, auto_end: bool,
           agent_id: str | None) -> Binding:
    """Continue an existing, unfinished session of these credentials and
    bind it; InvalidOperationError says why it cannot be continued."""
    info = check_continuable(sink, session_id, agent_id)
    binding = _bind(session_id, sink, mask=mask, auto_end=auto_end, agent_id=agent_id)
    if info is not None:
        binding.state.evaluated = bool(info.get("experiment_id") or info.get("rubrics"))
    return binding


def write_at_once(sink: Sink, pipeline: Pipeline, record: Record) -> None:
    """Store a record now (what others must find as soon as the call that
    made it returns); if the backend cannot take it now, queue it."""
    try:
        sink.write([record])
    except Exception as exc:  # noqa: BLE001
        log_rate_limited(f"{record[0]}_create", "lucidic: could not store %s %s yet (%s); it "
                         "is queued and will be delivered later", record[0], record[1], exc)
        pipeline.put(record)


def check_continuable(sink: Sink, session_id: str,
                      agent_id: str | None) -> dict[str, Any] | None:
    """Refuse to continue an unknown, finished or other agent's session;
    returns the stored session when the backend was asked."""
    state = runtime.states.get(session_id)
    if state is not None and state.finished:
        raise InvalidOperationError(_finished_message(session_id))
    if state is not None and state.bindings:
        # This process holds it open right now: no need to ask the backend.
        _check_agent(session_id, state.bindings[0].agent_id, agent_id)
        return None
    try:
        info = sink.lookup_session(session_id)
    except APIKeyVerificationError:
        raise
    except SinkError as exc:
        log_rate_limited("lookup_failed", "lucidic: could not check session %s (%s); "
                         "continuing it, records will be delivered when the backend answers",
                         session_id, exc)
        return None
    if info is None:
        raise InvalidOperationError(
            f"session {session_id!r} does not exist (for this store or API key). Check the "
            "id, or start a new session with lai.init().")
    if info.get("is_finished"):
        raise InvalidOperationError(_finished_message(session_id))
    _check_agent(session_id, info.get("agent_id"), agent_id)
    return info


def _check_agent(session_id: str, owner: str | None, agent_id: str | None) -> None:
    if agent_id and owner and owner != agent_id:
        raise InvalidOperationError(
            f"session {session_id!r} belongs to agent {owner!r}, not {agent_id!r}; continue "
            "it with the agent id that created it.")


def _finished_message(session_id: str) -> str:
    return (f"session {session_id!r} has finished and a finished session cannot be "
            "continued. To hand a session over to another process, detach it there with "
            "lai.detach() (or leave its `with lai.continued()` block) instead of calling "
            "lai.end_session().")


# -- amending and ending ---------------------------------------------------------------

def update(binding: Binding, fields: dict[str, Any]) -> None:
    """Amend the session (its results, name, task, tags): None leaves a field
    as it is. An outcome given here is the user's, which a crash or an
    escaping exception no longer overrides."""
    if fields.get("is_successful") is not None:
        binding.state.outcome_set = True
    put_session(binding, fields)


def end(binding: Binding, result: dict[str, Any] | None = None, *,
        failure: str | None = None, wait: bool = True) -> None:
    """Finish the session for everyone: the steps opened with create_step and
    left open end with it; ``failure`` (why this process thinks it failed)
    marks it unsuccessful unless the user said otherwise. With ``wait``, its
    records are delivered before this returns, so that another process sees
    it finished at once."""
    fields = dict(result or {})
    if fields.get("is_successful") is not None:
        binding.state.outcome_set = True
    if failure is not None and not binding.state.outcome_set \
            and fields.get("is_successful") is None:
        fields.update(is_successful=False, is_successful_reason=failure)
    for step_id in list(binding.state.open_steps):
        Step(binding, step_id).end()
    binding.state.open_steps.clear()
    now = time.time()
    fields.update(ended_at=now, is_finished=True)
    put_session(binding, fields, now)
    runtime.finish_state(binding.state)
    if wait:
        binding.pipeline.flush(_config.flush_timeout(), fail_fast=True)
    for hook in session_end_hooks:
        with swallow("session_end_hook"):
            hook(binding)


def detach(binding: Binding, *, wait: bool = True) -> None:
    """Stop this binding writing to its session without finishing it, after
    delivering what it recorded (with ``wait``)."""
    if wait:
        binding.pipeline.flush(_config.flush_timeout(), fail_fast=True)
    runtime.release(binding)
