"""Evaluating agents: scores, rubrics, experiments, replay.

Every run of an experiment is an ordinary Lucidic session, tagged with its
experiment, case and repeat: it can be continued, handed over to another
process, read with ``lucidic sessions show``, scored again later, and
replayed from the LLM calls it recorded.

    from lucidic.evals import Case, evaluator, run_experiment

    @evaluator
    def exact(run):
        return run.output == run.expected

    result = run_experiment(answer, [Case("2+2", expected="4")], name="v1",
                            evaluators=[exact], repeats=3)
    result.print()

Not imported by ``import lucidic``.
"""

from __future__ import annotations

from .. import _sessions
from .._scores import Score
from ..errors import ReplayMissError
from ._cases import Case
from ._evaluators import Criterion, CriterionResult, Evaluator, Rubric, Run, evaluator, rubric
from ._judge import llm_judge
from ._rescore import evaluate_sessions
from ._result import ExperimentResult, RunResult
from ._runner import arun_experiment, run_experiment
from ._runs import experiment_run, install_hook, set_output

__all__ = [
    "Case",
    "Criterion",
    "CriterionResult",
    "Evaluator",
    "ExperimentResult",
    "ReplayMissError",
    "Rubric",
    "Run",
    "RunResult",
    "Score",
    "arun_experiment",
    "evaluate_sessions",
    "evaluator",
    "experiment_run",
    "llm_judge",
    "rubric",
    "run_experiment",
    "set_output",
]

# Sessions that name an experiment or rubrics are scored where they end.
install_hook(_sessions.session_end_hooks)
