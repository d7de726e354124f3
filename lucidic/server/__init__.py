"""``lucidic server``: the REST API over the shared storage layer.

An ASGI app (FastAPI) that keeps no state of its own: everything lives in the
database (SQLite on one host, PostgreSQL for several replicas), so any number
of server processes can serve the same sessions. Importing this package needs
the ``server`` extra (``pip install 'lucidic-toolkit[server]'``); the SDK never
does.
"""

from __future__ import annotations

from .app import create_app, default_database_url, run

__all__ = ["create_app", "default_database_url", "run"]
