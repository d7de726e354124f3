"""Scoring a finished session, exactly once, wherever it ends.

A session is due for scoring once it has ended, by the rubrics it names and
by its experiment's evaluators and rubrics. Whoever can score it (the
process that ended it, the experiment's runner waiting for it, a re-score)
first claims each evaluation in the store: the claim is one atomic write,
so one claimant wins, and its outcome is stored only while it still holds
the claim. A claimant that dies leaves its claim to expire (``LEASE``) for
another to take over. An evaluation nobody here can run (its evaluator is
defined in another program) stays due until a process that has it scores it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .._internal import logger
from .._scores import Score, passed, to_fields
from ..errors import InvalidOperationError
from ._backend import Backend, owner_id
from ._evaluators import Evaluator, Rubric, Run, resolve

#: Seconds a claim holds before another process may take the evaluation over.
LEASE = 600.0

#: Evaluators given to run_experiment, by experiment: this process scores
#: that experiment's runs with them, wherever the runs' sessions end.
_in_process: dict[str, list[Evaluator | Rubric]] = {}
_in_process_lock = threading.Lock()


def register_experiment(experiment_id: str, evaluators: Sequence[Evaluator | Rubric]) -> None:
    with _in_process_lock:
        _in_process[experiment_id] = list(evaluators)


def run_from_tree(tree: Mapping[str, Any]) -> Run:
    attributes = tree.get("attributes")
    metadata = attributes.get("case_metadata") if isinstance(attributes, Mapping) else None
    return Run(session_id=str(tree["id"]), input=tree.get("input"), output=tree.get("output"),
               expected=tree.get("expected"), error=tree.get("error"), session=tree,
               experiment_id=tree.get("experiment_id"), case_id=tree.get("case_id"),
               repeat=tree.get("repeat"), metadata=metadata)


def due(backend: Backend, session: Mapping[str, Any]
        ) -> dict[str, Evaluator | Rubric | None]:
    """What scores this session, by name: its rubrics, and its experiment's
    evaluators and rubrics; None where this process cannot run it."""
    wanted: dict[str, Evaluator | Rubric | None] = {}
    experiment_id = session.get("experiment_id")
    if experiment_id:
        with _in_process_lock:
            local = list(_in_process.get(experiment_id, ()))
        for item in local:
            wanted[item.name] = item
        experiment = backend.experiment(experiment_id) or {}
        for description in experiment.get("evaluators") or ():
            if isinstance(description, Mapping) and description.get("name") not in wanted:
                wanted[str(description["name"])] = resolve(description)
        for name in experiment.get("rubrics") or ():
            if isinstance(name, str) and name not in wanted:
                wanted[name] = resolve({"name": name})
    for name in session.get("rubrics") or ():
        if isinstance(name, str) and name not in wanted:
            wanted[name] = resolve({"name": name})
    return wanted


@dataclass(frozen=True)
class Outcome:
    """What became of one evaluation here."""

    name: str
    status: str  # done | failed | elsewhere (another holds it) | unavailable (cannot run here)
    scores: tuple[Score, ...] = ()
    error: str | None = None


def score_session(backend: Backend, session_id: str, *,
                  evaluators: Iterable[Evaluator | Rubric] | None = None,
                  force: bool = False, lease: float = LEASE) -> list[Outcome]:
    """Score a finished session by what is due for it (or by ``evaluators``
    when given: a re-score, which replaces earlier scores of those names).
    Without ``force`` each evaluation is claimed first and skipped when
    another process holds it or has done it."""
    session = backend.session(session_id)
    if session is None or not session.get("is_finished"):
        return []
    wanted = ({e.name: e for e in evaluators} if evaluators is not None
              else due(backend, session))
    runnable = [name for name, item in wanted.items() if item is not None]
    outcomes = [Outcome(name, "unavailable") for name, item in wanted.items() if item is None]
    if not runnable:
        return outcomes
    owner = owner_id()
    mine = runnable if force else backend.claim(session_id, runnable, owner, lease)
    outcomes += [Outcome(name, "elsewhere") for name in runnable if name not in mine]
    if not mine:
        return outcomes
    tree = backend.tree(session_id)
    if tree is None:
        return outcomes
    run = run_from_tree(tree)
    for name in mine:
        item = wanted[name]
        assert item is not None
        outcomes.append(_evaluate(backend, run, item, owner, force, set(wanted) - {name}))
    return outcomes


def _evaluate(backend: Backend, run: Run, item: Evaluator | Rubric, owner: str,
              force: bool, others: set[str]) -> Outcome:
    """Run one evaluation and store its outcome. ``others``: the names of
    the session's other evaluations, which its scores may not take."""
    criteria: list[dict[str, Any]] = []
    try:
        if isinstance(item, Rubric):
            score, results = item.evaluate(run)
            scores = [score]
            criteria = [{"criterion": r.name, "weight": r.weight, "value": r.value,
                         "comment": r.comment} for r in results]
        else:
            scores = item(run)
        taken = next((s.name for s in scores if s.name in others), None)
        if taken is not None:
            raise InvalidOperationError(f"evaluator {item.name!r} returned a score named "
                                        f"{taken!r}, the name of another evaluator's score; "
                                        "give it another name")
    except Exception as exc:  # noqa: BLE001 - the user's evaluator failed: recorded
        error = f"{type(exc).__name__}: {exc}"
        logger.warning("lucidic: evaluator %r failed on session %s: %s", item.name,
                       run.session_id, error)
        backend.complete(run.session_id, item.name, owner, scores=(), criteria=(), error=error,
                         evaluator_session_id=None, force=force)
        return Outcome(item.name, "failed", error=error)
    threshold = item.threshold
    rows = [{"name": s.name, **to_fields(s.value), "comment": s.comment,
             "passed": passed(s.value, threshold), "source": "rubric" if criteria
             else "evaluator", "evaluator": item.name,
             "evaluator_session_id": s.evaluator_session_id} for s in scores]
    judge_session = next((s.evaluator_session_id for s in scores if s.evaluator_session_id),
                         None)
    stored = backend.complete(run.session_id, item.name, owner, scores=rows, criteria=criteria,
                              error=None, evaluator_session_id=judge_session, force=force)
    if not stored:
        return Outcome(item.name, "elsewhere")
    return Outcome(item.name, "done", tuple(scores))


def wait_scored(backend: Backend, session_id: str, names: Iterable[str],
                deadline: float | None) -> bool:
    """Wait until every named evaluation of the session is done or failed
    (scored by another process); False if the deadline passed first."""
    pending = set(names)
    delay = 0.05
    while pending:
        rows = backend.evaluations([session_id])
        settled = {r["name"] for r in rows if r.get("status") in ("done", "failed")}
        pending -= settled
        if not pending:
            return True
        if deadline is not None and time.monotonic() >= deadline:
            return False
        time.sleep(delay)
        delay = min(delay * 2, 1.0)
    return True


def wait_ended(backend: Backend, session_id: str, deadline: float | None) -> bool:
    """Wait until the session has ended (wherever that happens)."""
    delay = 0.05
    while True:
        row = backend.session(session_id)
        if row is not None and row.get("is_finished"):
            return True
        if deadline is not None and time.monotonic() >= deadline:
            return False
        time.sleep(delay)
        delay = min(delay * 2, 1.0)
