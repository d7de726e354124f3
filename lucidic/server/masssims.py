"""Mass simulations: many runs of one agent on one task, each run an ordinary
session that names its mass simulation (``sessions.mass_sim_id``).

lucidicai creates one with ``lai.create_mass_sim()`` (``/api/initmasssim``)
and passes its id to ``lai.init(mass_sim_id=...)``. The sessions of a mass
simulation are listed with ``/api/v1/sessions?mass_sim_id=ID`` and
``lucidic sessions list --mass-sim ID``; ``/api/v1/mass-sims`` lists the mass
simulations with how far their runs got. (Experiments, scores and rubrics
build on the same columns.)
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Annotated, Any, Optional

from fastapi import APIRouter, Query
from pydantic import BaseModel

from ..store import Store
from .app import Auth, Db
from .problems import JSONOut

router = APIRouter(tags=["read"])


def create_mass_sim(store: Store, project: str, *, name: str | None, task: str | None,
                    tags: list[str] | None, total_num_sims: int | None,
                    agent_id: str | None) -> str:
    """Record a new mass simulation; returns its (unguessable) id."""
    mass_sim_id = str(uuid.uuid4())
    ph = store.placeholder
    store.transaction(lambda cur: cur.execute(
        "INSERT INTO mass_sims (id, project, name, task, tags, total_num_sims, agent_id, "
        f"created_at) VALUES ({', '.join([ph] * 8)})",
        (mass_sim_id, project, name, task, None if tags is None else json.dumps(tags),
         total_num_sims, agent_id, time.time())))
    return mass_sim_id


def mass_sim_exists(store: Store, mass_sim_id: str, project: str) -> bool:
    ph = store.placeholder

    def run(cur: Any) -> bool:
        cur.execute(f"SELECT 1 FROM mass_sims WHERE id = {ph} AND project = {ph}",
                    (mass_sim_id, project))
        return cur.fetchone() is not None

    return bool(store.transaction(run, write=False))


_COUNTS = ("session_count", "finished_count", "successful_count", "failed_count")


def list_mass_sims(store: Store, project: str, *, limit: int = 50,
                   offset: int = 0) -> list[dict[str, Any]]:
    """The project's mass simulations, newest first, with how many of their
    sessions exist, finished, succeeded and failed."""
    ph = store.placeholder

    def run(cur: Any) -> list[dict[str, Any]]:
        cur.execute(
            "SELECT m.id, m.name, m.task, m.tags, m.total_num_sims, m.agent_id, m.created_at, "
            "COUNT(s.id), SUM(CASE WHEN s.is_finished = 1 THEN 1 ELSE 0 END), "
            "SUM(CASE WHEN s.is_successful = 1 THEN 1 ELSE 0 END), "
            "SUM(CASE WHEN s.is_successful = 0 THEN 1 ELSE 0 END) "
            "FROM mass_sims m LEFT JOIN sessions s "
            "ON s.mass_sim_id = m.id AND s.project = m.project "
            f"WHERE m.project = {ph} GROUP BY m.id, m.name, m.task, m.tags, m.total_num_sims, "
            f"m.agent_id, m.created_at ORDER BY m.created_at DESC, m.id LIMIT {ph} OFFSET {ph}",
            (project, limit, offset))
        out = []
        for row in cur.fetchall():
            item = dict(zip(("id", "name", "task", "tags", "total_num_sims", "agent_id",
                             "created_at"), row[:7], strict=True))
            item["tags"] = json.loads(item["tags"]) if item["tags"] else None
            item.update({k: int(v or 0) for k, v in zip(_COUNTS, row[7:], strict=True)})
            out.append(item)
        return out

    result: list[dict[str, Any]] = store.transaction(run, write=False)
    return result


class MassSim(BaseModel):
    id: str
    name: Optional[str] = None  # noqa: UP045
    task: Optional[str] = None  # noqa: UP045
    tags: Optional[list[str]] = None  # noqa: UP045
    total_num_sims: Optional[int] = None  # noqa: UP045
    agent_id: Optional[str] = None  # noqa: UP045
    created_at: float
    session_count: int
    finished_count: int
    successful_count: int
    failed_count: int


class MassSimPage(BaseModel):
    mass_sims: list[MassSim]
    limit: int
    offset: int


@router.get("/api/v1/mass-sims", response_model=MassSimPage,
            summary="Mass simulations of this project, newest first, with their sessions' "
                    "progress (list the sessions with /api/v1/sessions?mass_sim_id=ID)")
def mass_sims(who: Auth, db: Db, limit: Annotated[int, Query(ge=1, le=500)] = 50,
              offset: Annotated[int, Query(ge=0, le=1_000_000_000)] = 0) -> JSONOut:
    return JSONOut({"mass_sims": list_mass_sims(db, who.project, limit=limit, offset=offset),
                    "limit": limit, "offset": offset})
