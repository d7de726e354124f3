"""What an experiment gives back: its runs with their scores, a summary per
evaluator, and a table (compared with a baseline experiment, if given)."""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import IO, Any

from .._scores import ScoreValue
from . import _summary


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
                "passed": dict(self.passed), "cost": self.cost, "duration": self.duration}


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
        runs = [r.as_row() for r in self.runs]
        head = (f"Experiment {self.name or self.experiment_id} ({self.experiment_id}): "
                f"{len(runs)} runs, {len(self.failed)} failed, cost ${_total(runs):.6g}")
        if self.replayed or self.replay_misses:
            head += f", {self.replayed} LLM calls replayed, {self.replay_misses} missed"
        if baseline is None:
            return "\n".join([head, _runs_table(runs), _stats_lines(self.summary())])
        base = [r.as_row() for r in baseline.runs]
        head += f"\ncompared with {baseline.name or baseline.experiment_id} " \
                f"({baseline.experiment_id}): B is this experiment, A the baseline"
        return "\n".join([head, _compare_table(_summary.compare(base, runs))])

    def print(self, baseline: ExperimentResult | None = None, file: IO[str] | None = None
              ) -> None:
        """Print the runs and the summary; with ``baseline``, each case's
        scores, cost and duration beside the baseline's, with the deltas."""
        print(self.render(baseline), file=file or sys.stdout)

    def __str__(self) -> str:
        return self.render()


def _total(runs: Sequence[Mapping[str, Any]]) -> float:
    return float(sum(r.get("cost") or 0.0 for r in runs))


def shown(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "pass" if value else "fail"
    if isinstance(value, float):
        return f"{value:.3g}"
    text = str(value)
    return text if len(text) <= 40 else text[:39] + "…"


def _signed(value: float | None, unit: str = "") -> str:
    return "" if value is None else f"{value:+.3g}{unit}"


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(line.rstrip() for line in lines)


def _runs_table(runs: list[dict[str, Any]]) -> str:
    names = _summary.score_names(runs)
    header = ["case", "repeat", *names, "cost", "duration", "error"]
    rows = [[str(r["case_id"]), str(r["repeat"]),
             *(shown(r["scores"].get(n)) for n in names),
             f"${r['cost']:.6g}", "-" if r["duration"] is None else f"{r['duration']:.3g} s",
             shown(r["error"])] for r in runs]
    return _table(header, rows)


def _stats_lines(stats: Mapping[str, Mapping[str, Any]]) -> str:
    parts = []
    for name, entry in stats.items():
        if "value" in entry:
            parts.append(f"{name}: {shown(entry['value'])}")
            continue
        bits = [f"mean {shown(entry['mean'])}"]
        if entry.get("pass_rate") is not None:
            bits.append(f"pass {entry['pass_rate']:.0%}")
        if entry.get("spread"):
            bits.append(f"spread {entry['spread']:.3g}")
        if entry.get("missing"):
            bits.append(f"{entry['missing']} missing")
        parts.append(f"{name}: " + ", ".join(bits))
    return "summary  " + " | ".join(parts) if parts else "summary  (no scores)"


def _compare_table(comparison: Mapping[str, Any]) -> str:
    names = list(comparison["summary"])
    header = ["case", *names, "cost", "duration"]
    rows = []
    for row in comparison["cases"]:
        cells = [str(row["case_id"])]
        for name in names:
            pair = row["scores"][name]
            cells.append(f"{shown(pair['a'])} → {shown(pair['b'])} {_signed(pair['delta'])}"
                         .rstrip())
        cells.append(f"{_signed(row['cost']['delta'], ' $')}".strip() or "-")
        cells.append(f"{_signed(row['duration']['delta'], ' s')}".strip() or "-")
        rows.append(cells)
    summary = ["all", *(f"{shown(p['a'])} → {shown(p['b'])} {_signed(p['delta'])}".rstrip()
                        for p in comparison["summary"].values()),
               _signed(comparison["cost"]["delta"], " $") or "-",
               _signed(comparison["duration"]["delta"], " s") or "-"]
    return _table(header, [*rows, summary])
