"""Evaluate an agent: run it over cases, score every run, compare two versions.

Each run is an ordinary session (`lucidic sessions show` reads it); the
experiments are read back with `lucidic experiments list|show|compare`.
No model is called: the "agent" answers arithmetic questions, and version 2
has a bug in one case.
"""

from lucidic.evals import Case, Criterion, evaluator, rubric, run_experiment

cases = [Case("2 + 2", expected="4", name="add"), Case("3 * 5", expected="15", name="times"),
         Case("10 - 7", expected="3", name="minus")]


def agent_v1(question: str) -> str:
    left, op, right = question.split()
    a, b = int(left), int(right)
    return str({"+": a + b, "*": a * b, "-": a - b}[op])


def agent_v2(question: str) -> str:
    answer = agent_v1(question)
    return answer if "*" not in question else answer + ".0"  # the regression


@evaluator
def exact(run):
    return run.output == run.expected


@evaluator(threshold=0.5)
def numeric(run):
    try:
        return 1.0 if float(run.output) == float(run.expected) else 0.0
    except (TypeError, ValueError):
        return 0.0


quality = rubric("quality", [Criterion("exact", exact, weight=2),
                             Criterion("numeric", numeric, weight=1)])

v1 = run_experiment(agent_v1, cases, name="calculator v1", evaluators=[exact, quality],
                    repeats=2)
v2 = run_experiment(agent_v2, cases, name="calculator v2", evaluators=[exact, quality],
                    repeats=2)
v2.print(baseline=v1)
print(f"\nlucidic experiments compare {v1.experiment_id} {v2.experiment_id} "
      "--fail-on-regression exact")
