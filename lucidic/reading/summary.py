"""Summaries and comparisons of experiment runs: the arithmetic behind
``ExperimentResult.summary()``, ``lucidic experiments show/compare`` and
the experiments pages, written once.

A run here is a mapping with ``case_id``, ``repeat``, ``scores`` ({name:
value}), ``cost``, ``duration`` and ``error``. Numbers and bools (True is 1)
are averaged; a label is summarised by the label most runs got. Higher is
better: a comparison's regressions are where B scores below A.
"""

from __future__ import annotations

import statistics
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from .._scores import ScoreValue, numeric


def _numbers(values: Iterable[Any]) -> list[float]:
    return [n for n in (numeric(v) for v in values if v is not None) if n is not None]


def _typical(values: Sequence[Any], *, agreeing_bool: bool = False) -> Any:
    """Numbers: the mean (of bools: the share that passed, or with
    ``agreeing_bool`` the verdict itself when every value agrees); labels:
    the most common (ties: the first seen)."""
    if agreeing_bool and values and all(isinstance(v, bool) for v in values) \
            and len(set(values)) == 1:
        return values[0]
    numbers = _numbers(values)
    if numbers:
        return statistics.fmean(numbers)
    labels = [v for v in values if isinstance(v, str)]
    return Counter(labels).most_common(1)[0][0] if labels else None


def score_names(runs: Iterable[Mapping[str, Any]]) -> list[str]:
    """The scores' names in the order first met, with those of evaluators
    that failed (which gave no score, but must show)."""
    names: dict[str, None] = {}
    for run in runs:
        for name in [*(run.get("scores") or {}), *(run.get("evaluation_errors") or {})]:
            names.setdefault(name, None)
    return list(names)


def stats(runs: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per score name: ``mean`` (numbers and bools), ``pass_rate`` (over the
    scores with a verdict: bools, and numbers whose evaluator has a
    threshold; a run's ``passed`` {name: verdict} says), ``spread`` (the mean,
    over cases, of the standard deviation across a case's repeats: 0 when
    every repeat agrees), ``count`` (runs scored) and ``missing`` (runs
    without that score; ``errors`` of them because its evaluator failed), and
    for labels the ``labels`` counted."""
    out: dict[str, dict[str, Any]] = {}
    for name in score_names(runs):
        values = [(run.get("case_id"), (run.get("scores") or {}).get(name)) for run in runs]
        present = [v for _, v in values if v is not None]
        numbers = _numbers(present)
        entry: dict[str, Any] = {"count": len(present), "missing": len(values) - len(present),
                                 "errors": sum(name in (run.get("evaluation_errors") or {})
                                               for run in runs),
                                 "mean": statistics.fmean(numbers) if numbers else None,
                                 "pass_rate": None, "spread": None}
        decided = [v for v in (_verdict(run, name) for run in runs) if v is not None]
        if decided:
            entry["pass_rate"] = sum(decided) / len(decided)
        by_case: defaultdict[Any, list[float]] = defaultdict(list)
        for case_id, value in values:
            number = numeric(value) if value is not None else None
            if number is not None:
                by_case[case_id].append(number)
        if by_case:
            entry["spread"] = statistics.fmean(
                statistics.pstdev(v) if len(v) > 1 else 0.0 for v in by_case.values())
        labels = Counter(v for v in present if isinstance(v, str))
        if labels:
            entry["labels"] = dict(labels.most_common())
        out[name] = entry
    return out


def _verdict(run: Mapping[str, Any], name: str) -> bool | None:
    value: ScoreValue | None = (run.get("scores") or {}).get(name)
    if value is None:
        return None
    verdict = (run.get("passed") or {}).get(name)
    if isinstance(verdict, bool):
        return verdict
    return value if isinstance(value, bool) else None


def summary(runs: Sequence[Mapping[str, Any]],
            summary_scores: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """{name: value}: each score's typical value over the runs (the mean, or
    the commonest label), and the summary evaluators' own values."""
    out: dict[str, Any] = {}
    for name in score_names(runs):
        out[name] = _typical([(r.get("scores") or {}).get(name) for r in runs
                              if (r.get("scores") or {}).get(name) is not None])
    out.update(summary_scores or {})
    return out


def _mean(values: Iterable[Any]) -> float | None:
    numbers = [float(v) for v in values if isinstance(v, (int, float))]
    return statistics.fmean(numbers) if numbers else None


def _delta(a: Any, b: Any) -> float | None:
    na = numeric(a) if a is not None else None
    nb = numeric(b) if b is not None else None
    return None if na is None or nb is None else nb - na


def _pair(a: Any, b: Any) -> dict[str, Any]:
    return {"a": a, "b": b, "delta": _delta(a, b)}


def by_case(runs: Iterable[Mapping[str, Any]]) -> dict[str, list[Mapping[str, Any]]]:
    cases: dict[str, list[Mapping[str, Any]]] = {}
    for run in runs:
        cases.setdefault(str(run.get("case_id")), []).append(run)
    return cases


def compare(runs_a: Sequence[Mapping[str, Any]],
            runs_b: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Per case (in A's order, then B's new cases): each score's typical value
    in A and B and the ``delta`` (B - A), and the same for cost and
    duration; and over all runs, the summary of each."""
    cases_a, cases_b = by_case(runs_a), by_case(runs_b)
    names = list(dict.fromkeys([*score_names(runs_a), *score_names(runs_b)]))
    rows = []
    for case_id in dict.fromkeys([*cases_a, *cases_b]):
        a, b = cases_a.get(case_id, []), cases_b.get(case_id, [])
        scores = {}
        for name in names:
            va = _typical([v for v in ((r.get("scores") or {}).get(name) for r in a)
                           if v is not None], agreeing_bool=True)
            vb = _typical([v for v in ((r.get("scores") or {}).get(name) for r in b)
                           if v is not None], agreeing_bool=True)
            scores[name] = _pair(va, vb)
        rows.append({"case_id": case_id, "runs_a": len(a), "runs_b": len(b), "scores": scores,
                     "cost": _pair(_mean(r.get("cost") for r in a),
                                   _mean(r.get("cost") for r in b)),
                     "duration": _pair(_mean(r.get("duration") for r in a),
                                       _mean(r.get("duration") for r in b)),
                     "errors": {"a": sum(1 for r in a if r.get("error")),
                                "b": sum(1 for r in b if r.get("error"))}})
    sa, sb = summary(runs_a), summary(runs_b)
    return {"cases": rows,
            "summary": {name: _pair(sa.get(name), sb.get(name)) for name in names},
            "cost": _pair(_mean(r.get("cost") for r in runs_a),
                          _mean(r.get("cost") for r in runs_b)),
            "duration": _pair(_mean(r.get("duration") for r in runs_a),
                              _mean(r.get("duration") for r in runs_b))}


def regressions(comparison: Mapping[str, Any], name: str, tolerance: float = 0.0
                ) -> list[dict[str, Any]]:
    """The cases where B's ``name`` is below A's by more than ``tolerance``, or
    missing in B while A has it (a label, which has no order, only then)."""
    worse = []
    for row in comparison["cases"]:
        pair = row["scores"].get(name)
        if pair is None or pair["a"] is None:
            continue
        a = numeric(pair["a"])
        b = numeric(pair["b"]) if pair["b"] is not None else None
        if pair["b"] is None or (a is not None and b is not None and b < a - tolerance):
            worse.append({"case_id": row["case_id"], "a": pair["a"], "b": pair["b"],
                          "delta": pair["delta"]})
    return worse
