"""Experiments, runs, scores and evaluation claims over HTTP: what
``lucidic.evals`` and ``lucidic experiments`` ask of a server, answered from
``lucidic.evalstore`` within the API key's project."""

from __future__ import annotations

from typing import Annotated, Any, Literal, Optional

from fastapi import APIRouter, Query
from pydantic import BaseModel, ConfigDict, Field

from .. import evalstore
from ..reading import Reader
from .app import Auth, Db, read_or_404
from .models import FiniteFloat, Id, Name, Text
from .problems import JSONOut

router = APIRouter(tags=["evaluations"])

_MAX_IDS = 1000


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class Experiment(_Open):
    id: str
    project: str
    name: Optional[str] = None  # noqa: UP045
    created_at: Optional[float] = None  # noqa: UP045


class ExperimentSummary(Experiment):
    run_count: int
    ended_count: int
    failed_count: int


class ExperimentPage(BaseModel):
    experiments: list[ExperimentSummary]
    limit: int
    offset: int


class RunRow(_Open):
    session_id: str
    case_id: Optional[str] = None  # noqa: UP045
    repeat: Optional[int] = None  # noqa: UP045
    status: str
    scores: dict[str, Any]
    cost: float
    duration: Optional[float] = None  # noqa: UP045


class Runs(BaseModel):
    runs: list[RunRow]


class Events(BaseModel):
    events: list[dict[str, Any]]


class RunsQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")
    session_ids: list[Id] = Field(max_length=_MAX_IDS)


class Claim(BaseModel):
    model_config = ConfigDict(extra="forbid")
    session_id: Id
    names: list[Name] = Field(min_length=1, max_length=200)
    owner: Name
    lease: Annotated[float, Field(gt=0, le=7 * 24 * 3600)]


class Claimed(BaseModel):
    claimed: list[str]


class ScoreIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: Name
    kind: Literal["number", "bool", "label"]
    value: Optional[FiniteFloat] = None  # noqa: UP045
    label: Optional[Text] = None  # noqa: UP045
    comment: Optional[Text] = None  # noqa: UP045
    passed: Optional[bool] = None  # noqa: UP045
    source: Optional[Name] = None  # noqa: UP045
    evaluator: Optional[Name] = None  # noqa: UP045
    evaluator_session_id: Optional[Id] = None  # noqa: UP045


class CriterionIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    criterion: Name
    weight: Annotated[float, Field(ge=0, allow_inf_nan=False)]
    value: FiniteFloat
    comment: Optional[Text] = None  # noqa: UP045


class Completion(BaseModel):
    model_config = ConfigDict(extra="forbid")
    session_id: Id
    name: Name
    owner: Name
    scores: list[ScoreIn] = Field(default_factory=list, max_length=200)
    criteria: list[CriterionIn] = Field(default_factory=list, max_length=200)
    error: Optional[Text] = None  # noqa: UP045
    evaluator_session_id: Optional[Id] = None  # noqa: UP045
    force: bool = False


class Stored(BaseModel):
    stored: bool


class Evaluations(BaseModel):
    evaluations: list[dict[str, Any]]


class MassSim(_Open):
    id: str
    total: Optional[int] = None  # noqa: UP045
    sessions: int
    ended: int


def _session_of_project(db: Any, session_id: str, project: str) -> None:
    read_or_404(db.get_session, "session", session_id, project)


@router.get("/api/v1/experiments", response_model=ExperimentPage,
            summary="Experiments of this project, newest first, with their runs' progress")
def list_experiments(who: Auth, db: Db, limit: Annotated[int, Query(ge=1, le=500)] = 50,
                     offset: Annotated[int, Query(ge=0, le=1_000_000_000)] = 0) -> JSONOut:
    return JSONOut({"experiments": Reader(db).experiments(who.project, limit=limit,
                                                      offset=offset),
                    "limit": limit, "offset": offset})


@router.get("/api/v1/experiments/{experiment_id:path}/runs", response_model=Runs,
            summary="An experiment's runs, by case and repeat, with their scores")
def experiment_runs(experiment_id: str, who: Auth, db: Db) -> JSONOut:
    _experiment(db, experiment_id, who.project)
    return JSONOut({"runs": Reader(db).runs(experiment_id, who.project)})


@router.get("/api/v1/experiments/{experiment_id:path}/llm-events", response_model=Events,
            summary="The LLM calls an experiment's runs recorded (what replay answers from)")
def experiment_llm_events(experiment_id: str, who: Auth, db: Db) -> JSONOut:
    _experiment(db, experiment_id, who.project)
    return JSONOut({"events": Reader(db).llm_events(experiment_id, who.project)})


@router.get("/api/v1/experiments/{experiment_id:path}", response_model=Experiment,
            summary="One experiment: its name, evaluators, rubrics, settings and summary")
def get_experiment(experiment_id: str, who: Auth, db: Db) -> JSONOut:
    return JSONOut(_experiment(db, experiment_id, who.project))


def _experiment(db: Any, experiment_id: str, project: str) -> dict[str, Any]:
    return read_or_404(Reader(db).experiment, "experiment", experiment_id, project)


@router.post("/api/v1/runs", response_model=Runs,
             summary="The sessions named, as experiment runs with their scores")
def runs(body: RunsQuery, who: Auth, db: Db) -> JSONOut:
    return JSONOut({"runs": Reader(db).run_sessions(body.session_ids, who.project)})


@router.post("/api/v1/evaluations/claim", response_model=Claimed,
             summary="Claim evaluations of a finished session: those nobody holds, or whose "
                     "holder's lease ran out (one claimant wins each)")
def claim(body: Claim, who: Auth, db: Db) -> JSONOut:
    _session_of_project(db, body.session_id, who.project)
    return JSONOut({"claimed": evalstore.claim(db, who.project, body.session_id, body.names,
                                               body.owner, body.lease)})


@router.post("/api/v1/evaluations/complete", response_model=Stored,
             summary="Store an evaluation's scores (or its error) if the owner still holds it")
def complete(body: Completion, who: Auth, db: Db) -> JSONOut:
    _session_of_project(db, body.session_id, who.project)
    stored = evalstore.complete(
        db, who.project, body.session_id, body.name, body.owner,
        scores=[s.model_dump() for s in body.scores],
        criteria=[c.model_dump() for c in body.criteria], error=body.error,
        evaluator_session_id=body.evaluator_session_id, force=body.force)
    return JSONOut({"stored": stored})


@router.get("/api/v1/evaluations", response_model=Evaluations,
            summary="Who scored a session with what, and how it went")
def evaluations(who: Auth, db: Db,
                session_id: Annotated[str, Query(min_length=1, max_length=256)]) -> JSONOut:
    _session_of_project(db, session_id, who.project)
    rows = Reader(db).evaluations([session_id], who.project).get(session_id, [])
    return JSONOut({"evaluations": rows})


@router.get("/api/v1/mass-sims/{mass_sim_id:path}", response_model=MassSim,
            summary="One mass simulation: the sessions intended (total), made and ended")
def get_mass_sim(mass_sim_id: str, who: Auth, db: Db) -> JSONOut:
    return JSONOut(read_or_404(Reader(db).mass_sim, "mass simulation", mass_sim_id,
                               who.project))
