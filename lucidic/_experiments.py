"""Experiments, mass simulations and scores: the records behind lucidic's
evaluation layer that every program can make, evaluation layer or not.

``create_mass_sim`` is the hosted SDK's; ``create_experiment`` makes an
experiment from code; ``score`` puts a score on a session, step or event.
They write through the same sinks as sessions (at once when the backend
answers, else queued and spooled like every record), so they work on the
embedded store and through a server alike.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from . import _scores
from ._arguments import Options, rubrics_arg, session_id_arg, tags_arg
from ._context import current_binding
from ._recording import put
from ._records import items_of, text_field, to_jsonable
from ._runtime import runtime
from ._sessions import LOCAL_PROJECT, sink_for, write_at_once
from ._sinks import Sink
from .errors import InvalidOperationError, LucidicNotInitializedError


def _sink(lucidic_api_key: str | None, api_key: str | None, agent_id: str | None
          ) -> tuple[Sink, str | None]:
    """Where these credentials' records go, and the agent id they name."""
    options = Options(lucidic_api_key=lucidic_api_key, api_key=api_key, agent_id=agent_id,
                      providers=None, masking_function=None, auto_end=True)
    return sink_for(options.base_url, options.api_key), options.agent_id


def _name_arg(what: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise InvalidOperationError(f"{what} must be a non-empty string, not {value!r:.80}")
    return text_field(value) or ""


def create_mass_sim(mass_sim_name: str, total_num_sessions: int,
                    lucidic_api_key: str | None = None, agent_id: str | None = None,
                    task: str | None = None, tags: Sequence[str] | None = None, *,
                    api_key: str | None = None) -> str:
    """Create a mass simulation (as lucidicai 1.x does) and return its id:
    pass it to ``lai.init(mass_sim_id=...)`` in each of its sessions.
    ``lucidic mass-sims show ID`` counts how many of them exist and ended."""
    name = _name_arg("mass_sim_name", mass_sim_name)
    if isinstance(total_num_sessions, bool) or not isinstance(total_num_sessions, int) \
            or total_num_sessions < 0:
        raise InvalidOperationError(f"total_num_sessions must be an int >= 0, not "
                                    f"{total_num_sessions!r:.80}")
    sink, agent_id = _sink(lucidic_api_key, api_key, agent_id)
    mass_sim_id = str(uuid.uuid4())
    now = time.time()
    write_at_once(sink, runtime.pipeline_for(sink), ("mass_sim", mass_sim_id, now, {
        "project": LOCAL_PROJECT, "name": name, "total_num_sims": total_num_sessions,
        "task": text_field(task), "tags": tags_arg(tags), "agent_id": agent_id,
        "created_at": now}))
    return mass_sim_id


def create_experiment(name: str, *, rubrics: Sequence[Any] = (),
                      metadata: Mapping[str, Any] | None = None,
                      tags: Sequence[str] | None = None, lucidic_api_key: str | None = None,
                      api_key: str | None = None, agent_id: str | None = None) -> str:
    """Create an experiment from code and return its id. Its ``rubrics``
    (names, or lucidic.evals rubrics) score each of its runs when the run's
    session ends; runs name it with ``init(experiment_id=...)`` or
    ``lucidic.evals.experiment_run``."""
    if metadata is not None and not isinstance(metadata, Mapping):
        raise InvalidOperationError(f"metadata must be a mapping, not {type(metadata).__name__}")
    # Read once, as the built-in type holds them (see items_of).
    given = list(items_of(rubrics) if isinstance(rubrics, (list, tuple, set, frozenset))
                 else rubrics)
    names = rubrics_arg(given) or []
    described = [item.describe() for item in given
                 if not isinstance(item, str) and callable(getattr(item, "describe", None))]
    experiment_id = str(uuid.uuid4())
    write_experiment(experiment_id, {
        "name": _name_arg("name", name), "rubrics": names, "evaluators": described or None,
        "metadata": None if metadata is None else to_jsonable(dict(metadata)),
        "tags": tags_arg(tags), "created_at": time.time()},
        lucidic_api_key=lucidic_api_key, api_key=api_key, agent_id=agent_id)
    return experiment_id


def write_experiment(experiment_id: str, fields: dict[str, Any], *,
                     lucidic_api_key: str | None = None, api_key: str | None = None,
                     agent_id: str | None = None) -> None:
    """Create (with ``created_at`` among the fields) or update an experiment's
    record; fields left None keep their stored value."""
    sink, _ = _sink(lucidic_api_key, api_key, agent_id)
    now = time.time()
    record_fields = {"project": LOCAL_PROJECT, **fields}
    write_at_once(sink, runtime.pipeline_for(sink), ("experiment", experiment_id, now,
                                                     record_fields))


def score(name: str, value: float | bool | str, *, session_id: str | None = None,
          step_id: str | None = None, event_id: str | None = None,
          comment: str | None = None) -> str:
    """Score the current session (or the session, step or event named) with a
    number, a bool or a label; returns the score's id. A later score of the
    same name on the same target replaces it."""
    scored = _scores.Score(name, value, text_field(comment))
    for what, target in (("step_id", step_id), ("event_id", event_id)):
        if target is not None and (not isinstance(target, str) or not target):
            raise InvalidOperationError(f"{what} must be an id string, not {target!r:.80}")
    binding = current_binding()
    if session_id is None:
        if binding is None:
            raise LucidicNotInitializedError(
                "lai.score() scores the current session and there is none here: pass "
                "session_id=..., or call it inside the session")
        session_id = binding.session_id
    session_id = session_id_arg(session_id)
    record = _scores.score_record(scored, session_id, source="api", step_id=step_id,
                                  event_id=event_id)
    kind, score_id, ts, fields = record
    if binding is not None and binding.session_id == session_id:
        put(binding, kind, score_id, fields, ts)
    else:
        sink, _ = _sink(None, None, None)
        runtime.pipeline_for(sink).put(record)
    return score_id
