"""``lucidic experiments`` and ``lucidic mass-sims``: read experiments and
mass simulations, compare two experiments, score an experiment again.

They read the embedded store, or the server at LUCIDIC_BASE_URL (with
LUCIDIC_API_KEY), like ``lucidic sessions``; ``--json`` prints stable keys.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from . import _config, _render
from . import _render_experiments as show
from ._cli_parsing import add_paging, add_parser, help_of


@contextmanager
def _backend() -> Iterator[Any]:
    from .errors import LucidicError
    from .evals._backend import open_backend

    if not _config.base_url() and not _config.store_path().exists():
        raise SystemExit(f"lucidic: no embedded store at {_config.store_path()} yet: nothing "
                         "was recorded (set LUCIDIC_HOME to read another one)")
    try:
        backend = open_backend()
    except LucidicError as exc:
        raise SystemExit(f"lucidic: {exc}") from exc
    try:
        yield backend
    except LucidicError as exc:
        raise SystemExit(f"lucidic: {exc}") from exc
    finally:
        backend.close()


def _experiment(backend: Any, experiment_id: str) -> dict[str, Any]:
    experiment = backend.experiment(experiment_id)
    if experiment is None:
        raise SystemExit(f"lucidic: no experiment {experiment_id!r} here "
                         "(`lucidic experiments list` shows them)")
    return dict(experiment)


def _run_json(run: dict[str, Any]) -> dict[str, Any]:
    keys = ("session_id", "case_id", "repeat", "status", "input", "expected", "output",
            "error", "scores", "passed", "comments", "evaluation_errors", "cost", "duration",
            "started_at", "ended_at")
    return {k: run.get(k) for k in keys}


def experiment_document(backend: Any, experiment_id: str) -> dict[str, Any]:
    """An experiment as ``experiments show --json`` prints it: its row, its
    ``runs``, ``summary`` {evaluator: value} and ``stats`` per evaluator."""
    from .reading import summary as _summary

    experiment = _experiment(backend, experiment_id)
    runs = [_run_json(r) for r in backend.runs(experiment_id)]
    summary_scores = experiment.get("summary") if isinstance(experiment.get("summary"),
                                                             dict) else {}
    return {**experiment, "summary": _summary.summary(runs, summary_scores),
            "stats": _summary.stats(runs), "runs": runs}


def _listing(rows: list[dict[str, Any]], as_json: bool, empty: str,
             table: Callable[[list[dict[str, Any]]], str]) -> int:
    if as_json:
        _render.print_json(rows)
    else:
        print(table(rows) if rows else empty)
    return 0


def _list(args: argparse.Namespace) -> int:
    with _backend() as backend:
        experiments = backend.experiments(limit=args.limit, offset=args.offset)
    return _listing(experiments, args.json, "no experiments yet: run one with "
                    "lucidic.evals.run_experiment()", show.experiments_table)


def _show(args: argparse.Namespace) -> int:
    with _backend() as backend:
        document = experiment_document(backend, args.experiment_id)
    if args.json:
        _render.print_json(document)
        return 0
    print(show.experiment_head(document, document["runs"]))
    stats = dict(document["stats"])
    stats.update({k: {"value": v} for k, v in document["summary"].items() if k not in stats})
    print(show.runs_report(document["runs"], stats))
    return 0


def _tolerance(spec: str) -> tuple[str, float]:
    name, _, tolerance = spec.partition(":")
    if not name:
        raise SystemExit(f"lucidic: --fail-on-regression takes NAME or NAME:TOLERANCE, not "
                         f"{spec!r}")
    try:
        return name, float(tolerance) if tolerance else 0.0
    except ValueError:
        raise SystemExit(f"lucidic: the tolerance in {spec!r} is not a number") from None


def _compare(args: argparse.Namespace) -> int:
    from .reading import summary as _summary

    checks = [_tolerance(spec) for spec in args.fail_on_regression or ()]
    with _backend() as backend:
        a = _experiment(backend, args.a)
        b = _experiment(backend, args.b)
        comparison = _summary.compare(backend.runs(args.a), backend.runs(args.b))
    unknown = [name for name, _ in checks if name not in comparison["summary"]]
    if unknown:
        # A misspelt gate would pass every time: refuse it.
        known = ", ".join(comparison["summary"]) or "none"
        raise SystemExit(_render.visible(
            f"lucidic: --fail-on-regression names no score of either experiment: "
            f"{', '.join(unknown)} (their scores: {known})"))
    regressions = {name: _summary.regressions(comparison, name, tolerance)
                   for name, tolerance in checks}
    document = {"a": {"id": a["id"], "name": a.get("name")},
                "b": {"id": b["id"], "name": b.get("name")}, **comparison,
                "regressions": regressions}
    failed = {name: rows for name, rows in regressions.items() if rows}
    if args.json:
        _render.print_json(document)
    else:
        print(_render.visible(f"A: {a.get('name') or ''} {a['id']}\n"
                              f"B: {b.get('name') or ''} {b['id']}"))
        print(show.compare_table(comparison))
    for name, rows in failed.items():
        cases = ", ".join(f"{r['case_id']} ({show.value(r['a'])} → {show.value(r['b'])})"
                          for r in rows)
        print(_render.visible(f"lucidic: {name} regressed in {len(rows)} case(s): {cases}"),
              file=sys.stderr)
    return 1 if failed else 0


def _load_evaluators(specs: list[str]) -> list[Any]:
    from .errors import InvalidOperationError
    from .evals._evaluators import load_path

    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # as `python -m` does: the user's modules
    try:
        return [load_path(spec) for spec in specs]
    except InvalidOperationError as exc:
        raise SystemExit(f"lucidic: {exc}") from exc


def _rescore(args: argparse.Namespace) -> int:
    from .errors import LucidicError
    from .evals import evaluate_sessions
    from .evals._evaluators import resolve

    with _backend() as backend:
        experiment = _experiment(backend, args.experiment_id)
    if args.evaluator:
        evaluators = _load_evaluators(args.evaluator)
    else:
        described = list(experiment.get("evaluators") or ())
        described += [{"name": n} for n in experiment.get("rubrics") or ()]
        evaluators = [resolve(d) for d in described]
        if not described or any(e is None for e in evaluators):
            missing = [d.get("name") for d, e in zip(described, evaluators, strict=True)
                       if e is None]
            raise SystemExit("lucidic: give the evaluators with --evaluator module:function"
                             + (f" (the experiment's {', '.join(map(repr, missing))} cannot "
                                "be imported here)" if missing else ""))
    try:
        runs = evaluate_sessions(evaluators, experiment_id=args.experiment_id)
    except LucidicError as exc:
        raise SystemExit(f"lucidic: {exc}") from exc
    with _backend() as backend:
        document = experiment_document(backend, args.experiment_id)
    if args.json:
        _render.print_json(document)
    else:
        print(f"rescored {len(runs)} runs of {args.experiment_id}")
        print(show.runs_report(document["runs"], document["stats"]))
    return 0


def _mass_sims_list(args: argparse.Namespace) -> int:
    with _backend() as backend:
        sims = backend.mass_sims(limit=args.limit, offset=args.offset)
    return _listing(sims, args.json, "no mass simulations yet: make one with "
                    "lai.create_mass_sim()", show.mass_sims_table)


def _mass_sims_show(args: argparse.Namespace) -> int:
    with _backend() as backend:
        sims = backend.mass_sims(args.mass_sim_id)
    if not sims:
        print(f"lucidic: no mass simulation {args.mass_sim_id!r} here "
              "(`lucidic mass-sims list` shows them)", file=sys.stderr)
        return 1
    (sim,) = sims
    if args.json:
        _render.print_json(sim)
        return 0
    print(show.mass_sims_table([sim]))
    print(f"its sessions: lucidic sessions list --mass-sim {sim['id']}")
    return 0


def add_commands(commands: Any) -> None:
    experiments = add_parser(commands, "experiments",
                             help="experiments: their runs and scores, compared, rescored")
    experiments.set_defaults(handler=help_of(experiments))
    sub = experiments.add_subparsers(dest="experiments_command", metavar="COMMAND")
    listing = add_parser(sub, "list", help="experiments, newest first")
    add_paging(listing)
    listing.add_argument("--json", action="store_true", help="print JSON")
    listing.set_defaults(handler=_list)
    showing = add_parser(sub, "show", help="an experiment's runs, scores and summary")
    showing.add_argument("experiment_id", help="the experiment's id")
    showing.add_argument("--json", action="store_true", help="print JSON")
    showing.set_defaults(handler=_show)
    compare = add_parser(sub, "compare", help="two experiments, case by case: scores, cost "
                                              "and duration in A and B, and the deltas")
    compare.add_argument("a", help="the baseline experiment's id")
    compare.add_argument("b", help="the experiment compared with it")
    compare.add_argument("--fail-on-regression", action="append", metavar="NAME[:TOLERANCE]",
                         help="exit 1, naming the cases, where B's score NAME is below A's "
                              "by more than TOLERANCE (default 0), or missing; repeatable")
    compare.add_argument("--json", action="store_true", help="print JSON")
    compare.set_defaults(handler=_compare)
    rescore = add_parser(sub, "rescore", help="score an experiment's runs again, from what "
                                              "they recorded (nothing is run again)")
    rescore.add_argument("experiment_id", help="the experiment's id")
    rescore.add_argument("--evaluator", action="append", metavar="MODULE:FUNCTION",
                         help="an evaluator to score with (importable from here); "
                              "repeatable; default: the experiment's own")
    rescore.add_argument("--json", action="store_true", help="print JSON")
    rescore.set_defaults(handler=_rescore)

    sims = add_parser(commands, "mass-sims", help="mass simulations and their progress")
    sims.set_defaults(handler=help_of(sims))
    sims_sub = sims.add_subparsers(dest="mass_sims_command", metavar="COMMAND")
    sims_list = add_parser(sims_sub, "list", help="mass simulations, newest first")
    add_paging(sims_list)
    sims_list.add_argument("--json", action="store_true", help="print JSON")
    sims_list.set_defaults(handler=_mass_sims_list)
    sims_show = add_parser(sims_sub, "show", help="one mass simulation: total, sessions, ended")
    sims_show.add_argument("mass_sim_id", help="the mass simulation's id")
    sims_show.add_argument("--json", action="store_true", help="print JSON")
    sims_show.set_defaults(handler=_mass_sims_show)
