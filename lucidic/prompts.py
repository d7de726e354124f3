"""The prompt store: versioned prompts per project, found by name and label.

Every ``set`` keeps a new version (1, 2, ...) of the prompt; labels
(``production``, ``staging``, any word) point at one version each, and moving a
label never changes a version. ``latest`` always means the newest version.
The lucidicai client's ``lai.get_prompt(name, label="production")`` reads it
through the server (``/api/getprompt``); ``lucidic prompts set/list/show``
writes and reads it in the database directly, like ``lucidic keys``.
"""

from __future__ import annotations

import time
from typing import Any

from .errors import InvalidOperationError
from .store import Store

__all__ = ["LATEST", "get_prompt", "list_prompts", "set_prompt"]

#: The label every newest version carries without being given it.
LATEST = "latest"
MAX_NAME = 256
MAX_LABEL = 64
MAX_CONTENT_CHARS = 4 * 1024 * 1024


def _check_name(kind: str, value: str, limit: int) -> None:
    if not value or len(value) > limit or not value.isprintable() or value != value.strip():
        raise InvalidOperationError(f"a prompt {kind} must be 1 to {limit} printable characters "
                                    f"without leading or trailing spaces, not {value!r}")


def set_prompt(store: Store, project: str, name: str, content: str,
               labels: list[str] | tuple[str, ...] = ()) -> dict[str, Any]:
    """Keep ``content`` as the next version of prompt ``name`` and point
    ``labels`` at it. Returns the new version's description."""
    _check_name("name", name, MAX_NAME)
    for label in labels:
        _check_name("label", label, MAX_LABEL)
        if label == LATEST:
            raise InvalidOperationError("'latest' always names the newest version; it cannot "
                                        "be set by hand")
    if len(content) > MAX_CONTENT_CHARS:
        raise InvalidOperationError(f"a prompt holds at most {MAX_CONTENT_CHARS} characters, "
                                    f"not {len(content)}")
    ph = store.placeholder
    now = time.time()

    def run(cur: Any) -> int:
        cur.execute(f"INSERT INTO projects (name, created_at) VALUES ({ph}, {ph}) "
                    "ON CONFLICT (name) DO NOTHING", (project, now))
        while True:
            # Two writers can read the same newest version; the second's insert
            # then does nothing (PostgreSQL waits for the first to commit) and
            # it reads again, so each gets a version of its own.
            cur.execute(f"SELECT COALESCE(MAX(version), 0) FROM prompts WHERE project = {ph} "
                        f"AND name = {ph}", (project, name))
            version = int(cur.fetchone()[0]) + 1
            cur.execute("INSERT INTO prompts (project, name, version, content, created_at) "
                        f"VALUES ({ph}, {ph}, {ph}, {ph}, {ph}) "
                        "ON CONFLICT (project, name, version) DO NOTHING",
                        (project, name, version, content, now))
            if cur.rowcount == 1:
                break
        for label in dict.fromkeys(labels):
            cur.execute("INSERT INTO prompt_labels (project, name, label, version, updated_at) "
                        f"VALUES ({ph}, {ph}, {ph}, {ph}, {ph}) "
                        "ON CONFLICT (project, name, label) DO UPDATE SET "
                        "version = excluded.version, updated_at = excluded.updated_at",
                        (project, name, label, version, now))
        return version

    version = store.transaction(run)
    return {"project": project, "name": name, "version": version,
            "labels": [*dict.fromkeys(labels), LATEST], "created_at": now}


def get_prompt(store: Store, project: str, name: str, label: str | None = None,
               version: int | None = None) -> dict[str, Any] | None:
    """The version of prompt ``name`` that ``label`` points at (or the given
    ``version``; the newest with neither), with its content and labels; None
    if there is none."""
    ph = store.placeholder

    def run(cur: Any) -> dict[str, Any] | None:
        if version is not None:
            wanted: int | None = version
        elif label is None or label == LATEST:
            cur.execute(f"SELECT MAX(version) FROM prompts WHERE project = {ph} AND name = {ph}",
                        (project, name))
            wanted = cur.fetchone()[0]
        else:
            cur.execute(f"SELECT version FROM prompt_labels WHERE project = {ph} AND name = {ph} "
                        f"AND label = {ph}", (project, name, label))
            found = cur.fetchone()
            wanted = found[0] if found else None
        if wanted is None:
            return None
        cur.execute(f"SELECT content, created_at FROM prompts WHERE project = {ph} "
                    f"AND name = {ph} AND version = {ph}", (project, name, wanted))
        row = cur.fetchone()
        if row is None:
            return None
        return {"project": project, "name": name, "version": int(wanted), "content": row[0],
                "created_at": row[1], "labels": _labels(cur, ph, project, name, int(wanted))}

    result: dict[str, Any] | None = store.transaction(run, write=False)
    return result


def _labels(cur: Any, ph: str, project: str, name: str, version: int) -> list[str]:
    cur.execute(f"SELECT label FROM prompt_labels WHERE project = {ph} AND name = {ph} "
                f"AND version = {ph} ORDER BY label", (project, name, version))
    labels = [row[0] for row in cur.fetchall()]
    cur.execute(f"SELECT MAX(version) FROM prompts WHERE project = {ph} AND name = {ph}",
                (project, name))
    if cur.fetchone()[0] == version:
        labels.append(LATEST)
    return labels


def list_prompts(store: Store, project: str | None = None) -> list[dict[str, Any]]:
    """Every prompt (of ``project``, or of all projects): its newest version
    and where each label points."""
    ph = store.placeholder

    def run(cur: Any) -> list[dict[str, Any]]:
        where, params = ("WHERE project = " + ph, [project]) if project is not None else ("", [])
        cur.execute("SELECT project, name, MAX(version), MAX(created_at) FROM prompts "
                    f"{where} GROUP BY project, name ORDER BY project, name", params)
        prompts = [{"project": p, "name": n, "latest_version": int(v), "updated_at": t,
                    "labels": {}} for p, n, v, t in cur.fetchall()]
        cur.execute(f"SELECT project, name, label, version FROM prompt_labels {where} "
                    "ORDER BY label", params)
        by_key = {(p["project"], p["name"]): p for p in prompts}
        for p, n, label, version in cur.fetchall():
            if (p, n) in by_key:
                by_key[(p, n)]["labels"][label] = int(version)
        return prompts

    result: list[dict[str, Any]] = store.transaction(run, write=False)
    return result
