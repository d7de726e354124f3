"""The experiments pages, over experiments recorded by real SDK processes:
the list, one experiment's runs by case and repeat with its summary, the
comparison of two experiments with score, cost and latency deltas, a run's
scores on its session page; escaped, scoped to the signed-in project, and
working in a real browser."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import requests
from playwright.sync_api import expect
from server_support import make_key

from helpers import run_python

EVALS = Path(__file__).resolve().parents[1] / "evals"

EXPERIMENTS = """
    import json
    import evals_support as support
    from lucidic.evals import Case, run_experiment
    cases = [Case("ab", expected="AB", name="ab"), Case("cd", expected="CX", name="cd")]
    def broken(run):
        raise ValueError("no rubric <here>")
    first = run_experiment(support.shout, cases, name="baseline <b>v1</b>", repeats=2,
                           evaluators=[support.exact, support.closeness, support.polite,
                                       broken])
    def worse(text):
        return "??" if text == "ab" else text.upper()
    second = run_experiment(worse, cases, name="candidate", repeats=2,
                            evaluators=[support.exact, support.closeness, support.polite])
    print(json.dumps({"a": first.experiment_id, "b": second.experiment_id,
                      "run": first.runs[0].session_id}))
"""


def _record(home: Path, env: dict[str, str] | None = None) -> dict[str, str]:
    out = run_python(EXPERIMENTS, home=home, env={"PYTHONPATH": str(EVALS), **(env or {})})
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def _text(html: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html))


def test_experiment_pages_show_runs_summaries_and_comparisons(ui: Any, lucidic_home: Path
                                                              ) -> None:
    ids = _record(lucidic_home)
    listing = requests.get(ui.url + "/experiments", timeout=10)
    assert listing.status_code == 200
    assert "baseline &lt;b&gt;v1&lt;/b&gt;" in listing.text and "<b>v1</b>" not in listing.text
    assert f'href="/experiments/{ids["a"]}"' in listing.text
    assert 'href="/experiments" aria-current="page"' in listing.text

    page = requests.get(f"{ui.url}/experiments/{ids['a']}", timeout=10)
    assert page.status_code == 200
    text = _text(page.text)
    # The summary: exact passes in half the runs; closeness 0.75 on average.
    assert "exact 0.5 pass 50.0% · 4 scored" in text
    assert "closeness 0.75 pass 100.0% · 4 scored" in text
    # An evaluator that failed every run has its column and says so.
    assert "broken — 0 scored, 4 missing, 4 failed to score" in text
    assert page.text.count('title="ValueError: no rubric &lt;here&gt;">error</span>') == 4
    # Runs by case and repeat, each linking its session.
    assert re.search(r'rowspan="2" class="col-case">ab', page.text)
    assert text.count("#0") == 2 and text.count("#1") == 2
    assert f'href="/sessions/{ids["run"]}"' in page.text
    assert "pass" in text and "fail" in text

    compared = requests.get(f"{ui.url}/experiments/compare",
                            params={"a": ids["a"], "b": ids["b"]}, timeout=10)
    assert compared.status_code == 200
    row = re.search(r'<th scope="row" class="col-case">ab.*?</tr>', compared.text, re.S)
    assert row is not None
    cells = _text(row.group(0))
    assert "pass → fail" in cells and "−1" in cells
    assert 'class="delta worse"' in row.group(0)
    assert "Cost" in compared.text and "Duration" in compared.text
    unknown = requests.get(f"{ui.url}/experiments/compare", params={"a": ids["a"], "b": "nope"},
                           timeout=10)
    assert unknown.status_code == 404 and "nope" in unknown.text
    assert requests.get(f"{ui.url}/experiments/nope", timeout=10).status_code == 404

    session = requests.get(f"{ui.url}/sessions/{ids['run']}", timeout=10)
    text = _text(session.text)
    assert f"run of experiment {ids['a']} , case ab , repeat 0" in text
    assert f'href="/experiments/{ids["a"]}"' in session.text
    assert "exact pass" in text and "closeness 1" in text
    assert "Rubric polite : 1" in text  # with its criteria, weighted
    assert re.search(r"<td>exact</td><td class=\"num\">3</td><td class=\"num\">1</td>",
                     session.text)


def test_experiment_pages_on_the_server_show_only_the_signed_in_projects(
        sqlite_url: str, start_server: Any, tmp_path: Path) -> None:
    server = start_server(sqlite_url)
    mine, theirs = make_key(sqlite_url, "mine"), make_key(sqlite_url, "theirs")
    ids = _record(tmp_path / "sdk", {"LUCIDIC_BASE_URL": server.url, "LUCIDIC_API_KEY": mine})
    owner, other = requests.Session(), requests.Session()
    owner.post(server.url + "/sign-in", data={"api_key": mine}, timeout=10)
    other.post(server.url + "/sign-in", data={"api_key": theirs}, timeout=10)
    assert "candidate" in owner.get(server.url + "/experiments", timeout=10).text
    assert "candidate" not in other.get(server.url + "/experiments", timeout=10).text
    assert owner.get(f"{server.url}/experiments/{ids['a']}", timeout=10).status_code == 200
    assert other.get(f"{server.url}/experiments/{ids['a']}", timeout=10).status_code == 404
    compare = {"a": ids["a"], "b": ids["b"]}
    assert other.get(server.url + "/experiments/compare", params=compare,
                     timeout=10).status_code == 404
    anonymous = requests.get(server.url + "/experiments", allow_redirects=False, timeout=10)
    assert anonymous.status_code == 303


@pytest.mark.timeout(240)
def test_comparing_two_experiments_in_a_browser(ui: Any, lucidic_home: Path, page: Any) -> None:
    ids = _record(lucidic_home)
    p = page.page
    p.goto(ui.url + "/")
    p.get_by_role("link", name="Experiments").click()
    p.wait_for_url(re.compile(r"/experiments$"))
    p.get_by_role("link", name="baseline <b>v1</b>").click()
    p.wait_for_url(re.compile(rf"/experiments/{ids['a']}$"))
    assert p.get_by_role("heading", level=1).inner_text() == "baseline <b>v1</b>"
    runs = p.get_by_role("table", name=re.compile("Runs of"))
    expect(runs.locator("tbody tr")).to_have_count(4)
    p.get_by_label("Compare with").select_option(value=ids["b"])
    p.get_by_role("button", name="Compare").click()
    p.wait_for_url(re.compile(r"/experiments/compare\?"))
    row = p.get_by_role("row", name=re.compile(r"^ab"))
    expect(row.locator(".delta.worse").first).to_be_visible()
    p.get_by_role("link", name="swap").click()
    row = p.get_by_role("row", name=re.compile(r"^ab"))
    expect(row.locator(".delta.better").first).to_be_visible()
    origin = ui.url
    foreign = [u for u in page.requests if not u.startswith(("data:", "about:"))
               and not u.startswith(origin)]
    assert foreign == [] and page.problems == [], (foreign, page.problems)
