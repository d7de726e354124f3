"""`lucidic sessions delete` and `lucidic sessions prune`: deleting sessions
by id, and by age (lucidic.reading.retention does the deleting).

Which store: the database given by --db; else the server at
LUCIDIC_BASE_URL (with LUCIDIC_API_KEY: `delete` only, through its API;
a server prunes itself with `lucidic server --retention-days N`); else the
embedded store, as `lucidic sessions list` reads.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from contextlib import closing
from typing import Any

from . import _config, _render
from ._cli_parsing import add_parser

#: What --older-than takes: a number and a unit.
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$", re.IGNORECASE)
#: Ids a dry run or a prune lists at most.
_SHOWN = 20


def duration(text: str) -> float:
    """An argument type: ``30d``, ``12h``, ``90m``, ``45s``, ``2w``, in seconds."""
    found = _DURATION.match(text)
    if found is None:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a duration: give a number and a unit, such as 30d (days), "
            "12h (hours), 90m (minutes), 45s or 2w (weeks)")
    seconds = float(found[1]) * _UNITS[found[2].lower()]
    if seconds <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is no time at all: give more than 0")
    return seconds


def _shown_url(url: str) -> str:
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username}:***@{parts.hostname or ''}" + (
        f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def _open_store(args: argparse.Namespace) -> tuple[Any, str]:
    """The store to delete from, and where it is, in words."""
    from .store import Store, StoreError

    if args.db:
        url, where = args.db, _shown_url(args.db)
    else:
        path = _config.store_path()
        if not path.exists():
            raise SystemExit(f"lucidic: no embedded store at {path}: nothing was recorded "
                             "there (set LUCIDIC_HOME, or give a database with --db)")
        url, where = str(path), f"the embedded store at {path}"
    try:
        return Store(url), where
    except StoreError as exc:
        raise SystemExit(f"lucidic: {exc}") from exc


def _sessions_delete(args: argparse.Namespace) -> int:
    ids = list(dict.fromkeys(args.session_ids))
    base_url = _config.base_url()
    if base_url and not args.db:
        return _delete_on_server(base_url, ids, args.force)
    from .reading.retention import RECENT_WRITES, delete_sessions

    store, where = _open_store(args)
    with closing(store):
        # Every id checked first: a typo deletes nothing (and says which).
        unknown = [sid for sid in ids if store.get_session(sid) is None
                   and not store.query(f"SELECT 1 AS one FROM events WHERE session_id = "
                                       f"{store.placeholder} UNION SELECT 1 FROM steps "
                                       f"WHERE session_id = {store.placeholder}", [sid, sid])]
        if unknown:
            print(f"lucidic: no session {', '.join(map(repr, unknown))} in {where} "
                  "(`lucidic sessions list` shows the recorded ones); nothing was deleted",
                  file=sys.stderr)
            return 1
        done = delete_sessions(store, ids, force=args.force)
    for sid in done.deleted:
        print(f"deleted {sid}")
    if done.running:
        print(f"lucidic: not deleted, still being written to (unfinished, written in the "
              f"last {RECENT_WRITES / 60:g} minutes): {', '.join(done.running)}; end it "
              "first, or pass --force", file=sys.stderr)
    if done.unknown:  # (deleted meanwhile by someone else)
        print(f"lucidic: no session {', '.join(map(repr, done.unknown))} in {where}",
              file=sys.stderr)
    return 1 if done.running or done.unknown else 0


def _delete_on_server(base_url: str, ids: list[str], force: bool) -> int:
    from ._http import HttpReader

    reader = HttpReader(base_url, _config.env("LUCIDIC_API_KEY"))
    try:
        unknown = [sid for sid in ids if not reader.has_session(sid)]
        if unknown:
            print(f"lucidic: no session {', '.join(map(repr, unknown))} in the server at "
                  f"{base_url}'s project (`lucidic sessions list` shows them); nothing was "
                  "deleted", file=sys.stderr)
            return 1
        failed = 0
        for sid in ids:
            outcome, detail = reader.delete_session(sid, force=force)
            if outcome == "deleted":
                print(f"deleted {sid}")
            else:
                failed += 1
                hint = "; pass --force to delete it all the same" if outcome == "running" \
                    else ""
                print(f"lucidic: {sid} not deleted: {detail}{hint}", file=sys.stderr)
        return 1 if failed else 0
    finally:
        reader.close()


def _sessions_prune(args: argparse.Namespace) -> int:
    if _config.base_url() and not args.db:
        print("lucidic: `sessions prune` works on a database, not through a server's API: give "
              "the server's database with --db (or run the server with --retention-days N, "
              "which prunes in the background); to prune this machine's embedded store, "
              "unset LUCIDIC_BASE_URL", file=sys.stderr)
        return 2
    from .reading.retention import prune

    store, where = _open_store(args)
    with closing(store):
        if args.vacuum and store.dialect != "sqlite":
            print("lucidic: --vacuum is for SQLite files; PostgreSQL's autovacuum reuses "
                  "the space of deleted rows by itself", file=sys.stderr)
            return 2
        path = store.sqlite_file
        size_before = _size(path)
        done = prune(store, args.older_than, project=args.project, dry_run=args.dry_run,
                     keep_ids=_SHOWN)
        what = "would delete" if args.dry_run else "deleted"
        scope = f" of project {args.project!r}" if args.project else ""
        span = (f", started {_render.when(done.oldest)} to {_render.when(done.newest)}"
                if done.sessions else "")
        print(f"{what} {done.sessions} session(s){scope} with nothing written for "
              f"{_age(args.older_than)}{span}, from {where}")
        for sid in done.ids:
            print(f"  {sid}")
        if done.sessions > len(done.ids):
            print(f"  ... and {done.sessions - len(done.ids)} more")
        if args.dry_run:
            print("dry run: nothing was deleted")
        elif args.vacuum and path is not None:
            from .store import StoreError

            try:
                store.vacuum()
            except StoreError as exc:
                raise SystemExit(f"lucidic: VACUUM failed, the sessions are deleted all the "
                                 f"same: {exc}") from exc
            print(f"vacuumed {path}: {_mib(size_before)} -> {_mib(_size(path))}")
        elif path is not None and done.sessions:
            print("(the file keeps its size, and reuses the freed pages for new records; "
                  "--vacuum gives them back to the disk)")
    return 0


def _size(path: str | None) -> int:
    if path is None:
        return 0
    return sum(os.path.getsize(p) for p in (path, path + "-wal") if os.path.exists(p))


def _mib(size: int) -> str:
    return f"{size / 1048576:.1f} MiB"


def _age(seconds: float) -> str:
    for unit, name in ((86400, "day"), (3600, "hour"), (60, "minute"), (1, "second")):
        if seconds >= unit and seconds % unit == 0 or unit == 1:
            count = seconds / unit
            return f"{count:g} {name}{'' if count == 1 else 's'}"
    return f"{seconds:g} seconds"  # pragma: no cover - unit 1 always answers


def add_commands(sessions_commands: Any) -> None:
    """`sessions delete` and `sessions prune`."""
    db_help = ("delete from this database (sqlite:///PATH or postgresql://...) rather than "
               "the embedded store or the server at LUCIDIC_BASE_URL")
    delete = add_parser(
        sessions_commands, "delete", help="delete sessions, with their steps, events, scores "
                                          "and uploads",
        description="Delete sessions for good, with everything recorded for them. Records "
                    "for a deleted session that arrive later are refused. Works on the "
                    "embedded store, on the server at LUCIDIC_BASE_URL (with "
                    "LUCIDIC_API_KEY, in the key's project), or on the database --db names.")
    delete.add_argument("session_ids", nargs="+", metavar="SESSION_ID",
                        help="whole session ids; if any is unknown, nothing is deleted")
    delete.add_argument("--force", action="store_true",
                        help="delete an unfinished session even if it was written to in the "
                             "last 10 minutes (a process still writing has its records "
                             "refused)")
    delete.add_argument("--db", help=db_help)
    delete.set_defaults(handler=_sessions_delete)
    pruning = add_parser(
        sessions_commands, "prune", help="delete the sessions nothing was written to for a "
                                         "while",
        description="Delete every session (ended, or abandoned unfinished) to which nothing "
                    "was written for the given time: a session still being written to is "
                    "kept, however old. A batch of sessions at a time, so that writers wait "
                    "for a batch, never for the whole prune. A server prunes its own "
                    "database with `lucidic server --retention-days N`.")
    pruning.add_argument("--older-than", required=True, type=duration, metavar="AGE",
                         help="how long nothing was written to it: 30d, 12h, 90m, 2w")
    pruning.add_argument("--dry-run", action="store_true",
                         help="say how many would go, and which, deleting nothing")
    pruning.add_argument("--project", help="only this project's sessions (a server's "
                                           "database)")
    pruning.add_argument("--vacuum", action="store_true",
                         help="then VACUUM the SQLite file, so that it shrinks (it needs as "
                              "much free disk as the file's size, and writers wait for it)")
    pruning.add_argument("--db", help="prune this database (sqlite:///PATH or "
                                      "postgresql://...) rather than the embedded store")
    pruning.set_defaults(handler=_sessions_prune)
