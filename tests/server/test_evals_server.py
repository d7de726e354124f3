"""Evaluations through a real `lucidic server` on SQLite and PostgreSQL: the
same results as the embedded store, runs handed over and scored by claims
over HTTP, replay, the CLI, and project scoping of every new route."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from server_support import Api, ServerProcess, make_key, sdk_env

from helpers import child_env, run_python

EVALS = Path(__file__).resolve().parents[1] / "evals"
sys.path.insert(0, str(EVALS))
from provider_stub import ProviderStub  # noqa: E402

EXPERIMENT = """
    import json
    import evals_support as support
    from lucidic.evals import Case, run_experiment
    cases = [Case("ab", expected="AB", name="ab"), Case("cd", expected="CX", name="cd"),
             Case("efgh", expected="EFGH", name="efgh")]
    def task(text):
        return support.shout(text)
    result = run_experiment(task, cases, name="same", repeats=2,
                            evaluators=[support.exact, support.closeness, support.polite])
    print(json.dumps({"id": result.experiment_id, "summary": result.summary(),
                      "runs": [[r.case_id, r.repeat, r.output, r.error, dict(r.scores),
                                dict(r.passed)] for r in result.runs]}))
"""


def _last_json(output: str) -> Any:
    return json.loads(output.strip().splitlines()[-1])


def _env(server: ServerProcess | None, key: str | None, **extra: str) -> dict[str, str]:
    env = {"PYTHONPATH": str(EVALS), **extra}
    if server is not None and key is not None:
        env.update(sdk_env(server, key))
    return env


def _cli(home: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "lucidic", *args], capture_output=True,
                          text=True, timeout=60, env=child_env(home, env), cwd=EVALS)


def test_an_experiment_through_the_server_gives_what_the_embedded_store_gives(
        db_url: str, start_server: Any, tmp_path: Path) -> None:
    server = start_server(db_url)
    key = make_key(db_url, "evals")
    remote = _last_json(run_python(EXPERIMENT, home=tmp_path / "remote",
                                   env=_env(server, key)).stdout)
    local = _last_json(run_python(EXPERIMENT, home=tmp_path / "local", env=_env(None, None)
                                  ).stdout)
    assert remote["runs"] == local["runs"]
    assert remote["summary"] == local["summary"]
    assert remote["runs"][2] == ["cd", 0, "CD", None,
                                 {"exact": False, "closeness": 0.5, "polite": 0.25},
                                 {"exact": False, "closeness": True, "polite": None}]
    # The CLI reads the same through the server and from the embedded store.
    shown_remote = json.loads(_cli(tmp_path / "cli", sdk_env(server, key), "experiments",
                                   "show", remote["id"], "--json").stdout)
    shown_local = json.loads(_cli(tmp_path / "local", {}, "experiments", "show", local["id"],
                                  "--json").stdout)
    for document in (shown_remote, shown_local):
        for run in document["runs"]:
            for volatile in ("session_id", "cost", "duration", "started_at", "ended_at",
                             "started_at_iso", "ended_at_iso"):
                run.pop(volatile, None)
    # Runs are listed by case in the order the cases first ran, which
    # concurrent runs make differ from one experiment to the next.
    def by_case(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return sorted(runs, key=lambda run: (run["case_id"], run["repeat"]))

    assert by_case(shown_remote["runs"]) == by_case(shown_local["runs"])
    assert shown_remote["summary"] == shown_local["summary"] == {
        "exact": pytest.approx(2 / 3), "closeness": pytest.approx(2.5 / 3),
        "polite": pytest.approx(2.25 / 3)}
    listed = json.loads(_cli(tmp_path / "cli", sdk_env(server, key), "experiments", "list",
                             "--json").stdout)
    assert [(e["id"], e["name"], e["run_count"]) for e in listed] == [(remote["id"], "same", 6)]


CLASHING_SCORES = """
    import json
    from lucidic.evals import Case, Score, run_experiment
    def first(run):
        return [Score("overall", 1.0)]
    def second(run):
        return [Score("overall", 0.0)]
    result = run_experiment(str.upper, [Case("ab", name="ab")], name="clash",
                            evaluators=[first, second], max_concurrency=1)
    (run,) = result.runs
    print(json.dumps([dict(run.scores), dict(run.evaluation_errors)]))
"""


def test_a_score_name_two_evaluators_give_is_refused_by_the_server_store(
        db_url: str, start_server: Any, tmp_path: Path) -> None:
    server = start_server(db_url)
    key = make_key(db_url, "evals")
    scores, errors = _last_json(run_python(CLASHING_SCORES, home=tmp_path,
                                           env=_env(server, key)).stdout)
    assert scores == {"overall": 1.0}
    assert errors == {"second": "its score 'overall' is also given by evaluator 'first'; "
                                "give the scores distinct names"}


def test_a_run_handed_over_through_the_server_is_scored_once_by_claims(
        db_url: str, start_server: Any, tmp_path: Path) -> None:
    server = start_server(db_url)
    key = make_key(db_url, "handover")
    log = tmp_path / "scored.log"
    log.touch()
    env = _env(server, key, EVAL_LOG=str(log))
    started = _last_json(run_python("""
        import json
        import lucidic as lai
        import evals_support
        from lucidic.evals import Case, experiment_run
        experiment = lai.create_experiment("over http", rubrics=["polite", "counted"])
        with experiment_run(experiment, Case("ab", expected="AB", name="ab")) as run:
            lai.create_event(description="first process")
            lai.detach()
        print(json.dumps({"experiment": experiment, "session": run.session_id}))
    """, home=tmp_path / "a", env=env).stdout)
    run_python(f"""
        import lucidic as lai
        import evals_support
        from lucidic.evals import set_output
        with lai.continued({started['session']!r}, end=True):
            lai.create_event(description="second process")
            set_output("AB")
    """, home=tmp_path / "b", env=env)
    assert len(log.read_text().splitlines()) == 1  # scored where it ended
    result = _last_json(run_python(f"""
        import json
        import evals_support
        from lucidic.evals._backend import open_backend
        from lucidic.evals._runs import settle
        print(json.dumps(settle(open_backend(), {started['session']!r}, 30)))
    """, home=tmp_path / "c", env=env).stdout)
    assert (result["output"], result["scores"]) == ("AB", {"polite": 1.0, "counted": True})
    assert len(log.read_text().splitlines()) == 1  # and not again by the third process
    tree = Api(server.url, key).tree(started["session"])
    assert tree["scores"] == {"polite": 1.0, "counted": True}
    assert [e["description"] for e in tree["events"]] == ["first process", "second process"]
    assert {e["name"]: e["status"] for e in tree["evaluations"]} == {
        "polite": "done", "counted": "done"}


def test_replay_through_the_server_makes_no_request(db_url: str, start_server: Any,
                                                    tmp_path: Path) -> None:
    server = start_server(db_url)
    key = make_key(db_url, "replay")
    provider = ProviderStub()
    try:
        code = """
            import json, sys, openai
            from lucidic.evals import Case, run_experiment
            client = openai.OpenAI(max_retries=0)
            def agent(prompt):
                stream = client.chat.completions.create(
                    model="gpt-4o-mini", stream=True,
                    messages=[{"role": "user", "content": prompt}])
                return "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
            result = run_experiment(agent, [Case("hi", name="hi"), Case("yo", name="yo")],
                                    name="served", providers=["openai"],
                                    replay=sys.argv[1] if len(sys.argv) > 1 else None)
            print(json.dumps({"id": result.experiment_id,
                              "outputs": [r.output for r in result.runs],
                              "replayed": result.replayed}))
        """
        env = _env(server, key, OPENAI_BASE_URL=provider.url + "/v1", OPENAI_API_KEY="sk-x")
        first = _last_json(run_python(code, home=tmp_path / "a", env=env).stdout)
        made = provider.total
        second = _last_json(run_python(code, home=tmp_path / "b", env=env,
                                       args=[first["id"]]).stdout)
    finally:
        provider.close()
    assert made == 2 and provider.total == 2
    assert second["outputs"] == first["outputs"] and second["replayed"] == 2


def test_every_evaluation_route_is_scoped_to_the_keys_project(
        sqlite_url: str, start_server: Any, tmp_path: Path) -> None:
    server = start_server(sqlite_url)
    mine, theirs = make_key(sqlite_url, "mine"), make_key(sqlite_url, "theirs")
    made = _last_json(run_python(EXPERIMENT, home=tmp_path / "a",
                                 env=_env(server, mine)).stdout)
    api, other = Api(server.url, mine), Api(server.url, theirs)
    experiment = made["id"]
    runs = api.get(f"/api/v1/experiments/{experiment}/runs").json()["runs"]
    session = runs[0]["session_id"]
    for path in (f"/api/v1/experiments/{experiment}", f"/api/v1/experiments/{experiment}/runs",
                 f"/api/v1/experiments/{experiment}/llm-events"):
        assert api.get(path).status_code == 200
        refused = other.get(path)
        assert refused.status_code == 404, refused.text
        assert "was not found in this project" in refused.json()["detail"]
    assert other.get("/api/v1/experiments").json()["experiments"] == []
    assert other.post("/api/v1/runs", json={"session_ids": [session]}).json()["runs"] == []
    assert other.get("/api/v1/evaluations", params={"session_id": session}).status_code == 404
    claim = {"session_id": session, "names": ["exact"], "owner": "intruder", "lease": 60}
    assert other.post("/api/v1/evaluations/claim", json=claim).status_code == 404
    completion = {"session_id": session, "name": "exact", "owner": "intruder", "force": True,
                  "scores": [{"name": "exact", "kind": "bool", "value": 1.0}]}
    assert other.post("/api/v1/evaluations/complete", json=completion).status_code == 404
    # A score record naming another project's session is refused, all or nothing.
    refused = other.records({"kind": "score", "id": "s-1", "ts": 1.0,
                             "fields": {"session_id": session, "name": "x", "kind": "number",
                                        "value": 1.0}})
    assert refused.status_code == 404, refused.text
    # An experiment id is a name within a project: theirs is another experiment.
    assert other.records({"kind": "experiment", "id": experiment, "ts": 1.0,
                          "fields": {"name": "theirs"}}).status_code == 200
    assert api.get(f"/api/v1/experiments/{experiment}").json()["name"] == "same"
    assert other.get(f"/api/v1/experiments/{experiment}").json()["name"] == "theirs"
    # Nothing of theirs changed mine.
    assert api.get(f"/api/v1/sessions/{session}/tree").json()["scores"] == runs[0]["scores"]


def test_bad_evaluation_requests_get_a_clear_4xx(sqlite_url: str, start_server: Any,
                                                 tmp_path: Path) -> None:
    server = start_server(sqlite_url)
    key = make_key(sqlite_url, "bad")
    api = Api(server.url, key)
    sid = str(uuid.uuid4())
    assert api.records({"kind": "session", "id": sid, "ts": 1.0,
                        "fields": {"name": "s", "started_at": 1.0}}).status_code == 200
    cases = [
        ("/api/v1/evaluations/claim", {"session_id": sid, "names": [], "owner": "o",
                                       "lease": 1}, 422),
        ("/api/v1/evaluations/claim", {"session_id": sid, "names": ["x"], "owner": "o",
                                       "lease": -1}, 422),
        ("/api/v1/evaluations/complete", {"session_id": sid, "name": "x", "owner": "o",
                                          "scores": [{"name": "x", "kind": "number",
                                                      "value": "NaN"}]}, 422),
        ("/api/v1/evaluations/complete", {"session_id": sid, "name": "x", "owner": "o",
                                          "scores": [{"name": "x", "kind": "weird"}]}, 422),
        ("/api/v1/runs", {"session_ids": ["x"] * 1001}, 422),
        ("/api/v1/records", {"records": [{"kind": "score", "id": "s", "ts": 1.0,
                                          "fields": {"name": "x"}}]}, 422),
        ("/api/v1/records", {"records": [{"kind": "experiment", "id": "e", "ts": 1.0,
                                          "fields": {"repeats": -2}}]}, 422),
    ]
    for path, body, status in cases:
        response = api.post(path, json=body)
        assert response.status_code == status, (path, body, response.text)
        assert response.json()["detail"]
    # Completing an evaluation nobody claimed is refused (not an error).
    lonely = api.post("/api/v1/evaluations/complete",
                      json={"session_id": sid, "name": "x", "owner": "o", "scores": []})
    assert lonely.status_code == 200 and lonely.json() == {"stored": False}
    assert api.get("/api/v1/mass-sims/nope").status_code == 404


def test_scores_mass_sims_and_the_hosted_sdks_parameters_reach_the_server(
        db_url: str, start_server: Any, tmp_path: Path) -> None:
    server = start_server(db_url)
    key = make_key(db_url, "sdk")
    out = _last_json(run_python("""
        import json
        import lucidic as lai
        import evals_support  # the rubric 'polite', scored where the session ends
        from lucidic.evals import set_output
        sim = lai.create_mass_sim("nightly", 2, task="book", tags=["n"])
        sid = lai.init(session_name="run", mass_sim_id=sim, experiment_id="exp-x",
                       rubrics=["polite"], production_monitoring=True)
        step = lai.create_step(action="work")
        lai.score("quality", 0.7, comment="fine")
        lai.score("on-topic", True, step_id=step)
        lai.end_step()
        set_output("OK")
        lai.end_session(is_successful=True)
        print(json.dumps({"sim": sim, "session": sid}))
    """, home=tmp_path / "sdk", env=_env(server, key)).stdout)
    api = Api(server.url, key)
    tree = api.tree(out["session"])
    assert tree["scores"] == {"quality": 0.7, "polite": 0.25}
    assert tree["steps"][0]["scores"] == {"on-topic": True}
    assert (tree["mass_sim_id"], tree["experiment_id"], tree["rubrics"],
            tree["production_monitoring"], tree["output"]) == (
        out["sim"], "exp-x", ["polite"], True, "OK")
    sim = api.get(f"/api/v1/mass-sims/{out['sim']}").json()
    assert (sim["name"], sim["total"], sim["sessions"], sim["ended"]) == ("nightly", 2, 1, 1)
    experiment = api.get("/api/v1/experiments/exp-x").json()
    assert experiment["id"] == "exp-x" and experiment["name"] is None  # made on first use
    shown = json.loads(_cli(tmp_path / "cli", sdk_env(server, key), "mass-sims", "show",
                            out["sim"], "--json").stdout)
    assert (shown["total"], shown["sessions"], shown["ended"]) == (2, 1, 1)
