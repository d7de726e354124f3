"""How the dashboard's sums are kept across sessions by hour (``hourly_activity``,
schema migration 11), so that a page sums a row per hour, model and kind
rather than every session's (lucidic.reading.dashboard); and how the LLM
calls that reported no token counts or no cost are told, so that a sum
that includes none of theirs is not shown as a measured 0.

hourly_activity holds, for each day, hour, model, kind and project, the
sums of session_activity's rows (lucidic.reading.derived) as they stood
when its hour was last summed. The refresher notes in ``stale_hours`` the
hours a batch's sessions had rows in and have now, in the batch's
transaction, and sums those hours again from session_activity once it has
no session left to rebuild (not at every batch: the sessions of a store
rebuilt at once lie in every hour, and each batch would sum them all
again; nor by adding and taking away: a cost taken away from a sum is not
exact). Pages read a stale hour from session_activity. The SQL is the same
on SQLite and PostgreSQL, which lets a migration fill the table; but on
PostgreSQL a batch takes the hours from its DELETE and INSERT themselves
(marking_stale) rather than look its rows up again before and after.
"""

from __future__ import annotations

#: The model a dashboard groups an event ``e`` under.
MODEL = "COALESCE(e.model, e.request_model, '(no model)')"
#: An LLM call answered (no error) whose API reported no token counts (a
#: stream cut before its usage came), over events ``e`` (SQL): the sums
#: leave it out, so a total of 0 is not a measured 0.
CALL_WITHOUT_TOKENS = ("(e.type = 'llm' AND e.error IS NULL AND e.input_tokens IS NULL "
                       "AND e.output_tokens IS NULL)")
#: One with no cost (no tokens, or a model the price table lacks).
CALL_WITHOUT_COST = "(e.type = 'llm' AND e.error IS NULL AND e.cost IS NULL)"
#: session_activity's grouping columns that hourly_activity keeps.
KEYS = ("day", "hour", "model", "is_llm")
#: session_activity's sums, each summed again in hourly_activity.
SUMS = ("events", "errors", "failed", "cost", "input_hi", "input_lo", "output_hi",
        "output_lo", "without_tokens", "without_cost")


def hourly_sql(where: str) -> str:
    """The statement inserting into hourly_activity the sums of the
    session_activity rows ``where`` (SQL over its columns: whole hours)."""
    sums = ", ".join(f"SUM({column})" for column in SUMS)
    # a session without a session row has no project: orphan 1
    return (f"INSERT INTO hourly_activity ({', '.join(KEYS)}, orphan, project, "
            f"{', '.join(SUMS)}) SELECT {', '.join(KEYS)}, "
            "CASE WHEN project IS NULL THEN 1 ELSE 0 END, COALESCE(project, ''), "
            f"{sums} FROM session_activity WHERE {where} "
            f"GROUP BY {', '.join(KEYS)}, CASE WHEN project IS NULL THEN 1 ELSE 0 END, "
            "COALESCE(project, '')")


def stale_sql(where: str) -> str:
    """The statement noting in stale_hours the hours of the session_activity
    rows ``where`` (SQL over its columns)."""
    return ("INSERT INTO stale_hours (hour) SELECT DISTINCT hour FROM session_activity "
            f"WHERE {where} ON CONFLICT (hour) DO NOTHING")


def marking_stale(modifying: str, batch: str = "") -> str:
    """PostgreSQL: the statement ``modifying`` (a DELETE from or an INSERT
    into session_activity, without RETURNING), noting in stale_hours the
    hours of the rows it deletes or inserts, in one statement. ``batch``:
    the WITH list's leading entries (each ending in ", "), if any."""
    return (f"WITH {batch}modified AS ({modifying} RETURNING hour) "
            "INSERT INTO stale_hours (hour) SELECT DISTINCT hour FROM modified "
            "ON CONFLICT (hour) DO NOTHING")


def without_sql(column: str, condition: str) -> str:
    """The statement filling session_activity's ``column`` (rows kept before
    migration 11) with how many of each LLM group's calls meet
    ``condition``: its session's calls of its model from its first to its
    last start time, which are its calls (a group holds one hour's, and the
    database numbers hours in order of time). A session noted as changed
    may have other events now: pages read those from its rows, and the
    refresher rebuilds its groups."""
    return (f"UPDATE session_activity SET {column} = (SELECT COUNT(*) FROM events e "
            "WHERE e.session_id = session_activity.session_id "
            f"AND {MODEL} = session_activity.model "
            "AND e.started_at >= session_activity.first_at "
            f"AND e.started_at <= session_activity.last_at AND {condition}) "
            "WHERE is_llm = 1")
