"""Case-insensitive substring search over recorded text, in any script.

Search has no index to lean on (a substring can start anywhere, and the text
is in every language), so the predicate is built to be as cheap as the
database allows for the query at hand:

- a query with no cased letters (``你好``, ``404``, ``/tmp``) is an exact
  substring test, ``instr`` / ``strpos``, which both databases run in C;
- on SQLite, an ASCII query uses ``LIKE``, which folds ASCII case in C;
  any other query goes through ``lucidic_contains``, a function the store
  registers that compares Unicode case folds (SQLite's own LIKE folds ASCII
  only);
- on PostgreSQL, ``strpos(lower(text), lower(query))``, with ``lower`` taken
  from a collation that folds every script (checked once per database: a
  database created with the ``C`` ctype folds only ASCII, so the ICU root
  collation is used there when the server has it).

JSON columns (LLM messages, arguments, tags) are stored as JSON text, where a
quote or a newline is escaped; a query holding one is looked for in both its
plain and its escaped form.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from typing import Any

from ..columns import JSON_COLUMNS
from ..store import Store

#: The text a search looks through, by table. Session ids match by prefix.
SESSION_TEXT = ("name", "task", "tags", "agent_id", "is_successful_reason",
                "session_eval_reason")
STEP_TEXT = ("state", "action", "goal", "eval_description", "function_name", "error")
EVENT_TEXT = ("description", "result", "model", "request_model", "provider", "function_name",
              "arguments", "input", "output", "error")

MAX_QUERY_CHARS = 500

_pg_lower: dict[str, str] = {}
_pg_lower_lock = threading.Lock()


def _like_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _needles(query: str, column: str) -> list[str]:
    """The forms ``query`` takes inside ``column``'s stored text."""
    forms = [query]
    if column in JSON_COLUMNS:
        escaped = json.dumps(query, ensure_ascii=False)[1:-1]
        if escaped != query:
            forms.append(escaped)
    return forms


def _has_case(text: str) -> bool:
    return text.casefold() != text or text.upper() != text


def _postgres_lower(store: Store) -> str:
    """``lower(...)`` in a collation that folds every script (see module doc)."""
    with _pg_lower_lock:
        found = _pg_lower.get(store.url)
        if found is not None:
            return found
    template = "lower({})"
    try:
        row = store.query("SELECT lower('ÄΣЖ') AS folded")[0]
        if row["folded"] != "äσж":
            icu = store.query("SELECT lower('ÄΣЖ' COLLATE \"und-x-icu\") AS folded")[0]
            if icu["folded"] == "äσж":
                template = 'lower({} COLLATE "und-x-icu")'
    except Exception:  # noqa: BLE001 - no ICU: ASCII folding is what this server has
        pass
    with _pg_lower_lock:
        _pg_lower[store.url] = template
    return template


class TextMatch:
    """SQL that tests columns for one search query on one store."""

    def __init__(self, store: Store, query: str) -> None:
        query = " ".join(query.split())[:MAX_QUERY_CHARS]
        if not query:
            raise ValueError("the search text is empty")
        self.store = store
        self.query = query
        self._ph = store.placeholder
        self._cased = _has_case(query)
        self._dialect = store.dialect

    def columns(self, alias: str, columns: Sequence[str]) -> tuple[str, list[Any]]:
        """A predicate true when any of ``alias.column`` contains the query."""
        ph = self._ph
        parts: list[str] = []
        params: list[Any] = []
        if self._dialect == "sqlite" and self._cased and not self.query.isascii():
            needles = {n.casefold() for c in columns for n in _needles(self.query, c)}
            cols = ", ".join(f"{alias}.{c}" for c in columns)
            for needle in sorted(needles):
                parts.append(f"lucidic_contains({ph}, {cols}) = 1")
                params.append(needle)
            return "(" + " OR ".join(parts) + ")", params
        lower = _postgres_lower(self.store) if self._dialect == "postgresql" else ""
        for column in columns:
            ref = f"{alias}.{column}"
            for needle in _needles(self.query, column):
                if not self._cased:
                    fn = "instr" if self._dialect == "sqlite" else "strpos"
                    parts.append(f"{fn}({ref}, {ph}) > 0")
                    params.append(needle)
                elif self._dialect == "sqlite":
                    parts.append(f"{ref} LIKE {ph} ESCAPE '\\'")
                    params.append(f"%{_like_escape(needle)}%")
                else:
                    parts.append(f"strpos({lower.format(ref)}, {ph}) > 0")
                    params.append(needle.lower())
        return "(" + " OR ".join(parts) + ")", params

    def id_prefix(self, alias: str = "s") -> tuple[str, list[Any]]:
        """True for a session whose id starts with the query."""
        return f"{alias}.id LIKE {self._ph} ESCAPE '\\'", [_like_escape(self.query) + "%"]

    def rows(self, alias: str = "s") -> tuple[str, list[Any]]:
        """True for a session whose own text, or any of its steps' or events'
        text, contains the query (read from every row)."""
        own, params = self.columns(alias, SESSION_TEXT)
        steps, step_params = self.columns("st", STEP_TEXT)
        events, event_params = self.columns("ev", EVENT_TEXT)
        # PostgreSQL would read every step and event once, into a hash, for
        # what is asked of a few sessions (those derived data does not
        # answer for): OFFSET 0 keeps each a lookup by its session's id.
        per_session = " OFFSET 0" if self._dialect == "postgresql" else ""
        sql = (f"({own} "
               f"OR EXISTS (SELECT 1 FROM steps st WHERE st.session_id = {alias}.id AND {steps}"
               f"{per_session}) "
               f"OR EXISTS (SELECT 1 FROM events ev WHERE ev.session_id = {alias}.id "
               f"AND {events}{per_session}))")
        return sql, [*params, *step_params, *event_params]

    def folded(self, column: str) -> tuple[str, list[Any], bool]:
        """A test of ``column``, text folded by fold_sql, for the query; and
        whether it is exact (else it may hold where ``rows`` does not, never
        the other way round, and ``rows`` must confirm it).

        Exact for a query with cased letters that is looked for in one form
        only: fold_sql folds each column as ``columns`` folds it for such a
        query (SQLite: Unicode case folds, but for an ASCII query, which
        LIKE folds in ASCII only; PostgreSQL: its ``lower``). Otherwise
        (a query without cased letters is looked for unfolded; an ASCII one
        on SQLite; a JSON-escaped form, which only JSON columns may hold) a
        match in a column is also one in its folded text (folding changes
        only cased letters, one at a time), checked for that."""
        ph = self._ph
        forms = {form for c in (*SESSION_TEXT, *STEP_TEXT, *EVENT_TEXT)
                 for form in _needles(self.query, c)}
        exact = self._cased and len(forms) == 1 and (
            self._dialect == "postgresql" or not self.query.isascii())
        if self._dialect == "sqlite":
            needles = sorted({form.casefold() for form in forms})
            return (" OR ".join([f"instr({column}, {ph}) > 0"] * len(needles)), needles,
                    exact)
        if not self._cased:
            # Looked for unfolded; found in the folded text too when lower
            # leaves every letter of it as it is (not so for, say, Cherokee
            # capitals, which Python's casefold leaves alone): else every
            # session is a candidate.
            lower = _postgres_lower(self.store).format(f"{ph}::text")
            needles = sorted(forms)
            tests = [f"({lower} <> {ph} OR strpos({column}, {ph}) > 0)" for _ in needles]
            return " OR ".join(tests), [v for n in needles for v in (n, n, n)], False
        needles = sorted({form.lower() for form in forms})
        return " OR ".join([f"strpos({column}, {ph}) > 0"] * len(needles)), needles, exact


def fold_sql(store: Store, alias: str, columns: Sequence[str]) -> str:
    """SQL of ``alias``'s ``columns`` case-folded as a search for a query
    with cased letters folds them, one a line (see TextMatch.folded)."""
    if store.dialect == "sqlite":
        return f"lucidic_fold({', '.join(f'CAST({alias}.{c} AS TEXT)' for c in columns)})"
    lower = _postgres_lower(store)
    return f"concat_ws(E'\\n', {', '.join(lower.format(f'{alias}.{c}') for c in columns)})"
