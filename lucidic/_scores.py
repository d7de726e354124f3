"""Scores: what an evaluator says about a run.

A score's value is a number, a bool (a check that passed or failed) or a
label (text). Every place a score is made, stored or summarised reads it
through this module, so the three kinds mean the same everywhere.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from typing import Any, Union

from ._numbers import finite_float, short_number_repr
from .errors import InvalidOperationError

ScoreValue = Union[float, bool, str]  # noqa: UP007 - a runtime alias on Python 3.10

_MAX_NAME = 200
_MAX_LABEL = 10_000


@dataclass(frozen=True)
class Score:
    """One score: ``value`` is a number, a bool or a label; ``comment`` says
    why. ``evaluator_session_id`` names the session an evaluator recorded
    while judging (an LLM judge's own call), linking the two."""

    name: str
    value: ScoreValue
    comment: str | None = None
    evaluator_session_id: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "name", score_name(self.name))
        object.__setattr__(self, "value", score_value(self.name, self.value))
        if self.comment is not None and not isinstance(self.comment, str):
            object.__setattr__(self, "comment", str(self.comment))

    @property
    def kind(self) -> str:
        return kind_of(self.value)


def score_name(name: Any) -> str:
    if not isinstance(name, str) or not name.strip():
        raise InvalidOperationError(f"a score's name must be a non-empty string, not {name!r:.80}")
    if len(name) > _MAX_NAME or not name.isprintable():
        raise InvalidOperationError(f"score name {name[:80]!r} must be 1 to {_MAX_NAME} "
                                    "printable characters")
    return name


def score_value(name: str, value: Any) -> ScoreValue:
    """A value as scores hold it, or InvalidOperationError saying what is wrong."""
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)):
        number = finite_float(value)
        if number is None:
            raise InvalidOperationError(f"score {name!r} must be a finite number, not "
                                        f"{short_number_repr(value)}")
        return number
    if isinstance(value, str):
        if len(value) > _MAX_LABEL:
            raise InvalidOperationError(f"score {name!r}: a label is at most {_MAX_LABEL} "
                                        f"characters, not {len(value)}")
        return value
    raise InvalidOperationError(
        f"score {name!r} must be a number, a bool or a label (str), not "
        f"{type(value).__name__} {value!r:.80}")


def kind_of(value: ScoreValue) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, str):
        return "label"
    return "number"


def passed(value: ScoreValue, threshold: float | None = None) -> bool | None:
    """Whether a score passes: a bool is its own verdict, a number passes at
    or above ``threshold`` (no threshold: no verdict), a label never has one."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) or threshold is None:
        return None
    return float(value) >= threshold


def numeric(value: ScoreValue) -> float | None:
    """A value as a number for means and deltas (True is 1), None for labels."""
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if isinstance(value, str):
        return None
    return float(value)


def score_id(session_id: str, name: str, step_id: str | None = None,
             event_id: str | None = None) -> str:
    """A score's id: the same for the same name on the same target, so a
    later score of that name (a re-score, a retry) replaces the earlier one."""
    key = "\x1f".join((session_id, step_id or "", event_id or "", name))
    return "sc_" + hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def score_record(score: Score, session_id: str, *, source: str, step_id: str | None = None,
                 event_id: str | None = None) -> tuple[str, str, float, dict[str, Any]]:
    """The record storing ``score`` on a session (or on one of its steps or
    events), under score_id's id: a later score of its name there replaces it."""
    now = time.time()
    return ("score", score_id(session_id, score.name, step_id, event_id), now, {
        "session_id": session_id, "step_id": step_id, "event_id": event_id,
        "name": score.name, **to_fields(score.value), "comment": score.comment,
        "source": source, "created_at": now})


def to_fields(value: ScoreValue) -> dict[str, Any]:
    """A value as the store's columns hold it (kind, value, label)."""
    kind = kind_of(value)
    if kind == "label":
        return {"kind": kind, "label": value}
    return {"kind": kind, "value": numeric(value)}


def from_row(row: dict[str, Any]) -> ScoreValue | None:
    """A stored score's value, back as its kind."""
    kind = row.get("kind")
    if kind == "label":
        return row.get("label")  # type: ignore[no-any-return]
    value = row.get("value")
    if value is None:
        return None
    if kind == "bool":
        return bool(value)
    return float(value)
