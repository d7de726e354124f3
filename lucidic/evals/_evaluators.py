"""Evaluators, rubrics, and how a process finds them again.

An evaluator is a function of a :class:`Run` returning a bool, a number, a
label, a :class:`Score` or a list of scores. A rubric is a named, weighted
set of criteria whose score is their weighted mean. Both are kept by name in
this process's registry, and described (by import path, or by what an LLM
judge asks) in the experiment they score, so that any process that can
import them can score a run whose session it ends.
"""

from __future__ import annotations

import asyncio
import functools
import importlib
import inspect
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Union

from .._internal import logger
from .._scores import Score, numeric, score_name
from ..errors import InvalidOperationError

# -- the run an evaluator sees ---------------------------------------------------------


@dataclass(frozen=True)
class Run:
    """One run as stored: the case's ``input`` and ``expected``, the task's
    ``output`` (as stored: JSON values, objects as ``to_jsonable`` renders
    them) or ``error``, and the recorded ``session`` tree (as ``lucidic
    sessions show --json`` gives it)."""

    session_id: str
    input: Any
    output: Any
    expected: Any
    error: str | None
    session: Mapping[str, Any]
    experiment_id: str | None = None
    case_id: str | None = None
    repeat: int | None = None
    metadata: Mapping[str, Any] | None = None

    @property
    def llm_calls(self) -> list[dict[str, Any]]:
        """The run's LLM events, in the order they started."""
        found: list[dict[str, Any]] = []
        _collect_llm(self.session, found)
        found.sort(key=lambda e: (e.get("started_at") or 0.0, str(e.get("id"))))
        return found

    @property
    def cost(self) -> float:
        return float(self.session.get("total_cost") or 0.0)

    @property
    def duration(self) -> float | None:
        started, ended = self.session.get("started_at"), self.session.get("ended_at")
        if started is None or ended is None:
            return None
        return float(ended) - float(started)


def _collect_llm(node: Mapping[str, Any], out: list[dict[str, Any]]) -> None:
    for event in node.get("events") or ():
        if event.get("type") == "llm":
            out.append(event)
    for step in node.get("steps") or ():
        _collect_llm(step, out)


# -- evaluators ------------------------------------------------------------------------

EvaluatorResult = Union[bool, float, int, str, Score, Sequence[Score], None]  # noqa: UP007


class Evaluator:
    """A named evaluator (see :func:`evaluator`). Calling it on a run gives
    its scores; a number passes at or above ``threshold`` when one is set."""

    def __init__(self, fn: Callable[[Run], Any], *, name: str | None = None,
                 threshold: float | None = None, description: dict[str, Any] | None = None
                 ) -> None:
        if not callable(fn):
            raise InvalidOperationError(f"an evaluator must be callable, not {fn!r:.80}")
        self.fn = fn
        self.name = score_name(name or getattr(fn, "__name__", None) or "evaluator")
        if threshold is not None and (isinstance(threshold, bool)
                                      or not isinstance(threshold, (int, float))):
            raise InvalidOperationError(f"threshold must be a number, not {threshold!r:.80}")
        self.threshold = None if threshold is None else float(threshold)
        self._description = description
        functools.update_wrapper(self, fn)  # type: ignore[arg-type]

    def __call__(self, run: Run) -> list[Score]:
        return scores_from(self.name, call_maybe_async(self.fn, run))

    def describe(self) -> dict[str, Any]:
        """How another process finds this evaluator: its import path when it
        has one (a function at a module's top level)."""
        if self._description is not None:
            return {"name": self.name, **self._description, "threshold": self.threshold}
        return {"name": self.name, "ref": import_path(self.fn), "threshold": self.threshold}

    def __repr__(self) -> str:
        return f"<evaluator {self.name!r}>"


def call_maybe_async(fn: Callable[..., Any], *args: Any) -> Any:
    """Call fn; a coroutine function is run to completion on an event loop of
    its own (evaluations run in worker threads, never on the caller's loop)."""
    result = fn(*args)
    if inspect.isawaitable(result):
        async def wait() -> Any:
            return await result
        return asyncio.run(wait())
    return result


def scores_from(name: str, result: Any) -> list[Score]:
    """An evaluator's return value as scores (None: it had nothing to say)."""
    if result is None:
        return []
    if isinstance(result, Score):
        return [result]
    if isinstance(result, (bool, int, float, str)):
        return [Score(name, result)]
    if isinstance(result, (list, tuple)) and all(isinstance(s, Score) for s in result):
        names = [s.name for s in result]
        twice = next((n for i, n in enumerate(names) if n in names[:i]), None)
        if twice is not None:
            # Stored by name, the second would replace the first without a word.
            raise InvalidOperationError(f"evaluator {name!r} returned two scores named "
                                        f"{twice!r}; give each score its own name")
        return list(result)
    raise InvalidOperationError(
        f"evaluator {name!r} returned {type(result).__name__} {result!r:.80}; return a bool, a "
        "number, a label (str), a lucidic.evals.Score or a list of them")


def evaluator(fn: Callable[[Run], Any] | None = None, *, name: str | None = None,
              threshold: float | None = None) -> Any:
    """Make ``fn(run)`` an evaluator: ``@evaluator`` or ``@evaluator(name=...,
    threshold=...)``. It is registered under its name in this process, so a
    run recorded here or elsewhere can be scored by name."""
    def make(f: Callable[[Run], Any]) -> Evaluator:
        made = Evaluator(f, name=name, threshold=threshold)
        register(made)
        return made
    return make(fn) if fn is not None else make


def as_evaluator(value: Any) -> Evaluator | Rubric:
    if isinstance(value, (Evaluator, Rubric)):
        return value
    if callable(value):
        return Evaluator(value)
    raise InvalidOperationError(f"evaluators must be functions of a run (or made with "
                                f"lucidic.evals.evaluator), not {value!r:.80}")


def as_evaluators(values: Iterable[Any]) -> list[Evaluator | Rubric]:
    if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
        raise InvalidOperationError(f"evaluators must be a list, not {type(values).__name__}")
    made = [as_evaluator(v) for v in values]
    names = [e.name for e in made]
    for n in names:
        if names.count(n) > 1:
            raise InvalidOperationError(f"two evaluators are named {n!r}; give them distinct "
                                        "names (evaluator(name=...))")
    return made


# -- rubrics ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Criterion:
    """One criterion of a rubric: an evaluator giving one number (0 to 1) or
    bool, and its weight in the rubric's mean."""

    name: str
    evaluator: Callable[[Run], Any]
    weight: float = 1.0

    def __post_init__(self) -> None:
        score_name(self.name)
        if not callable(self.evaluator):
            raise InvalidOperationError(f"criterion {self.name!r}: its evaluator must be "
                                        "callable")
        if isinstance(self.weight, bool) or not isinstance(self.weight, (int, float)) \
                or not self.weight >= 0 or self.weight == float("inf"):
            raise InvalidOperationError(f"criterion {self.name!r}: weight must be a finite "
                                        f"number >= 0, not {self.weight!r}")


@dataclass(frozen=True)
class CriterionResult:
    name: str
    weight: float
    value: float
    comment: str | None = None


@dataclass(frozen=True)
class Rubric:
    """A named rubric: its score is the weighted mean of its criteria's."""

    name: str
    criteria: tuple[Criterion, ...] = field(default=())
    threshold: float | None = None

    def __call__(self, run: Run) -> list[Score]:
        return [self.evaluate(run)[0]]

    def evaluate(self, run: Run) -> tuple[Score, list[CriterionResult]]:
        results = []
        for criterion in self.criteria:
            value, comment = _criterion_value(self.name, criterion, run)
            results.append(CriterionResult(criterion.name, float(criterion.weight), value,
                                           comment))
        total = sum(r.weight for r in results)
        if total <= 0:
            raise InvalidOperationError(f"rubric {self.name!r} has no criterion with a weight "
                                        "above 0")
        mean = sum(r.weight * r.value for r in results) / total
        comment = "; ".join(f"{r.name} {r.value:g} (weight {r.weight:g})" for r in results)
        return Score(self.name, mean, comment), results

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "threshold": self.threshold,
                "criteria": [{"name": c.name, "weight": c.weight,
                              "evaluator": as_evaluator(c.evaluator).describe()}
                             for c in self.criteria]}


def _criterion_value(rubric_name: str, criterion: Criterion, run: Run) -> tuple[float, str | None]:
    scores = as_evaluator(criterion.evaluator)(run)
    if len(scores) != 1:
        raise InvalidOperationError(
            f"criterion {criterion.name!r} of rubric {rubric_name!r} gave {len(scores)} scores; "
            "a criterion gives exactly one number or bool")
    number = numeric(scores[0].value)
    if number is None:
        raise InvalidOperationError(
            f"criterion {criterion.name!r} of rubric {rubric_name!r} gave the label "
            f"{scores[0].value!r}; a criterion gives a number (0 to 1) or a bool")
    return number, scores[0].comment


def rubric(name: str, criteria: Iterable[Criterion], *, threshold: float | None = None) -> Rubric:
    """Define (and register, by name, in this process) a rubric: ``init(rubrics=
    [name])`` has it score the session when the session ends."""
    score_name(name)
    items = tuple(criteria)
    if not items or not all(isinstance(c, Criterion) for c in items):
        raise InvalidOperationError(f"rubric {name!r} needs a list of "
                                    "lucidic.evals.Criterion(name, evaluator, weight)")
    names = [c.name for c in items]
    if len(set(names)) != len(names):
        raise InvalidOperationError(f"rubric {name!r} names a criterion twice")
    made = Rubric(name, items, threshold)
    register(made)
    return made


# -- the registry, and finding an evaluator again ----------------------------------------

_registry: dict[str, Evaluator | Rubric] = {}
_registry_lock = threading.Lock()


def register(item: Evaluator | Rubric) -> None:
    with _registry_lock:
        if item.name in _registry and _registry[item.name] is not item:
            logger.debug("lucidic: evaluator %r redefined in this process", item.name)
        _registry[item.name] = item


def registered(name: str) -> Evaluator | Rubric | None:
    with _registry_lock:
        return _registry.get(name)


def import_path(fn: Any) -> str | None:
    """``module:qualname`` when importing that gives back ``fn``."""
    module = getattr(fn, "__module__", None)
    qualname = getattr(fn, "__qualname__", None)
    if not module or not qualname or module == "__main__" or "<" in qualname:
        return None
    try:
        found: Any = importlib.import_module(module)
        for part in qualname.split("."):
            found = getattr(found, part)
    except Exception:  # noqa: BLE001 - not importable: no path
        return None
    if found is fn or getattr(found, "fn", None) is fn:
        return f"{module}:{qualname}"
    return None


def load_path(path: str) -> Any:
    """What ``module:qualname`` names; InvalidOperationError if it cannot be imported."""
    module, _, qualname = path.partition(":")
    if not module or not qualname:
        raise InvalidOperationError(f"{path!r} is not an evaluator path: write module:function")
    try:
        found: Any = importlib.import_module(module)
        for part in qualname.split("."):
            found = getattr(found, part)
    except Exception as exc:  # noqa: BLE001 - say what failed
        raise InvalidOperationError(f"cannot import evaluator {path!r}: "
                                    f"{type(exc).__name__}: {exc}") from exc
    return found


def resolve(description: Mapping[str, Any]) -> Evaluator | Rubric | None:
    """The evaluator a stored description names: this process's definition of
    that name first, else one rebuilt from the description (an import path, a
    judge's prompt, a rubric's criteria); None when neither is possible."""
    name = description.get("name")
    if not isinstance(name, str):
        return None
    found = registered(name)
    if found is not None:
        return found
    try:
        return _rebuild(description)
    except Exception as exc:  # noqa: BLE001 - unresolvable here: someone else may score it
        logger.debug("lucidic: cannot rebuild evaluator %r here: %s", name, exc)
        return None


def _rebuild(description: Mapping[str, Any]) -> Evaluator | Rubric | None:
    name = description["name"]
    threshold = description.get("threshold")
    if description.get("criteria") is not None:
        criteria = []
        for item in description["criteria"]:
            inner = _rebuild(item["evaluator"])
            if inner is None:
                return None
            criteria.append(Criterion(item["name"], inner, float(item.get("weight", 1.0))))
        return Rubric(name, tuple(criteria), threshold)
    judge = description.get("judge")
    if isinstance(judge, Mapping):
        from ._judge import llm_judge

        return llm_judge(judge["rubric"], model=judge["model"],
                         provider=judge.get("provider", "openai"), name=name,
                         threshold=threshold)
    path = description.get("ref")
    if isinstance(path, str):
        found = load_path(path)
        if isinstance(found, (Evaluator, Rubric)):
            return found
        return Evaluator(found, name=name, threshold=threshold)
    return None
