"""The experiments pages: the list, one experiment's runs by case and repeat
with its summary, and two experiments compared case by case (scores, cost
and latency, with the deltas). Read through lucidic.reading, like every page."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from ..limits import MAX_ID_LENGTH
from ..reading import Reader
from ..reading import summary as _summary
from .pages import Db, Who, _page

router = APIRouter(include_in_schema=False)

LIST_SIZE = 100


def _valid(ident: str) -> bool:
    return 0 < len(ident) <= MAX_ID_LENGTH and ident.isprintable()


@router.get("/experiments", response_class=HTMLResponse)
def experiments_page(request: Request, db: Db, who: Who) -> HTMLResponse:
    experiments = Reader(db).experiments(who.project, limit=LIST_SIZE)
    return _page(request, "experiments.html", viewer=who, experiments=experiments)


@router.get("/experiments/compare", response_class=HTMLResponse)
def compare_page(request: Request, db: Db, who: Who) -> HTMLResponse:
    reader = Reader(db)
    a_id = request.query_params.get("a") or ""
    b_id = request.query_params.get("b") or ""
    a = reader.experiment(a_id, who.project) if _valid(a_id) else None
    b = reader.experiment(b_id, who.project) if _valid(b_id) else None
    if a is None or b is None:
        missing = a_id if a is None else b_id
        return _page(request, "missing.html", status=404, viewer=who, what="experiment",
                     ident=missing or "")
    comparison = _summary.compare(reader.runs(a["id"], who.project),
                                  reader.runs(b["id"], who.project))
    return _page(request, "compare.html", viewer=who, a=a, b=b, comparison=comparison,
                 score_names=list(comparison["summary"]))


@router.get("/experiments/{experiment_id:path}", response_class=HTMLResponse)
def experiment_page(request: Request, experiment_id: str, db: Db, who: Who) -> HTMLResponse:
    reader = Reader(db)
    experiment = reader.experiment(experiment_id, who.project) if _valid(experiment_id) \
        else None
    if experiment is None:
        return _page(request, "missing.html", status=404, viewer=who, what="experiment",
                     ident=experiment_id)
    runs = reader.runs(experiment["id"], who.project)
    stats = _summary.stats(runs)
    summary_scores = experiment.get("summary") if isinstance(experiment.get("summary"),
                                                             dict) else {}
    cases = _summary.by_case(runs)
    others = [x for x in reader.experiments(who.project, limit=LIST_SIZE)
              if x["id"] != experiment["id"]]
    return _page(request, "experiment.html", viewer=who, experiment=experiment, runs=runs,
                 cases=cases, stats=stats, summary_scores=summary_scores,
                 score_names=_summary.score_names(runs), others=others,
                 total_cost=sum(r["cost"] or 0 for r in runs))
