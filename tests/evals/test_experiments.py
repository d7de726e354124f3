"""run_experiment on the embedded store: scores and summaries of known
outputs, exact concurrency, failing and slow runs, bad input, and what the
CLI reads back."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import evals_support as support
import pytest

import lucidic as lai
from lucidic.evals import (
    Case,
    Criterion,
    Score,
    arun_experiment,
    evaluate_sessions,
    evaluator,
    rubric,
    run_experiment,
)
from lucidic.store import Store

CASES = [Case("ab", expected="AB", name="ab"), Case("cd", expected="CX", name="cd"),
         Case("efgh", expected="EFGH", name="efgh")]


def _cli(home: Path, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    from helpers import child_env

    return subprocess.run([sys.executable, "-m", "lucidic", *args], capture_output=True,
                          text=True, timeout=60, env=child_env(home), cwd=cwd)


def test_scores_and_summary_of_known_outputs(store: Store) -> None:
    result = run_experiment(support.shout, CASES, name="shout",
                            evaluators=[support.exact, support.closeness, support.polite],
                            repeats=2)
    assert [(r.case_id, r.repeat) for r in result.runs] == [
        ("ab", 0), ("ab", 1), ("cd", 0), ("cd", 1), ("efgh", 0), ("efgh", 1)]
    by_case = {r.case_id: r for r in result.runs}
    assert by_case["ab"].output == "AB" and by_case["ab"].error is None
    assert dict(by_case["ab"].scores) == {"exact": True, "closeness": 1.0, "polite": 1.0}
    # "CD" against "CX": one of two characters; polite = (3*0 + 1*1) / 4.
    assert dict(by_case["cd"].scores) == {"exact": False, "closeness": 0.5, "polite": 0.25}
    assert by_case["cd"].passed["closeness"] is True  # 0.5 >= its threshold 0.5
    # "EFGH" is exact but longer than five characters? No: four, so short holds too.
    assert by_case["efgh"].scores["polite"] == 1.0
    summary = result.summary()
    assert summary["exact"]["mean"] == pytest.approx(2 / 3)
    assert summary["exact"]["pass_rate"] == pytest.approx(2 / 3)
    assert summary["closeness"]["mean"] == pytest.approx((1 + 0.5 + 1) / 3)
    assert summary["closeness"]["pass_rate"] == 1.0
    assert summary["polite"]["mean"] == pytest.approx((1 + 0.25 + 1) / 3)
    assert summary["polite"]["pass_rate"] is None  # a number with no threshold has no verdict
    assert all(entry["spread"] == 0.0 and entry["count"] == 6 and entry["missing"] == 0
               for entry in summary.values())
    # Every run is an ordinary session, tagged with its experiment, case and repeat.
    session = store.session_tree(by_case["cd"].session_id)
    assert session is not None
    assert (session["experiment_id"], session["case_id"], session["repeat"], session["input"],
            session["expected"], session["output"]) == (
        result.experiment_id, "cd", session["repeat"], "cd", "CX", "CD")
    assert session["scores"] == {"exact": False, "closeness": 0.5, "polite": 0.25}
    (rubric_result,) = session["rubric_results"]
    assert rubric_result["rubric"] == "polite"
    assert {c["criterion"]: (c["weight"], c["value"]) for c in rubric_result["criteria"]} == {
        "exact": (3.0, 0.0), "short": (1.0, 1.0)}


def test_spread_over_repeats_and_labels(store: Store) -> None:
    calls: dict[str, int] = {}
    lock = threading.Lock()

    def flaky(text: str) -> str:
        with lock:
            calls[text] = calls.get(text, 0) + 1
            n = calls[text]
        return text.upper() if n % 2 else text  # right every other time

    @evaluator
    def grade(run: Any) -> str:
        return "good" if run.output == run.expected else "bad"

    result = run_experiment(flaky, CASES[:1], name="flaky",
                            evaluators=[support.exact, grade], repeats=4, max_concurrency=1)
    summary = result.summary()
    assert summary["exact"]["mean"] == 0.5 and summary["exact"]["pass_rate"] == 0.5
    assert summary["exact"]["spread"] == pytest.approx(0.5)  # stdev of 1, 0, 1, 0
    assert summary["grade"]["labels"] == {"good": 2, "bad": 2}
    assert summary["grade"]["mean"] is None
    # Printed, a label score counts its labels (it has no mean to show).
    assert "| grade good 2 bad 2" in str(result)


def test_sync_tasks_run_exactly_max_concurrency_at_once() -> None:
    lock = threading.Lock()
    state = {"now": 0, "peak": 0}
    everyone_in = threading.Event()

    def task(n: int) -> int:
        with lock:
            state["now"] += 1
            state["peak"] = max(state["peak"], state["now"])
            if state["now"] == 3:
                everyone_in.set()
        # Hold the slot until three run at once (or long enough to show fewer would).
        everyone_in.wait(10)
        time.sleep(0.02)
        with lock:
            state["now"] -= 1
        return n

    result = run_experiment(task, [Case(n, name=f"n{n}") for n in range(9)], name="pool",
                            max_concurrency=3)
    assert state["peak"] == 3
    assert sorted(r.output for r in result.runs) == list(range(9))


def test_async_tasks_run_exactly_max_concurrency_at_once() -> None:
    state = {"now": 0, "peak": 0}

    async def main() -> Any:
        everyone_in = asyncio.Event()

        async def task(n: int) -> int:
            state["now"] += 1
            state["peak"] = max(state["peak"], state["now"])
            if state["now"] == 4:
                everyone_in.set()
            try:
                await asyncio.wait_for(everyone_in.wait(), 10)
            except asyncio.TimeoutError:
                pass
            await asyncio.sleep(0.01)
            state["now"] -= 1
            return n * 2

        return await arun_experiment(task, [Case(n, name=f"n{n}") for n in range(10)],
                                     name="semaphore", max_concurrency=4)

    result = asyncio.run(main())
    assert state["peak"] == 4
    assert sorted(r.output for r in result.runs) == [n * 2 for n in range(10)]


def test_an_async_task_from_sync_code_runs_on_a_loop_of_its_own() -> None:
    async def task(text: str) -> str:
        await asyncio.sleep(0)
        return text.upper()

    result = run_experiment(task, CASES, name="async", evaluators=[support.exact])
    assert [r.output for r in result.runs] == ["AB", "CD", "EFGH"]


def test_a_raising_task_fails_alone_with_its_error_recorded(store: Store) -> None:
    def task(text: str) -> str:
        if text == "cd":
            raise ValueError("no cd today")
        return text.upper()

    result = run_experiment(task, CASES, name="raises", evaluators=[support.exact],
                            repeats=2)
    failed = [r for r in result.runs if r.error]
    assert {(r.case_id, r.error) for r in failed} == {("cd", "ValueError: no cd today")}
    assert len(failed) == 2 and all(r.status == "failed" for r in failed)
    assert [r.output for r in result.runs if not r.error] == ["AB", "AB", "EFGH", "EFGH"]
    # Scored like the others: the failed run's output is no match.
    assert all(r.scores == {"exact": r.case_id != "cd"} for r in result.runs)
    session = store.session_tree(failed[0].session_id)
    assert session is not None
    assert session["is_successful"] is False
    assert session["is_successful_reason"] == "ValueError: no cd today"
    assert session["error"] == "ValueError: no cd today"
    (event,) = session["events"]  # where it failed: the traceback, as an error event
    assert event["type"] == "error" and event["description"] == (
        "The run failed: ValueError: no cd today")
    assert 'raise ValueError("no cd today")' in event["error"]


def test_a_task_that_outlasts_its_timeout_is_failed_at_the_deadline() -> None:
    release = threading.Event()

    def task(text: str) -> str:
        if text == "cd":
            release.wait(30)  # a sync task cannot be stopped; it is failed at its deadline
        return text.upper()

    started = time.monotonic()
    result = run_experiment(task, CASES, name="slow", timeout=0.5, evaluators=[support.exact])
    release.set()
    assert time.monotonic() - started < 25
    by_case = {r.case_id: r for r in result.runs}
    assert by_case["cd"].error == "TimeoutError: the task took longer than 0.5 s"
    assert by_case["cd"].output is None and by_case["cd"].scores == {"exact": False}
    assert by_case["ab"].output == "AB" and by_case["efgh"].error is None


def test_an_async_task_past_its_timeout_is_cancelled() -> None:
    cancelled = []

    async def task(text: str) -> str:
        try:
            await asyncio.sleep(30 if text == "ab" else 0)
        except asyncio.CancelledError:
            cancelled.append(text)
            raise
        return text

    result = run_experiment(task, CASES, name="async-slow", timeout=0.3)
    assert cancelled == ["ab"]
    assert {r.case_id: r.error for r in result.runs} == {
        "ab": "TimeoutError: the task took longer than 0.3 s", "cd": None, "efgh": None}


def test_an_evaluator_that_raises_fails_only_its_own_score() -> None:
    @evaluator
    def brittle(run: Any) -> float:
        if run.case_id == "cd":
            raise KeyError("missing field")
        return 1.0

    result = run_experiment(support.shout, CASES, name="brittle",
                            evaluators=[brittle, support.exact])
    cd = next(r for r in result.runs if r.case_id == "cd")
    assert cd.evaluation_errors == {"brittle": "KeyError: 'missing field'"}
    assert cd.scores == {"exact": False}
    assert result.summary()["brittle"]["missing"] == 1
    assert result.summary()["brittle"]["errors"] == 1
    printed = str(result)
    assert next(line for line in printed.splitlines() if line.startswith("cd ")).split()[2] \
        == "error"
    assert "brittle mean 1, 1 missing, 1 evaluator error" in printed
    assert printed.endswith(
        "evaluator errors\n  case cd repeat 0, brittle: KeyError: 'missing field'")


def test_an_evaluator_that_fails_every_run_is_shown_not_hidden(lucidic_home: Path) -> None:
    def broken(run: Any) -> float:
        raise ValueError(f"no rubric for {run.case_id}")

    result = run_experiment(support.shout, CASES, name="broken",
                            evaluators=[support.exact, broken])
    assert result.summary()["broken"] == {"count": 0, "missing": 3, "errors": 3, "mean": None,
                                          "pass_rate": None, "spread": None}
    for printed in (str(result),
                    _cli(lucidic_home, "experiments", "show", result.experiment_id).stdout):
        lines = printed.splitlines()
        header = next(line for line in lines if line.startswith("case "))
        assert header.split()[:4] == ["case", "repeat", "exact", "broken"]
        assert [line.split()[3] for line in lines if line.startswith(("ab ", "cd ", "efgh "))
                ] == ["error"] * 3
        assert "broken mean -, 3 missing, 3 evaluator errors" in printed
        assert "  case efgh repeat 0, broken: ValueError: no rubric for efgh" in lines
    many = run_experiment(support.shout, [Case(f"c{i}", name=f"c{i:02}") for i in range(12)],
                          name="many", evaluators=[broken])
    assert str(many).endswith("broken: ValueError: no rubric for c09\n  and 2 more")


def test_evaluators_return_bools_numbers_labels_and_lists_of_scores() -> None:
    @evaluator
    def several(run: Any) -> list[Score]:
        return [Score("chars", len(run.output), comment="how long"), Score("shape", "caps")]

    result = run_experiment(support.shout, CASES[:1], name="kinds",
                            evaluators=[several, lambda run: run.output.isupper()])
    (run,) = result.runs
    assert dict(run.scores) == {"chars": 2.0, "shape": "caps", "<lambda>": True}
    assert run.comments == {"chars": "how long"}


def test_a_score_name_given_twice_fails_the_evaluation_that_repeats_it() -> None:
    # Scores are stored by name: a second of the same name would replace the
    # first without a word, so the evaluation that repeats one fails instead.
    def twice(run: Any) -> list[Score]:
        return [Score("tone", 1.0), Score("tone", 0.0)]

    def steals(run: Any) -> list[Score]:  # the name of the evaluator "exact"
        return [Score("exact", 0.25)]

    def first(run: Any) -> list[Score]:
        return [Score("overall", 1.0)]

    def second(run: Any) -> list[Score]:
        return [Score("overall", 0.0), Score("length", 2.0)]

    result = run_experiment(support.shout, CASES[:1], name="clashes", max_concurrency=1,
                            evaluators=[twice, steals, support.exact, first, second])
    (run,) = result.runs
    assert dict(run.scores) == {"exact": True, "overall": 1.0}
    assert run.evaluation_errors == {
        "twice": "InvalidOperationError: evaluator 'twice' returned two scores named 'tone'; "
                 "give each score its own name",
        "steals": "InvalidOperationError: evaluator 'steals' returned a score named 'exact', "
                  "the name of another evaluator's score; give it another name",
        "second": "its score 'overall' is also given by evaluator 'first'; give the scores "
                  "distinct names"}
    # A re-score replaces a score of the same name on purpose, whoever gave it.
    (rescored,) = evaluate_sessions([second], experiment_id=result.experiment_id)
    assert dict(rescored.scores) == {"exact": True, "overall": 0.0, "length": 2.0}
    assert "second" not in rescored.evaluation_errors


def test_summary_evaluators_see_every_run() -> None:
    def accuracy(runs: list[Any]) -> float:
        return sum(r.output == r.expected for r in runs) / len(runs)

    result = run_experiment(support.shout, CASES, name="summary",
                            summary_evaluators=[accuracy])
    assert result.summary()["accuracy"] == {"value": pytest.approx(2 / 3)}


def test_bad_arguments_are_refused_before_anything_runs(store: Store) -> None:
    ran = []

    def task(x: Any) -> Any:
        ran.append(x)
        return x

    bad: list[tuple[dict[str, Any], str]] = [
        ({"cases": "abc"}, "cases must be a list"),
        ({"cases": [Case("a"), Case("a")]}, "same id"),
        ({"cases": CASES, "repeats": 0}, "repeats must be an int >= 1"),
        ({"cases": CASES, "max_concurrency": 0}, "max_concurrency must be an int >= 1"),
        ({"cases": CASES, "timeout": -1}, "timeout must be a number of seconds > 0"),
        ({"cases": CASES, "replay_mode": "sometimes"}, "replay_mode must be one of"),
        ({"cases": CASES, "evaluators": [42]}, "evaluators must be functions"),
        ({"cases": CASES, "evaluators": [support.exact, support.exact]},
         "two evaluators are named 'exact'"),
        ({"cases": CASES, "replay": "no-such-experiment"}, "no such experiment"),
        ({"cases": CASES, "colour": "blue"}, r"unexpected keyword\(s\) colour"),
        ({"cases": CASES, "metadata": "notes"}, "metadata must be a mapping"),
    ]
    for kwargs, message in bad:
        with pytest.raises(lai.InvalidOperationError, match=message):
            run_experiment(task, name="bad", **kwargs)
    for name in ("", "  ", 5, None):
        with pytest.raises(lai.InvalidOperationError,
                           match=rf"name must be the experiment's name, .* not {name!r}$"):
            run_experiment(task, CASES, name=name)
    assert ran == []
    with pytest.raises(lai.InvalidOperationError, match="criterion 'x': weight"):
        rubric("r", [Criterion("x", support.exact, weight=-1)])
    assert store.count("sessions") == 0


def test_case_ids_are_stable_across_processes(tmp_path: Path) -> None:
    from helpers import run_python

    here = Case({"question": "2+2", "tags": ["math"]}).id
    child = run_python("""
        from lucidic.evals import Case
        print(Case({"tags": ["math"], "question": "2+2"}).id)
    """, home=tmp_path / "child")
    assert child.stdout.strip() == here and here.startswith("case-")
    assert Case("x", name="named").id == "named"


def test_the_cli_reads_experiments_back_with_stable_keys(lucidic_home: Path) -> None:
    first = run_experiment(support.shout, CASES, name="v1", evaluators=[support.exact])

    def better(text: str) -> str:
        return {"cd": "CX"}.get(text, text.upper())

    def worse(text: str) -> str:
        return "nope" if text == "ab" else text.upper()

    second = run_experiment(better, CASES, name="v2", evaluators=[support.exact])
    third = run_experiment(worse, CASES, name="v3", evaluators=[support.exact])
    listed = json.loads(_cli(lucidic_home, "experiments", "list", "--json").stdout)
    assert [e["name"] for e in listed] == ["v3", "v2", "v1"]
    assert {k: listed[2][k] for k in ("id", "run_count", "ended_count", "failed_count")} == {
        "id": first.experiment_id, "run_count": 3, "ended_count": 3, "failed_count": 0}
    shown = json.loads(_cli(lucidic_home, "experiments", "show", first.experiment_id,
                            "--json").stdout)
    assert shown["summary"] == {"exact": pytest.approx(2 / 3)}
    run = shown["runs"][0]
    assert set(run) >= {"session_id", "case_id", "repeat", "output", "error", "scores", "cost",
                        "duration"}
    assert [(r["case_id"], r["repeat"], r["output"], r["scores"]) for r in shown["runs"]] == [
        ("ab", 0, "AB", {"exact": True}), ("cd", 0, "CD", {"exact": False}),
        ("efgh", 0, "EFGH", {"exact": True})]
    text = _cli(lucidic_home, "experiments", "show", first.experiment_id).stdout
    assert "v1" in text and "exact mean 0.667, pass 67%" in text
    # B better than A: no regression; the deltas per case.
    compared = _cli(lucidic_home, "experiments", "compare", first.experiment_id,
                    second.experiment_id, "--fail-on-regression", "exact", "--json")
    assert compared.returncode == 0, compared.stderr
    document = json.loads(compared.stdout)
    cases = {c["case_id"]: c for c in document["cases"]}
    assert cases["cd"]["scores"]["exact"] == {"a": False, "b": True, "delta": 1.0}
    assert set(cases["cd"]) >= {"case_id", "scores", "cost", "duration"}
    assert set(cases["cd"]["cost"]) == {"a", "b", "delta"}
    # B worse than A on "ab": exit 1, naming the case.
    regressed = _cli(lucidic_home, "experiments", "compare", first.experiment_id,
                     third.experiment_id, "--fail-on-regression", "exact")
    assert regressed.returncode == 1
    assert "exact regressed in 1 case(s): ab (pass → fail)" in regressed.stderr
    # A tolerance as wide as the drop lets it pass.
    tolerated = _cli(lucidic_home, "experiments", "compare", first.experiment_id,
                     third.experiment_id, "--fail-on-regression", "exact:1")
    assert tolerated.returncode == 0, tolerated.stderr
    unknown = _cli(lucidic_home, "experiments", "show", "no-such-experiment")
    assert unknown.returncode != 0 and "no experiment 'no-such-experiment'" in unknown.stderr
    bad = _cli(lucidic_home, "experiments", "compare", first.experiment_id,
               second.experiment_id, "--fail-on-regression", "exact:lots")
    assert bad.returncode != 0 and "is not a number" in bad.stderr
    misspelt = _cli(lucidic_home, "experiments", "compare", first.experiment_id,
                    third.experiment_id, "--fail-on-regression", "exatc")
    assert misspelt.returncode == 1 and misspelt.stdout == ""
    assert ("--fail-on-regression names no score of either experiment: exatc "
            "(their scores: exact)") in misspelt.stderr


def test_a_gate_on_a_label_score_fails_where_b_lost_the_label(lucidic_home: Path) -> None:
    """Labels have no order, so none is below another; but a case where B has
    no label at all is a regression, as it is for a number."""
    def labelled(run: Any) -> str | None:
        return None if run.output == "?" else "friendly"

    first = run_experiment(support.shout, CASES, name="labels", evaluators=[labelled])
    second = run_experiment(lambda t: "?" if t == "ab" else t, CASES, name="lost",
                            evaluators=[labelled])
    gated = _cli(lucidic_home, "experiments", "compare", first.experiment_id,
                 second.experiment_id, "--fail-on-regression", "labelled", "--json")
    assert gated.returncode == 1
    assert json.loads(gated.stdout)["regressions"] == {
        "labelled": [{"case_id": "ab", "a": "friendly", "b": None, "delta": None}]}
    assert "labelled regressed in 1 case(s): ab" in gated.stderr
    same = _cli(lucidic_home, "experiments", "compare", first.experiment_id,
                first.experiment_id, "--fail-on-regression", "labelled")
    assert same.returncode == 0, same.stderr


def test_a_run_reads_back_strings_that_look_like_json_as_the_strings_they_were(
        lucidic_home: Path) -> None:
    """A case's input, expected answer and output are read back as they were
    stored: the text "4" stays "4" (not the number 4), "null" stays "null"."""
    cases = [Case("2 + 2", expected="4", name="four"), Case("[1]", expected="null", name="null"),
             Case({"n": "true"}, expected=["1"], name="doc")]
    result = run_experiment(lambda value: "4", cases, name="texts", evaluators=[support.exact])
    stored = [(r.input, r.expected, r.output) for r in result.runs]
    assert stored == [("2 + 2", "4", "4"), ("[1]", "null", "4"), ({"n": "true"}, ["1"], "4")]
    assert [r.scores["exact"] for r in result.runs] == [True, False, False]
    shown = json.loads(_cli(lucidic_home, "experiments", "show", result.experiment_id,
                            "--json").stdout)
    assert {r["case_id"]: (r["input"], r["expected"], r["output"]) for r in shown["runs"]} == {
        r.case_id: (r.input, r.expected, r.output) for r in result.runs}


def test_result_prints_its_runs_and_a_comparison_with_a_baseline(capsys: Any) -> None:
    first = run_experiment(support.shout, CASES, name="base", evaluators=[support.exact])
    second = run_experiment(lambda t: t.upper() if t != "ab" else "?", CASES, name="next",
                            evaluators=[support.exact])
    second.print(baseline=first)
    out = capsys.readouterr().out
    assert "compared with base" in out
    line = next(line for line in out.splitlines() if line.startswith("ab "))
    assert "pass → fail (-1)" in line
    assert "0.667 → 0.333 (-0.333)" in out  # over all cases: the pass rates
    first.print()
    assert "summary  exact mean 0.667, pass 67%" in capsys.readouterr().out


def test_experiments_are_refused_inside_the_in_memory_testing_kit() -> None:
    from lucidic.testing import capture

    with capture(), pytest.raises(lai.InvalidOperationError, match="records in memory only"):
        run_experiment(support.shout, CASES, name="in memory")
