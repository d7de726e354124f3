"""Who is looking: on ``lucidic server`` a visitor signs in with a project's
API key, which is traded for a random token in an HttpOnly, SameSite=Strict
cookie (the key itself is never kept in the page, the URL or the cookie).
The server stores only the token's hash, with the key it stands for, so
signing out, or revoking the key, ends the sign-in on every replica.
``lucidic ui`` has no accounts: it shows the whole embedded store.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from typing import Any

from ..store import Store, hash_api_key

COOKIE = "lucidic_signin"
#: How long a sign-in lasts.
SIGNIN_SECONDS = 7 * 86400


@dataclass(frozen=True)
class Viewer:
    """The reader of a page: a project (None: every project) and how they came."""

    project: str | None
    signed_in: bool    # True on the server (a Sign out button), False for `lucidic ui`


def sign_in(store: Store, api_key: str) -> tuple[str, dict[str, Any]] | None:
    """Check the key; on success store a new sign-in and return its token
    (for the cookie) and the key's project."""
    found = store.authenticate(api_key.strip()) if api_key.strip() else None
    if found is None:
        return None
    token = secrets.token_urlsafe(32)
    now = time.time()
    ph = store.placeholder
    store.execute(f"DELETE FROM web_sessions WHERE expires_at < {ph}", [now])
    store.execute(f"INSERT INTO web_sessions (token_hash, key_id, created_at, expires_at) "
                  f"VALUES ({ph}, {ph}, {ph}, {ph})",
                  [hash_api_key(token), found["id"], now, now + SIGNIN_SECONDS])
    return token, found


def signed_in_project(store: Store, token: str | None) -> str | None:
    """The project of a live sign-in (not expired, its key not revoked)."""
    if not token or len(token) > 200:
        return None
    ph = store.placeholder
    rows = store.query(
        "SELECT k.project FROM web_sessions w JOIN api_keys k ON k.id = w.key_id "
        f"WHERE w.token_hash = {ph} AND w.expires_at > {ph} AND k.revoked_at IS NULL",
        [hash_api_key(token), time.time()])
    return rows[0]["project"] if rows else None


def sign_out(store: Store, token: str | None) -> None:
    if token and len(token) <= 200:
        store.execute(f"DELETE FROM web_sessions WHERE token_hash = {store.placeholder}",
                      [hash_api_key(token)])
