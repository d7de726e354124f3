"""Runs that are sessions: handed between processes and scored where they
end, exactly once; scored again without running; rubrics named at init;
scores on sessions, steps and events; the hosted SDK's parameters and
create_mass_sim; an LLM judge whose own call is a linked session."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import evals_support as support
import pytest
from provider_stub import ProviderStub

import lucidic as lai
from lucidic import evalstore
from lucidic.evals import (
    Case,
    evaluate_sessions,
    evaluator,
    experiment_run,
    llm_judge,
    run_experiment,
    set_output,
)
from lucidic.store import Store

HERE = Path(__file__).resolve().parent


def _env(extra: dict[str, str] | None = None) -> dict[str, str]:
    return {"PYTHONPATH": str(HERE), **(extra or {})}


def test_a_run_handed_to_another_process_is_scored_where_its_session_ends(
        lucidic_home: Path, store: Store) -> None:
    from helpers import run_python

    experiment = lai.create_experiment("hand-over", rubrics=["polite"],
                                       metadata={"owner": "tests"}, tags=["nightly"])
    with experiment_run(experiment, Case("ab", expected="AB", name="ab")) as run:
        lai.create_step(action="plan here")
        lai.end_step()
        lai.detach()  # the run goes on elsewhere
    assert run.session_id is not None
    row = store.get_session(run.session_id)
    assert row is not None and not row["is_finished"]  # detached, not ended
    child = run_python(f"""
        import os
        import lucidic as lai
        import evals_support  # defines the rubric 'polite' here too
        from lucidic.evals import set_output
        with lai.continued({run.session_id!r}, end=True):
            lai.create_event(description="worked in the child")
            set_output("AB")
        print(os.getpid())
    """, home=lucidic_home, env=_env())
    child_pid = int(child.stdout.strip())
    result = run.result(timeout=30)
    assert (result.case_id, result.repeat, result.output, result.error) == ("ab", 0, "AB", None)
    assert dict(result.scores) == {"polite": 1.0}
    (evaluation,) = store.reader().evaluations([run.session_id])[run.session_id]
    assert evaluation["status"] == "done" and f":{child_pid}:" in evaluation["owner"]
    tree = store.session_tree(run.session_id)
    assert tree is not None and [s["action"] for s in tree["steps"]] == ["plan here"]
    assert [e["description"] for e in tree["events"]] == ["worked in the child"]
    experiment_row = store.reader().experiment(experiment)
    assert experiment_row is not None
    assert (experiment_row["name"], experiment_row["rubrics"], experiment_row["metadata"],
            experiment_row["tags"]) == ("hand-over", ["polite"], {"owner": "tests"},
                                        ["nightly"])


def test_a_run_ended_where_its_evaluator_is_unknown_is_scored_by_its_owner(
        lucidic_home: Path, store: Store) -> None:
    from helpers import run_python

    experiment = lai.create_experiment("owner-scores", rubrics=["polite"])
    with experiment_run(experiment, Case("ab", expected="AB", name="ab")) as run:
        lai.detach()
    # This child never imports lucidic.evals: it ends the run and scores nothing.
    run_python(f"""
        import lucidic as lai
        with lai.continued({run.session_id!r}, end=True):
            lai.update_session(is_successful=True)
    """, home=lucidic_home)
    assert store.reader().evaluations([run.session_id]) == {}
    result = run.result(timeout=30)  # the owner has the rubric: it scores the run
    assert dict(result.scores) == {"polite": 0.25}  # no output: not exact, but short


def test_racing_processes_score_an_ended_run_exactly_once(lucidic_home: Path,
                                                          tmp_path: Path) -> None:
    from helpers import child_env, run_python

    log = tmp_path / "scored.log"
    log.touch()
    # Ended in a process that cannot score it ('counted' is not defined there).
    made = run_python("""
        import lucidic as lai
        print(lai.init(session_name="due", experiment_id="race", rubrics=["counted"]))
        lai.end_session(is_successful=True)
    """, home=lucidic_home)
    session_id = made.stdout.strip()
    code = textwrap.dedent(f"""
        import sys, time
        import evals_support
        from lucidic.evals._backend import open_backend
        from lucidic.evals._runs import settle
        while time.time() < float(sys.argv[1]):
            time.sleep(0.001)  # start together
        row = settle(open_backend(), {session_id!r}, 60)
        print(row["scores"])
    """)
    start = str(time.time() + 2.0)
    children = [subprocess.Popen([sys.executable, "-c", code, start], stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True,
                                 env=child_env(lucidic_home, _env({"EVAL_LOG": str(log)})))
                for _ in range(4)]
    outputs = [child.communicate(timeout=90) for child in children]
    assert all(c.returncode == 0 for c in children), outputs
    assert [out for out, _ in outputs] == ["{'counted': False}\n"] * 4  # all see the score
    assert len(log.read_text().splitlines()) == 1  # scored once, by one of them
    again = run_python(code, home=lucidic_home, env=_env({"EVAL_LOG": str(log)}),
                       args=[str(time.time())])
    assert again.stdout.strip() == "{'counted': False}"
    assert len(log.read_text().splitlines()) == 1  # done is done


def test_a_claim_whose_holder_died_is_taken_over_and_its_late_outcome_refused(
        store: Store) -> None:
    sid = lai.init(session_name="claimed")
    lai.end_session()
    lai.flush()
    assert evalstore.claim(store, "default", sid, ["judge"], "dead-owner", 600) == ["judge"]
    assert evalstore.claim(store, "default", sid, ["judge"], "second", 600) == []
    time.sleep(0.05)
    assert evalstore.claim(store, "default", sid, ["judge"], "third", 0.01) == ["judge"]
    score = {"name": "judge", "kind": "number", "value": 0.5}
    assert not evalstore.complete(store, "default", sid, "judge", "dead-owner",
                                  scores=[score], criteria=[], error=None,
                                  evaluator_session_id=None, force=False)
    assert evalstore.complete(store, "default", sid, "judge", "third", scores=[score],
                              criteria=[], error=None, evaluator_session_id=None, force=False)
    tree = store.session_tree(sid)
    assert tree is not None and tree["scores"] == {"judge": 0.5}
    assert evalstore.claim(store, "default", sid, ["judge"], "fourth", 0.0) == []  # done


def test_rescoring_stored_runs_runs_nothing_again(lucidic_home: Path) -> None:
    calls: list[str] = []
    lock = threading.Lock()

    def task(text: str) -> str:
        with lock:
            calls.append(text)
        return text.upper()

    cases = [Case("ab", expected="AB", name="ab"), Case("cd", expected="CX", name="cd")]
    result = run_experiment(task, cases, name="once", evaluators=[support.exact], repeats=2)
    assert len(calls) == 4

    @evaluator(name="exact")
    def lenient(run: Any) -> bool:
        return str(run.output)[0] == str(run.expected)[0]

    rescored = evaluate_sessions([lenient, support.length], experiment_id=result.experiment_id)
    assert len(calls) == 4  # nothing ran again
    assert {(r.case_id, r.repeat): dict(r.scores) for r in rescored} == {
        ("ab", 0): {"exact": True, "length": 2.0}, ("ab", 1): {"exact": True, "length": 2.0},
        ("cd", 0): {"exact": True, "length": 2.0}, ("cd", 1): {"exact": True, "length": 2.0}}
    # The same through the CLI, with an evaluator importable from where it runs.
    from helpers import child_env

    cli = subprocess.run([sys.executable, "-m", "lucidic", "experiments", "rescore",
                          result.experiment_id, "--evaluator", "evals_support:exact", "--json"],
                         capture_output=True, text=True, timeout=60, cwd=HERE,
                         env=child_env(lucidic_home))
    assert cli.returncode == 0, cli.stderr
    document = json.loads(cli.stdout)
    assert [r["scores"] for r in document["runs"]] == [
        {"exact": True, "length": 2.0}, {"exact": True, "length": 2.0},
        {"exact": False, "length": 2.0}, {"exact": False, "length": 2.0}]
    assert len(calls) == 4
    unknown = subprocess.run([sys.executable, "-m", "lucidic", "experiments", "rescore",
                              result.experiment_id, "--evaluator", "no_such_module:f"],
                             capture_output=True, text=True, timeout=60,
                             env=child_env(lucidic_home))
    assert unknown.returncode != 0
    assert "cannot import evaluator 'no_such_module:f'" in unknown.stderr
    with pytest.raises(lai.InvalidOperationError, match="experiment_id=... or session_ids"):
        evaluate_sessions([lenient])
    with pytest.raises(lai.InvalidOperationError, match="was not found"):
        evaluate_sessions([lenient], session_ids=["no-such-session"])


def test_rubrics_named_at_init_score_the_session_when_it_ends(store: Store) -> None:
    sid = lai.init(session_name="support chat", rubrics=["polite"], mass_sim_id="sim-1",
                   experiment_id="exp-1", production_monitoring=True)
    set_output("OK")
    lai.end_session(is_successful=True)
    tree = store.session_tree(sid)
    assert tree is not None
    # "OK" is no exact match (nothing was expected) but short: (3*0 + 1*1) / 4.
    assert tree["scores"] == {"polite": 0.25}
    assert (tree["mass_sim_id"], tree["experiment_id"], tree["rubrics"],
            tree["production_monitoring"]) == ("sim-1", "exp-1", ["polite"], True)
    with lai.session("scoped", rubrics=[support.polite]) as scoped:
        set_output("HELLO WORLD")
    scoped_tree = store.session_tree(scoped)
    assert scoped_tree is not None and scoped_tree["scores"] == {"polite": 0.0}
    for bad, message in (({"rubrics": "polite"}, "rubrics must be a list"),
                         ({"mass_sim_id": 7}, "mass_sim_id must be an id string"),
                         ({"production_monitoring": "yes"}, "production_monitoring must be")):
        with pytest.raises(lai.InvalidOperationError, match=message):
            lai.init(**bad)  # type: ignore[arg-type]


def test_scores_on_sessions_steps_and_events(store: Store) -> None:
    sid = lai.init(session_name="scored")
    step = lai.create_step(action="draft")
    event = lai.create_event(description="looked up")
    lai.score("quality", 0.4, comment="first look")
    lai.score("quality", 0.8, comment="second look")  # replaces the first
    lai.score("on-topic", True, step_id=step)
    lai.score("tone", "friendly", event_id=event)
    lai.end_step()
    lai.end_session()
    with pytest.raises(lai.InvalidOperationError, match="finite number"):
        lai.score("bad", float("nan"), session_id=sid)
    with pytest.raises(lai.InvalidOperationError, match="a number, a bool or a label"):
        lai.score("bad", [1, 2], session_id=sid)  # type: ignore[arg-type]
    with pytest.raises(lai.InvalidOperationError, match="non-empty string"):
        lai.score("", 1, session_id=sid)
    with pytest.raises(lai.LucidicNotInitializedError, match="pass session_id"):
        lai.score("later", 1)
    lai.score("later", 3, session_id=sid)  # on a session that is not current here
    lai.flush()
    tree = store.session_tree(sid)
    assert tree is not None
    assert tree["scores"] == {"later": 3.0, "quality": 0.8}
    (step_node,) = tree["steps"]
    assert step_node["scores"] == {"on-topic": True}
    assert step_node["events"][0]["scores"] == {"tone": "friendly"}  # the event is in the step
    quality = next(s for s in tree["score_details"] if s["name"] == "quality")
    assert (quality["comment"], quality["source"]) == ("second look", "api")


def test_a_later_score_of_the_same_name_replaces_all_of_the_earlier_one(store: Store) -> None:
    """A score is replaced whole, not merged: a later score without a comment
    has none, and one given with lai.score over an evaluator's has neither the
    evaluator's verdict nor its name."""
    result = run_experiment(support.shout, [Case("ab", expected="AB")], name="scored",
                            evaluators=[support.closeness])
    (run,) = result.runs
    assert run.passed == {"closeness": True}
    lai.score("closeness", 0.1, session_id=run.session_id)
    sid = lai.init(session_name="rescored by hand")
    lai.score("quality", 0.4, comment="first look")
    lai.score("quality", 0.8)
    lai.end_session()
    lai.flush()
    (quality,) = store.session_tree(sid)["score_details"]
    assert (quality["value"], quality["comment"]) == (0.8, None)
    (closeness,) = store.session_tree(run.session_id)["score_details"]
    assert {k: closeness[k] for k in ("value", "passed", "source", "evaluator")} == {
        "value": 0.1, "passed": None, "source": "api", "evaluator": None}


def test_the_hosted_sdks_parameters_and_create_mass_sim_from_child_processes(
        lucidic_home: Path, store: Store) -> None:
    from helpers import child_env, run_python

    made = run_python("""
        import lucidic as lai
        print(lai.create_mass_sim("nightly", 3, task="book a flight", tags=["nightly"]))
    """, home=lucidic_home)
    sim = made.stdout.strip()
    run = """
        import sys
        import lucidic as lai
        sid = lai.init(session_name=sys.argv[2], mass_sim_id=sys.argv[1],
                       experiment_id="exp-hosted", rubrics=["polite", "correct"],
                       production_monitoring=False, auto_end=sys.argv[3] == "end")
        lai.create_event(description="booked")
        if sys.argv[3] == "end":
            lai.end_session(is_successful=sys.argv[2] == "run 0")
        print(sid)
    """
    sessions = [run_python(run, home=lucidic_home, args=[sim, f"run {n}", mode]).stdout.strip()
                for n, mode in ((0, "end"), (1, "end"), (2, "leave open"))]
    shown = subprocess.run([sys.executable, "-m", "lucidic", "mass-sims", "show", sim, "--json"],
                           capture_output=True, text=True, timeout=60,
                           env=child_env(lucidic_home))
    assert shown.returncode == 0, shown.stderr
    document = json.loads(shown.stdout)
    assert {k: document[k] for k in ("id", "name", "task", "tags", "total", "sessions",
                                     "ended", "successful", "failed")} == {
        "id": sim, "name": "nightly", "task": "book a flight", "tags": ["nightly"],
        "total": 3, "sessions": 3, "ended": 2, "successful": 1, "failed": 1}
    listed = json.loads(subprocess.run(
        [sys.executable, "-m", "lucidic", "mass-sims", "list", "--json"], capture_output=True,
        text=True, timeout=60, env=child_env(lucidic_home)).stdout)
    assert [m["id"] for m in listed] == [sim]
    tree = json.loads(subprocess.run(
        [sys.executable, "-m", "lucidic", "sessions", "show", sessions[0], "--json"],
        capture_output=True, text=True, timeout=60, env=child_env(lucidic_home)).stdout)
    assert {k: tree[k] for k in ("experiment_id", "case_id", "repeat", "mass_sim_id",
                                 "rubrics", "scores")} == {
        "experiment_id": "exp-hosted", "case_id": None, "repeat": None, "mass_sim_id": sim,
        "rubrics": ["polite", "correct"], "scores": {}}
    # The experiment id no one created exists now, holding the three runs.
    experiment = store.reader().experiment("exp-hosted")
    assert experiment is not None and experiment["name"] is None
    assert len(store.reader().runs("exp-hosted")) == 3
    listing = subprocess.run([sys.executable, "-m", "lucidic", "sessions", "list",
                              "--mass-sim", sim, "--json"], capture_output=True, text=True,
                             timeout=60, env=child_env(lucidic_home))
    assert sorted(s["id"] for s in json.loads(listing.stdout)) == sorted(sessions)
    with pytest.raises(lai.InvalidOperationError, match="total_num_sessions must be"):
        lai.create_mass_sim("x", -1)
    with pytest.raises(lai.InvalidOperationError, match="mass_sim_name must be"):
        lai.create_mass_sim("", 1)


def test_an_llm_judge_records_its_own_call_in_a_session_linked_to_the_run(
        provider: ProviderStub, store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", provider.url + "/v1")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    judge = llm_judge("Is the answer polite?", model="gpt-4o-mini", name="judge",
                      threshold=0.5)
    result = run_experiment(lambda text: "bad" if text == "cd" else "fine",
                            [Case("ab", name="ab"), Case("cd", name="cd")], name="judged",
                            evaluators=[judge])
    by_case = {r.case_id: r for r in result.runs}
    assert by_case["ab"].scores == {"judge": 0.9} and by_case["ab"].passed["judge"] is True
    assert by_case["cd"].scores == {"judge": 0.1} and by_case["cd"].passed["judge"] is False
    assert by_case["ab"].comments == {"judge": "judged 0.9"}
    run_tree = store.session_tree(by_case["ab"].session_id)
    assert run_tree is not None
    (detail,) = run_tree["score_details"]
    judge_session = detail["evaluator_session_id"]
    judge_tree = store.session_tree(judge_session)
    assert judge_tree is not None and judge_tree["tags"] == ["evaluator"]
    assert judge_tree["evaluates"] == [{"session_id": by_case["ab"].session_id,
                                        "name": "judge"}]
    (call,) = judge_tree["events"]
    assert (call["type"], call["provider"], call["model"]) == (
        "llm", "openai", "gpt-4o-mini-2024-07-18")
    assert "Output:\nfine" in call["input"][-1]["content"]
    assert call["arguments"] == {"temperature": 0}  # what the judge asked with
    assert call["output"]["content"] == '{"score": 0.9, "reason": "judged 0.9"}'
    # The run's own session holds none of the judge's call.
    assert run_tree["events"] == []
    # A judge described in the experiment can be rebuilt by another process.
    described = store.reader().experiment(result.experiment_id)
    assert described is not None
    assert described["evaluators"][0]["judge"] == {
        "rubric": "Is the answer polite?", "model": "gpt-4o-mini", "provider": "openai"}


def test_set_output_needs_a_current_session() -> None:
    with pytest.raises(lai.LucidicNotInitializedError, match="set_output"):
        set_output("x")
    with pytest.raises(lai.InvalidOperationError, match="repeat must be"):
        experiment_run("exp", Case("x"), repeat=-1)


def test_a_session_ended_while_its_server_is_down_stays_due_and_nothing_breaks(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("LUCIDIC_BASE_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("LUCIDIC_API_KEY", "lk_unreachable")
    monkeypatch.setenv("LUCIDIC_FLUSH_TIMEOUT", "0.5")
    caplog.set_level("WARNING", logger="lucidic")
    lai.init(session_name="offline", rubrics=["polite"])
    set_output("OK")
    lai.end_session(is_successful=True)  # returns: the records wait in the spool
    assert "could not score session" in caplog.text and "stays due" in caplog.text
    lai.shutdown(timeout=0.5)  # what is left waits in the test's own spool


def test_an_anthropic_judge_and_an_async_run_block(provider: ProviderStub, store: Store,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    import asyncio

    monkeypatch.setenv("ANTHROPIC_BASE_URL", provider.url)
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test")
    judge = llm_judge("Is it right?", model="claude-3-5-haiku-latest", provider="anthropic",
                      name="claude judge")
    experiment = lai.create_experiment("async block")

    async def main() -> Any:
        async with experiment_run(experiment, Case("q", name="q"), repeat=2,
                                  providers=None) as run:
            await asyncio.sleep(0)
            set_output("fine")
        return run

    run = asyncio.run(main())
    rescored = evaluate_sessions([judge], session_ids=[run.session_id])
    (result,) = rescored
    assert (result.case_id, result.repeat, result.output) == ("q", 2, "fine")
    assert result.scores == {"claude judge": 0.9}
    assert provider.requests["/v1/messages"] == 1
    tree = store.session_tree(run.session_id)
    assert tree is not None
    judge_tree = store.session_tree(tree["score_details"][0]["evaluator_session_id"])
    assert judge_tree is not None
    (call,) = judge_tree["events"]
    assert (call["provider"], call["model"]) == ("anthropic", "claude-3-5-haiku-latest")
    assert call["input"][0]["role"] == "system"
    assert call["arguments"]["max_tokens"] == 512


def test_a_session_ended_by_sigterm_is_left_to_be_scored_later(
        lucidic_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import signal

    from helpers import child_env

    log = tmp_path / "scored.log"
    log.touch()
    child = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent("""
            import time
            import lucidic as lai
            import evals_support  # could score it: 'counted' is defined here
            print(lai.init(session_name="terminated", rubrics=["counted"]), flush=True)
            time.sleep(60)
        """)], stdout=subprocess.PIPE, text=True,
        env=child_env(lucidic_home, _env({"EVAL_LOG": str(log)})))
    assert child.stdout is not None
    session_id = child.stdout.readline().strip()
    child.send_signal(signal.SIGTERM)
    assert child.wait(30) == -signal.SIGTERM
    store = Store(lucidic_home / "lucidic.db")
    try:
        row = store.get_session(session_id)
        assert row is not None and row["is_finished"]
        assert row["is_successful_reason"] == "terminated by SIGTERM"
        assert log.read_text() == ""  # not scored inside the signal handler
    finally:
        store.close()
    from lucidic.evals._backend import open_backend
    from lucidic.evals._runs import settle

    monkeypatch.setenv("EVAL_LOG", str(log))
    backend = open_backend()
    try:
        assert settle(backend, session_id, 30)["scores"] == {"counted": False}
    finally:
        backend.close()
    assert len(log.read_text().splitlines()) == 1  # scored later, once
