"""Deterministic tasks and evaluators for the evaluation tests, importable
in this process and in the child processes the tests start (PYTHONPATH)."""

from __future__ import annotations

import os
from typing import Any

from lucidic.evals import Criterion, evaluator, rubric


def shout(text: str) -> str:
    return text.upper()


@evaluator
def exact(run: Any) -> bool:
    return bool(run.output == run.expected)


@evaluator(threshold=0.5)
def closeness(run: Any) -> float:
    """1 when exact, else the share of expected characters the output has."""
    if run.output is None or run.expected is None:
        return 0.0
    if run.output == run.expected:
        return 1.0
    same = sum(1 for a, b in zip(str(run.output), str(run.expected), strict=False) if a == b)
    return same / max(len(str(run.expected)), 1)


@evaluator
def length(run: Any) -> float:
    return float(len(str(run.output or "")))


@evaluator
def counted(run: Any) -> bool:
    """Appends its session to $EVAL_LOG each time it runs: how many times a
    run was scored, by any process."""
    with open(os.environ["EVAL_LOG"], "a") as log:
        log.write(f"{run.session_id} {os.getpid()}\n")
    return run.output is not None


polite = rubric("polite", [Criterion("exact", exact, weight=3),
                           Criterion("short", lambda run: len(str(run.output)) <= 5, weight=1)])
