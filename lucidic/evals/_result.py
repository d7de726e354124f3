"""What an experiment gives back: its runs with their scores, a summary per
evaluator, and a table (compared with a baseline experiment, if given)."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import IO, Any

from .._scores import ScoreValue
from ..reading import summary as _summary


@dataclass(frozen=True)
class RunResult:
    """One run as stored: its case, output or error, scores, cost and duration."""

    session_id: str
    case_id: str | None
    repeat: int | None
    input: Any
    expected: Any
    output: Any
    error: str | None
    scores: Mapping[str, ScoreValue]
    passed: Mapping[str, bool | None] = field(default_factory=dict)
    comments: Mapping[str, str | None] = field(default_factory=dict)
    evaluation_errors: Mapping[str, str] = field(default_factory=dict)
    cost: float = 0.0
    duration: float | None = None
    status: str | None = None

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> RunResult:
        return cls(session_id=row["session_id"], case_id=row.get("case_id"),
                   repeat=row.get("repeat"), input=row.get("input"),
                   expected=row.get("expected"), output=row.get("output"),
                   error=row.get("error"), scores=dict(row.get("scores") or {}),
                   passed=dict(row.get("passed") or {}),
                   comments=dict(row.get("comments") or {}),
                   evaluation_errors=dict(row.get("evaluation_errors") or {}),
                   cost=float(row.get("cost") or 0.0), duration=row.get("duration"),
                   status=row.get("status"))

    def as_row(self) -> dict[str, Any]:
        return {"session_id": self.session_id, "case_id": self.case_id, "repeat": self.repeat,
                "output": self.output, "error": self.error, "scores": dict(self.scores),
                "passed": dict(self.passed), "evaluation_errors": dict(self.evaluation_errors),
                "cost": self.cost, "duration": self.duration}


@dataclass
class ExperimentResult:
    """The runs of one experiment (``runs``), scored; ``summary()`` per
    evaluator; ``print(baseline=other)`` shows them, compared per case."""

    experiment_id: str
    name: str | None
    runs: list[RunResult]
    summary_scores: dict[str, Any] = field(default_factory=dict)
    replayed: int = 0
    replay_misses: int = 0

    def summary(self) -> dict[str, dict[str, Any]]:
        """Per evaluator: ``mean``, ``pass_rate``, ``spread`` over repeats,
        ``count`` and ``missing``; a summary evaluator's entry is ``{"value": v}``."""
        out: dict[str, dict[str, Any]] = _summary.stats([r.as_row() for r in self.runs])
        for name, value in self.summary_scores.items():
            out[name] = {"value": value}
        return out

    @property
    def failed(self) -> list[RunResult]:
        return [r for r in self.runs if r.error is not None]

    def render(self, baseline: ExperimentResult | None = None) -> str:
        from .. import _render_experiments as show

        runs = [{**r.as_row(), "status": r.status} for r in self.runs]
        head = show.experiment_head({"id": self.experiment_id, "name": self.name}, runs)
        if self.replayed or self.replay_misses:
            head += (f"\n  {self.replayed} LLM calls replayed, {self.replay_misses} not "
                     "recorded")
        if baseline is None:
            return "\n".join([head, show.runs_report(runs, self.summary())])
        base = [r.as_row() for r in baseline.runs]
        head += (f"\n  compared with {baseline.name or 'experiment'} {baseline.experiment_id} "
                 "(A: the baseline, B: this one)")
        return "\n".join([head, show.compare_table(_summary.compare(base, runs))])

    def print(self, baseline: ExperimentResult | None = None, file: IO[str] | None = None
              ) -> None:
        """Print the runs and the summary; with ``baseline``, each case's
        scores, cost and duration beside the baseline's, with the deltas."""
        print(self.render(baseline), file=file or sys.stdout)

    def __str__(self) -> str:
        return self.render()

