"""Mass simulations: many runs of one agent on one task, each run an ordinary
session that names its mass simulation (``sessions.mass_sim_id``).

lucidicai creates one with ``lai.create_mass_sim()`` (``/api/initmasssim``),
and so does our SDK (``lai.create_mass_sim``, a ``mass_sim`` record); each
run passes its id to ``lai.init(mass_sim_id=...)``, and a session naming one
that does not exist yet creates it. The sessions of a mass simulation are
listed with ``/api/v1/sessions?mass_sim_id=ID`` and ``lucidic sessions list
--mass-sim ID``; ``/api/v1/mass-sims`` lists the mass simulations with how
far their runs got (``total`` intended, ``sessions`` made, ``ended``). The
reads are lucidic.reading's.
"""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Optional

from fastapi import APIRouter, Query
from pydantic import BaseModel

from ..reading import Reader
from ..store import Store
from .app import Auth, Db
from .problems import JSONOut

router = APIRouter(tags=["read"])


def create_mass_sim(store: Store, project: str, *, name: str | None, task: str | None,
                    tags: list[str] | None, total_num_sims: int | None,
                    agent_id: str | None) -> str:
    """Record a new mass simulation; returns its (unguessable) id."""
    mass_sim_id = str(uuid.uuid4())
    now = time.time()
    store.write_for_project([("mass_sim", mass_sim_id, now, {
        "name": name, "task": task, "tags": tags, "total_num_sims": total_num_sims,
        "agent_id": agent_id, "created_at": now})], project)
    return mass_sim_id


class MassSim(BaseModel):
    id: str
    name: Optional[str] = None  # noqa: UP045
    task: Optional[str] = None  # noqa: UP045
    tags: Optional[list[str]] = None  # noqa: UP045
    total: Optional[int] = None  # noqa: UP045
    agent_id: Optional[str] = None  # noqa: UP045
    created_at: float
    sessions: int
    ended: int
    successful: int
    failed: int


class MassSimPage(BaseModel):
    mass_sims: list[MassSim]
    limit: int
    offset: int


@router.get("/api/v1/mass-sims", response_model=MassSimPage,
            summary="Mass simulations of this project, newest first, with their sessions' "
                    "progress (list the sessions with /api/v1/sessions?mass_sim_id=ID)")
def mass_sims(who: Auth, db: Db, limit: Annotated[int, Query(ge=1, le=500)] = 50,
              offset: Annotated[int, Query(ge=0, le=1_000_000_000)] = 0) -> JSONOut:
    return JSONOut({"mass_sims": Reader(db).mass_sims(who.project, limit=limit, offset=offset),
                    "limit": limit, "offset": offset})
