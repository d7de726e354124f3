"""The `lucidic` command: read what was recorded.

    lucidic sessions list [--agent ID] [--status running|successful|failed|finished]
                          [--search TEXT] [--mass-sim ID] [--limit N] [--json]
    lucidic sessions show SESSION_ID [--full] [--json]
    lucidic sessions delete SESSION_ID [SESSION_ID ...] [--force] [--db URL]
    lucidic sessions prune --older-than AGE [--dry-run] [--project P] [--vacuum] [--db URL]
    lucidic experiments list|show ID|compare A B [--fail-on-regression NAME[:TOL]]|rescore ID
    lucidic mass-sims list|show ID
    lucidic providers [--json]
    lucidic ui [--host H] [--port P] [--allow-host NAME] [--db URL]
    lucidic server [--db URL] [--host H] [--port P] [--max-body-mb N] [--max-upload-mb N]
                   [--upload-ttl SECONDS] [--otlp-grpc-port [PORT]] [--retention-days N]
    lucidic keys create --project NAME [--label TEXT] [--db URL]
    lucidic keys list [--project NAME] [--db URL] [--json]
    lucidic keys revoke KEY_ID [--db URL]
    lucidic prompts set NAME FILE --project P [--label LABEL] [--db URL]
    lucidic prompts list [--project P] [--db URL] [--json]
    lucidic prompts show NAME --project P [--label L | --version N] [--db URL] [--json]

Sessions are read from the embedded store (LUCIDIC_HOME), or from the server
at LUCIDIC_BASE_URL when that is set. ``server`` and ``keys`` work on the
database given by --db (``sqlite:///path`` or ``postgresql://...``), and so
do ``prompts``, else
LUCIDIC_DATABASE_URL, else the embedded store's file. How sessions are shown
is ``_render``'s.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from contextlib import closing
from typing import Any, Protocol

from . import _config, _render
from ._cli_parsing import HelpFormatter, add_paging, add_parser, help_of


class Reader(Protocol):
    """What the sessions commands read: the embedded store or a server."""

    def list_sessions(self, *, agent_id: str | None = None, status: str | None = None,
                      search: str | None = None, id_prefix: str | None = None,
                      limit: int = 50, offset: int = 0,
                      mass_sim_id: str | None = None) -> list[dict[str, Any]]: ...

    def session_tree(self, session_id: str) -> dict[str, Any] | None: ...

    def tree_if_changed(self, session_id: str,
                        version: str | None) -> tuple[str, dict[str, Any] | None]: ...


class LocalReader:
    """The embedded store, read through lucidic.reading as a server reads it."""

    def __init__(self, store: Any) -> None:
        from .reading import Reader

        self._store = store
        self._reader = Reader(store)

    def list_sessions(self, **query: Any) -> list[dict[str, Any]]:
        return self._reader.session_list(**query)

    def session_tree(self, session_id: str) -> dict[str, Any] | None:
        tree: dict[str, Any] | None = self._reader.tree(session_id)
        return tree

    def tree_if_changed(self, session_id: str,
                        version: str | None) -> tuple[str, dict[str, Any] | None]:
        result: tuple[str, dict[str, Any] | None] = self._reader.tree_if_changed(
            session_id, version)
        return result


def open_reader() -> Reader:
    base_url = _config.base_url()
    if base_url:
        from ._http import HttpReader

        return HttpReader(base_url, _config.env("LUCIDIC_API_KEY"))
    from .store import Store

    path = _config.store_path()
    if not path.exists():
        raise SystemExit(f"lucidic: no embedded store at {path} yet: nothing was recorded "
                         "(set LUCIDIC_HOME to read another one)")
    return LocalReader(Store(path))


#: How many candidates an ambiguous id prefix lists.
_PREFIX_SHOWN = 5


def resolve_session_id(reader: Reader, given: str) -> str | None:
    """The session ``given`` names: its whole id, or the start of exactly one
    session's id. None when nothing matches; SystemExit naming the candidates
    when several do."""
    matches = [s["id"] for s in reader.list_sessions(id_prefix=given, limit=_PREFIX_SHOWN + 1)]
    if given in matches or not matches:
        return given if matches else None
    if len(matches) == 1:
        return str(matches[0])
    shown = ", ".join(matches[:_PREFIX_SHOWN]) + (", ..." if len(matches) > _PREFIX_SHOWN
                                                  else "")
    raise SystemExit(f"lucidic: {given!r} starts more than one session id ({shown}): "
                     "give more of it")


# -- output -------------------------------------------------------------------------

def _print_lines(lines: list[_render.Line]) -> None:
    if sys.stdout.isatty():
        from rich.console import Console

        Console(highlight=False).print(_render.rich_text(lines))
    else:
        print("\n".join(_render.plain_lines(line) for line in lines))


def _print_tree(tree: _render.Layout) -> None:
    """A coloured tree on a terminal; plain text, drawn with box characters,
    into a pipe or a file."""
    if sys.stdout.isatty():
        from rich.console import Console

        Console(highlight=False).print(_render.rich_renderable(tree))
    else:
        print(_render.plain(tree))


# -- commands -------------------------------------------------------------------------

def _source() -> str:
    """Where sessions are read from, in words."""
    base_url = _config.base_url()
    return f"the server at {base_url}" if base_url else \
        f"the embedded store at {_config.store_path()}"


def _sessions_list(args: argparse.Namespace) -> int:
    sessions = open_reader().list_sessions(agent_id=args.agent, status=args.status,
                                           search=args.search, limit=args.limit,
                                           offset=args.offset, mass_sim_id=args.mass_sim)
    if args.json:
        _render.print_json(sessions)
    elif not sessions:
        print(f"no sessions in {_source()}")
    else:
        _print_lines([_render.session_row(s) for s in sessions])
    return 0


def _sessions_show(args: argparse.Namespace) -> int:
    reader = open_reader()
    version, tree = reader.tree_if_changed(args.session_id, None)
    if tree is None:
        session_id = resolve_session_id(reader, args.session_id)
        if session_id is not None:
            version, tree = reader.tree_if_changed(session_id, None)
    if tree is None:
        print(f"lucidic: no session {args.session_id!r} in {_source()} "
              "(`lucidic sessions list` shows the recorded ones)", file=sys.stderr)
        return 1
    if args.json:
        _render.print_json(tree)
    else:
        _print_tree(_render.layout(tree, full=args.full))
    if args.follow:
        return _follow(reader, tree, version, args.interval)
    return 0


def _follow(reader: Reader, tree: dict[str, Any], version: str, interval: float) -> int:
    """Print the steps and events that reach the session from now on, until it
    ends (or Ctrl-C). The store is asked only whether anything changed, which
    costs a few indexed lookups; the tree is read again only when it did."""
    seen: set[str] = set()
    _render.arrivals(tree, seen)
    try:
        while not tree.get("is_finished"):
            sys.stdout.flush()
            time.sleep(interval)
            version, newer = reader.tree_if_changed(tree["id"], version)
            if not version:
                print(f"lucidic: session {tree['id']!r} is no longer in {_source()}",
                      file=sys.stderr)
                return 1
            if newer is None:
                continue
            tree = newer
            lines = _render.arrivals(tree, seen)
            if lines:
                _print_lines(lines)
    except KeyboardInterrupt:
        return 130
    _print_lines([[("session ended: ", "label"), *_render.status(tree), ("  ", ""),
                   *_render.totals(tree)]])
    return 0


def _providers(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from .plugins import describe

    infos = describe()
    if args.json:
        print(json.dumps([asdict(i) for i in infos], indent=2))
        return 0
    if not infos:
        print("no providers installed (pip install lucidic-toolkit-openai, "
              "lucidic-toolkit-anthropic, ...)")
    for info in infos:
        library = (f"{info.library} {info.library_version or 'not installed'}"
                   if info.library else "")
        supported = f" (supports {info.supported_versions})" if info.supported_versions else ""
        line = f"{info.name:<15} {info.distribution or '?'} {info.distribution_version or ''}"
        line += f"  {library}{supported}"
        if info.problem:
            line += f"  -- {info.problem}"
        print(line)
    return 0


def _database_url(args: argparse.Namespace) -> str:
    if args.db:
        return str(args.db)
    return _config.env("LUCIDIC_DATABASE_URL") or f"sqlite:///{_config.store_path()}"


def _shown_url(url: str) -> str:
    """A database URL fit to print: no password."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def _short_name(url: str) -> str:
    """A database, as a page header names it: a SQLite file by its name, a
    PostgreSQL database by its name and host."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if parts.scheme.startswith("sqlite"):
        return f"SQLite {parts.path.rsplit('/', 1)[-1] or url}"
    database = parts.path.lstrip("/") or "postgres"
    return f"PostgreSQL {database} on {parts.hostname or 'localhost'}"


def _where(args: argparse.Namespace) -> str:
    """Which database a keys command works on, and why that one."""
    url = _shown_url(_database_url(args))
    if args.db:
        return url
    if _config.env("LUCIDIC_DATABASE_URL"):
        return f"{url} (LUCIDIC_DATABASE_URL)"
    return (f"{url} (this machine's embedded store: give the server's database with --db or "
            "LUCIDIC_DATABASE_URL)")


def _open_accounts(args: argparse.Namespace) -> Any:
    from .store import Store, StoreError

    try:
        return Store(_database_url(args))
    except StoreError as exc:
        raise SystemExit(f"lucidic: {exc}") from exc


def _positive_days(text: str) -> float:
    """An argument type: a number of days above 0."""
    import math

    try:
        days = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number of days, not {text!r}") from None
    if not (days > 0 and math.isfinite(days)):
        raise argparse.ArgumentTypeError(f"must be a number of days above 0, not {text!r}")
    return days


def _server(args: argparse.Namespace) -> int:
    try:
        from .server import run
    except ImportError as exc:
        raise SystemExit("lucidic: the server needs its extra: "
                         f"pip install 'lucidic-toolkit[server]' ({exc})") from exc
    from .store import StoreError

    try:
        run(_database_url(args), host=args.host, port=args.port,
            max_body_bytes=int(args.max_body_mb * 1024 * 1024), log_level=args.log_level,
            max_upload_bytes=int(args.max_upload_mb * 1024 * 1024),
            upload_ttl=args.upload_ttl, otlp_grpc_port=args.otlp_grpc_port,
            retention_days=args.retention_days)
    except StoreError as exc:
        raise SystemExit(f"lucidic: {exc}") from exc
    except OSError as exc:
        raise SystemExit(f"lucidic: {exc}; choose another port with --otlp-grpc-port"
                         ) from exc
    return 0


def _ui(args: argparse.Namespace) -> int:
    try:
        from .ui.app import run_ui
    except ImportError as exc:
        raise SystemExit("lucidic: `lucidic ui` needs the web UI's dependencies: pip install "
                         f"'lucidic-toolkit[server]' (missing: {exc.name})") from exc
    from .store import StoreError

    url = args.db or f"sqlite:///{_config.store_path()}"
    where = _shown_url(args.db) if args.db else f"the embedded store at {_config.store_path()}"
    store_name = (_short_name(args.db), where) if args.db else None

    def announce(page: str) -> None:
        print(f"Lucidic UI for {where}", flush=True)
        print(f"  {page}", flush=True)
        print("Press Ctrl-C to stop.", flush=True)

    try:
        run_ui(url, host=args.host, port=args.port, allow_hosts=args.allow_host or (),
               announce=announce, log_level=args.log_level, store_name=store_name)
    except OSError as exc:
        raise SystemExit(f"lucidic: cannot listen on {args.host}:{args.port} "
                         f"({exc.strerror or exc}); choose another port with --port") from exc
    except StoreError as exc:
        raise SystemExit(f"lucidic: {exc}") from exc
    return 0


def _keys_create(args: argparse.Namespace) -> int:
    with closing(_open_accounts(args)) as store:
        info, key = store.create_api_key(args.project, args.label)
    print(f"database: {_where(args)}")
    print(f"project:  {info['project']}")
    print(f"key id:   {info['id']} (for `lucidic keys revoke`)")
    print("the key, shown this once (only its hash is kept); set it as LUCIDIC_API_KEY:")
    print(key)
    return 0


def _keys_list(args: argparse.Namespace) -> int:
    with closing(_open_accounts(args)) as store:
        keys = store.list_api_keys(args.project)
    if args.json:
        _render.print_json(keys)
        return 0
    if not keys:
        which = f" for project {args.project!r}" if args.project else ""
        print(f"no API keys{which} in {_where(args)}; make one with "
              "`lucidic keys create --project NAME`")
        return 0
    for key in keys:
        state = f"revoked {_render.when(key['revoked_at'])}" if key["revoked_at"] else "active"
        label = f"  {key['label']}" if key.get("label") else ""
        print(f"{key['id']}  project {key['project']}  created "
              f"{_render.when(key['created_at'])}  {state}{label}")
    return 0


def _keys_revoke(args: argparse.Namespace) -> int:
    with closing(_open_accounts(args)) as store:
        ids = [k["id"] for k in store.list_api_keys() if k["id"].startswith(args.key_id)]
        if len(ids) > 1 and args.key_id not in ids:
            raise SystemExit(f"lucidic: {args.key_id!r} starts more than one key id "
                             f"({', '.join(ids[:_PREFIX_SHOWN])}): give more of it")
        key_id = args.key_id if args.key_id in ids or not ids else ids[0]
        found = store.revoke_api_key(key_id)
    if not found:
        print(f"lucidic: no API key with id {args.key_id!r} in {_where(args)} "
              "(`lucidic keys list` shows them)", file=sys.stderr)
        return 1
    print(f"revoked {key_id}: requests with it are refused from now on")
    return 0


def _prompts_set(args: argparse.Namespace) -> int:
    from .errors import InvalidOperationError
    from .prompts import set_prompt

    try:
        with open(args.file, encoding="utf-8") as f:
            content = f.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise SystemExit(f"lucidic: cannot read {args.file}: {exc}") from exc
    with closing(_open_accounts(args)) as store:
        try:
            info = set_prompt(store, args.project, args.name, content, args.label or [])
        except InvalidOperationError as exc:
            raise SystemExit(f"lucidic: {exc}") from exc
    print(f"prompt {info['name']!r} version {info['version']} in project {info['project']}, "
          f"labels: {', '.join(info['labels'])}")
    return 0


def _prompts_list(args: argparse.Namespace) -> int:
    from .prompts import list_prompts

    with closing(_open_accounts(args)) as store:
        prompts = list_prompts(store, args.project)
    if args.json:
        _render.print_json(prompts)
        return 0
    if not prompts:
        print(f"no prompts in {_where(args)}; keep one with `lucidic prompts set NAME FILE "
              "--project P --label production`")
    for prompt in prompts:
        labels = ", ".join(f"{label}→v{version}" for label, version in prompt["labels"].items())
        print(f"{prompt['project']}  {prompt['name']}  latest v{prompt['latest_version']}  "
              f"updated {_render.when(prompt['updated_at'])}"
              + (f"  {labels}" if labels else ""))
    return 0


def _prompts_show(args: argparse.Namespace) -> int:
    from .prompts import get_prompt

    with closing(_open_accounts(args)) as store:
        prompt = get_prompt(store, args.project, args.name, args.label, args.version)
    if prompt is None:
        which = (f"version {args.version}" if args.version is not None
                 else f"label {args.label or 'latest'!r}")
        print(f"lucidic: no prompt {args.name!r} with {which} in project {args.project!r} "
              f"in {_where(args)}", file=sys.stderr)
        return 1
    if args.json:
        _render.print_json(prompt)
        return 0
    print(f"# {prompt['name']} v{prompt['version']} ({', '.join(prompt['labels'])}), "
          f"{_render.when(prompt['created_at'])}")
    print(prompt["content"])
    return 0


# -- the parser ---------------------------------------------------------------------

def _add_server_commands(commands: Any) -> None:
    db_help = ("sqlite:///PATH or postgresql://USER@HOST/DB (default: LUCIDIC_DATABASE_URL, "
               "else the embedded store's file)")
    server = add_parser(commands, "server",
                         help="run the shared server (needs lucidic-toolkit[server])")
    server.add_argument("--db", help=db_help)
    server.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (0.0.0.0 to serve other machines)")
    server.add_argument("--port", type=int, default=8765, help="port to listen on")
    server.add_argument("--otlp-grpc-port", type=int, nargs="?", const=4317, metavar="PORT",
                        help="also receive OpenTelemetry traces over OTLP/gRPC on this port "
                             "of --host (4317, OTLP's own, when no PORT is given; off "
                             "without this option)")
    server.add_argument("--retention-days", type=_positive_days, metavar="N",
                        help="delete, at start and every hour, the sessions nothing was "
                             "written to for N days (ended, or abandoned unfinished), with "
                             "everything recorded for them; off without this option")
    server.add_argument("--max-body-mb", type=float, default=32.0,
                        help="largest request body accepted, in MiB")
    server.add_argument("--max-upload-mb", type=float, default=10.0,
                        help="largest screenshot or event payload uploaded to a signed URL, "
                             "in MiB")
    server.add_argument("--upload-ttl", type=float, default=900.0, metavar="SECONDS",
                        help="how long a signed upload URL stays valid")
    server.add_argument("--log-level", default="info",
                        choices=["critical", "error", "warning", "info", "debug"],
                        help="the server's log level")
    server.set_defaults(handler=_server)

    ui = add_parser(commands, "ui",
                     help="open the sessions in a browser (needs lucidic-toolkit[server])",
                     description="Serve the web UI over the embedded store on this machine: "
                                 "no server, no key. Runs until Ctrl-C.")
    ui.add_argument("--host", default="127.0.0.1",
                    help="address to listen on (127.0.0.1: this machine only)")
    ui.add_argument("--port", type=int, default=8766, help="port (0: any free one)")
    ui.add_argument("--allow-host", action="append", metavar="NAME",
                    help="another host name the UI may be reached by (it answers only its "
                         "own address and loopback names otherwise)")
    ui.add_argument("--db", help="read this database instead of the embedded store")
    ui.add_argument("--log-level", default="warning",
                    choices=["critical", "error", "warning", "info", "debug"],
                    help="the UI server's log level")
    ui.set_defaults(handler=_ui)

    keys = add_parser(commands, "keys", help="the server's API keys",
                       description="API keys live in the server's database: give it with --db "
                                   "or LUCIDIC_DATABASE_URL, as to `lucidic server`.")
    keys_commands = keys.add_subparsers(dest="keys_command", metavar="COMMAND")
    keys.set_defaults(handler=help_of(keys))
    create = add_parser(keys_commands, "create", help="make a key for a project (created if "
                                                        "need be); prints it once, last line")
    create.add_argument("--project", required=True, help="the project the key reads and writes")
    create.add_argument("--label", help="a note to tell keys apart")
    create.add_argument("--db", help=db_help)
    create.set_defaults(handler=_keys_create)
    listing = add_parser(keys_commands, "list", help="keys (never the keys themselves)")
    listing.add_argument("--project", help="only this project's keys")
    listing.add_argument("--db", help=db_help)
    listing.add_argument("--json", action="store_true", help="print JSON")
    listing.set_defaults(handler=_keys_list)
    revoke = add_parser(keys_commands, "revoke", help="refuse a key from now on")
    revoke.add_argument("key_id", help="the key's id, as `lucidic keys list` shows it, or "
                                       "the start of it")
    revoke.add_argument("--db", help=db_help)
    revoke.set_defaults(handler=_keys_revoke)
    _add_prompt_commands(commands, db_help)


def _add_prompt_commands(commands: Any, db_help: str) -> None:
    prompts = add_parser(commands, "prompts", help="the prompt store (lai.get_prompt)",
                          description="Prompts live in the server's database: give it with "
                                      "--db or LUCIDIC_DATABASE_URL, as to `lucidic server`.")
    prompt_commands = prompts.add_subparsers(dest="prompts_command", metavar="COMMAND")
    prompts.set_defaults(handler=help_of(prompts))
    setting = add_parser(prompt_commands, "set", help="keep FILE as the next version of NAME")
    setting.add_argument("name", help="the prompt's name")
    setting.add_argument("file", help="a UTF-8 text file: the prompt, {{variables}} and all")
    setting.add_argument("--project", required=True, help="the project the prompt is for")
    setting.add_argument("--label", action="append", metavar="LABEL",
                         help="point LABEL (production, staging, ...) at the new version; "
                              "repeatable")
    setting.add_argument("--db", help=db_help)
    setting.set_defaults(handler=_prompts_set)
    listing = add_parser(prompt_commands, "list", help="prompts, their versions and labels")
    listing.add_argument("--project", help="only this project's prompts")
    listing.add_argument("--db", help=db_help)
    listing.add_argument("--json", action="store_true", help="print JSON")
    listing.set_defaults(handler=_prompts_list)
    show = add_parser(prompt_commands, "show", help="a prompt's content (the newest version, "
                                                     "or --label / --version)")
    show.add_argument("name", help="the prompt's name")
    show.add_argument("--project", required=True, help="the project the prompt is for")
    which = show.add_mutually_exclusive_group()
    which.add_argument("--label", help="the version this label points at")
    which.add_argument("--version", type=int, help="this version")
    show.add_argument("--db", help=db_help)
    show.add_argument("--json", action="store_true", help="print JSON")
    show.set_defaults(handler=_prompts_show)


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="lucidic", formatter_class=HelpFormatter,
        description="Read what Lucidic recorded, and run its server.",
        epilog="Sessions are read from the embedded store (LUCIDIC_HOME), or from the server "
               "at LUCIDIC_BASE_URL (with LUCIDIC_API_KEY) when that is set.")
    parser.add_argument("--version", action="version",
                        version=f"lucidic {__version__} (lucidic-toolkit, Python "
                                f"{sys.version.split()[0]})")
    parser.set_defaults(handler=help_of(parser))
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    sessions = add_parser(commands, "sessions",
                          help="list sessions, show one, delete them or prune old ones")
    sessions.set_defaults(handler=help_of(sessions))
    sessions_commands = sessions.add_subparsers(dest="sessions_command", metavar="COMMAND")
    listing = add_parser(sessions_commands, "list", help="sessions, newest first")
    listing.add_argument("--agent", help="only this agent's sessions")
    listing.add_argument("--status", choices=["running", "successful", "failed", "finished"],
                         help="running, or ended as successful, failed, or finished (ended "
                              "with no outcome)")
    listing.add_argument("--search", metavar="TEXT",
                         help="only sessions whose name, task, tags, steps or events (LLM "
                              "messages, models, errors) hold TEXT, in any case")
    listing.add_argument("--mass-sim", metavar="ID",
                         help="only the sessions of this mass simulation")
    add_paging(listing)
    listing.add_argument("--json", action="store_true", help="print JSON")
    listing.set_defaults(handler=_sessions_list)
    show = add_parser(sessions_commands, "show", help="a session's tree of steps and events")
    show.add_argument("session_id", help="the session's id, or the start of it")
    show.add_argument("--follow", "-f", action="store_true",
                      help="keep printing the steps and events that arrive, until the "
                           "session ends (Ctrl-C stops)")
    show.add_argument("--interval", type=float, default=1.0, help=argparse.SUPPRESS)
    show.add_argument("--full", action="store_true",
                      help="every field, and whole messages, untruncated")
    show.add_argument("--json", action="store_true",
                      help="print JSON (times as epoch seconds, and ISO 8601 in *_iso)")
    show.set_defaults(handler=_sessions_show)
    from ._cli_retention import add_commands as add_retention_commands

    add_retention_commands(sessions_commands)

    from ._cli_experiments import add_commands

    add_commands(commands)
    providers = add_parser(commands, "providers", help="installed provider plugins")
    providers.add_argument("--json", action="store_true", help="print JSON")
    providers.set_defaults(handler=_providers)
    _add_server_commands(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "follow", False) and args.json:
        parser.error("sessions show --follow prints text as the session grows; "
                     "drop --json (or read the JSON once without --follow)")
    try:
        return int(args.handler(args))
    except BrokenPipeError:
        return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
