"""The `lucidic` command: read what was recorded.

    lucidic sessions list [--agent ID] [--status running|successful|failed|finished]
                          [--search TEXT] [--limit N] [--json]
    lucidic sessions show SESSION_ID [--json]
    lucidic providers [--json]
    lucidic ui [--host H] [--port P] [--allow-host NAME] [--db URL]
    lucidic server [--db URL] [--host H] [--port P] [--max-body-mb N]
    lucidic keys create --project NAME [--label TEXT] [--db URL]
    lucidic keys list [--project NAME] [--db URL] [--json]
    lucidic keys revoke KEY_ID [--db URL]

Sessions are read from the embedded store (LUCIDIC_HOME), or from the server
at LUCIDIC_BASE_URL when that is set. ``server`` and ``keys`` work on the
database given by --db (``sqlite:///path`` or ``postgresql://...``), else
LUCIDIC_DATABASE_URL, else the embedded store's file.
"""

from __future__ import annotations

import argparse
import json
import sys
from contextlib import closing
from datetime import datetime
from typing import Any, Protocol

from . import _config


class Reader(Protocol):
    def list_sessions(self, *, agent_id: str | None = None, status: str | None = None,
                      search: str | None = None, limit: int = 50,
                      offset: int = 0) -> list[dict[str, Any]]: ...

    def session_tree(self, session_id: str) -> dict[str, Any] | None: ...


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
    return Store(path)


# -- rendering ----------------------------------------------------------------------

def _when(ts: float | None) -> str:
    return datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S") if ts else "-"


def _duration(item: dict[str, Any]) -> str:
    started, ended = item.get("started_at"), item.get("ended_at")
    if started is None or ended is None:
        return "running" if not item.get("is_finished") else ""
    seconds = ended - started
    if seconds < 1:
        return f"{seconds * 1000:.1f} ms"
    return f"{seconds:.2f} s"


def _status(session: dict[str, Any]) -> str:
    if not session.get("is_finished"):
        return "running"
    outcome = session.get("is_successful")
    return "finished" + ("" if outcome is None else (", successful" if outcome else ", failed"))


def _totals(session: dict[str, Any]) -> str:
    parts = [f"{session.get('step_count', 0)} steps", f"{session.get('event_count', 0)} events"]
    if session.get("error_count"):
        parts.append(f"{session['error_count']} errors")
    tokens = (session.get("input_tokens") or 0) + (session.get("output_tokens") or 0)
    if tokens:
        parts.append(f"{session.get('input_tokens', 0)}→{session.get('output_tokens', 0)} tokens")
    if session.get("total_cost"):
        parts.append(f"${session['total_cost']:.6f}")
    return ", ".join(parts)


def _short(text: Any, width: int = 80) -> str:
    value = " ".join(str(text).split())
    return value if len(value) <= width else value[: width - 1] + "…"


def render_list(sessions: list[dict[str, Any]]) -> str:
    if not sessions:
        return "no sessions recorded"
    lines = []
    for s in sessions:
        name = f" {s['name']!r}" if s.get("name") else ""
        agent = f" agent={s['agent_id']}" if s.get("agent_id") else ""
        lines.append(f"{s['id']}{name}{agent}  {_when(s.get('started_at'))}  {_status(s)}  "
                     f"({_totals(s)})")
    return "\n".join(lines)


def render_tree(session: dict[str, Any]) -> str:
    name = f" {session['name']!r}" if session.get("name") else ""
    lines = [f"session {session['id']}{name}",
             f"  {_status(session)}, started {_when(session.get('started_at'))}, "
             f"{_duration(session) or 'running'}",
             f"  {_totals(session)}"]
    for label in ("agent_id", "task", "tags", "is_successful_reason", "session_eval",
                  "session_eval_reason"):
        if session.get(label) not in (None, [], ""):
            lines.append(f"  {label}: {_short(session[label])}")
    children = _children(session)
    for index, child in enumerate(children):
        _render_node(child, "", index == len(children) - 1, lines)
    return "\n".join(lines)


def _children(node: dict[str, Any]) -> list[dict[str, Any]]:
    items = [("step", s) for s in node.get("steps", [])] + \
            [("event", e) for e in node.get("events", [])]
    items.sort(key=lambda kv: (kv[1].get("started_at") or 0, kv[1]["id"]))
    return [{"kind": kind, **item} for kind, item in items]


def _render_node(node: dict[str, Any], prefix: str, last: bool, lines: list[str]) -> None:
    branch = "└─ " if last else "├─ "
    lines.append(prefix + branch + (_step_line(node) if node["kind"] == "step"
                                    else _event_line(node)))
    children = _children(node) if node["kind"] == "step" else []
    for index, child in enumerate(children):
        _render_node(child, prefix + ("   " if last else "│  "), index == len(children) - 1,
                     lines)


def _step_line(step: dict[str, Any]) -> str:
    parts = [f"step {step.get('action') or step.get('state') or step['id']}"]
    for label in ("state", "goal"):
        if step.get(label) and step.get(label) != parts[0][5:]:
            parts.append(f"{label}={_short(step[label], 40)!r}")
    parts.append(_duration(step))
    if step.get("error"):
        parts.append(f"FAILED: {_short(step['error'], 60)}")
    return "  ".join(p for p in parts if p)


def _event_line(event: dict[str, Any]) -> str:
    kind = event.get("type") or "event"
    parts = [f"{kind}"]
    if kind == "llm":
        parts.append(f"{event.get('provider') or ''}:{event.get('model') or ''}")
        if event.get("input_tokens") is not None or event.get("output_tokens") is not None:
            parts.append(f"{event.get('input_tokens') or 0}→{event.get('output_tokens') or 0} "
                         "tokens")
        if event.get("cost"):
            parts.append(f"${event['cost']:.6f}")
    if event.get("function_name"):
        parts.append(event["function_name"])
    if event.get("description"):
        parts.append(_short(event["description"], 60))
    if event.get("result"):
        parts.append(f"→ {_short(event['result'], 40)}")
    if event.get("error"):
        parts.append(f"ERROR: {_short(event['error'], 60)}")
    return "  ".join(parts)


# -- commands -------------------------------------------------------------------------

def _sessions_list(args: argparse.Namespace) -> int:
    sessions = open_reader().list_sessions(agent_id=args.agent, status=args.status,
                                           search=args.search, limit=args.limit,
                                           offset=args.offset)
    print(json.dumps(sessions, indent=2, default=str) if args.json else render_list(sessions))
    return 0


def _sessions_show(args: argparse.Namespace) -> int:
    tree = open_reader().session_tree(args.session_id)
    if tree is None:
        print(f"lucidic: no session {args.session_id!r}", file=sys.stderr)
        return 1
    print(json.dumps(tree, indent=2, default=str) if args.json else render_tree(tree))
    return 0


def _providers(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from .plugins import describe

    infos = describe()
    if args.json:
        print(json.dumps([asdict(i) for i in infos], indent=2))
        return 0
    if not infos:
        print("no providers installed (pip install lucidic-openai, lucidic-anthropic, ...)")
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


def _open_accounts(args: argparse.Namespace) -> Any:
    from .store import Store, StoreError

    try:
        return Store(_database_url(args))
    except StoreError as exc:
        raise SystemExit(f"lucidic: {exc}") from exc


def _server(args: argparse.Namespace) -> int:
    try:
        from .server import run
    except ImportError as exc:
        raise SystemExit(f"lucidic: the server needs its extra: pip install 'lucidic[server]' "
                         f"({exc})") from exc
    from .store import StoreError

    try:
        run(_database_url(args), host=args.host, port=args.port,
            max_body_bytes=int(args.max_body_mb * 1024 * 1024), log_level=args.log_level)
    except StoreError as exc:
        raise SystemExit(f"lucidic: {exc}") from exc
    return 0


def _ui(args: argparse.Namespace) -> int:
    try:
        from .ui.app import run_ui
    except ImportError as exc:
        raise SystemExit("lucidic: `lucidic ui` needs the web UI's dependencies: "
                         f"pip install 'lucidic[server]' (missing: {exc.name})") from exc
    from .store import StoreError

    url = args.db or f"sqlite:///{_config.store_path()}"
    where = args.db or f"the embedded store at {_config.store_path()}"

    def announce(page: str) -> None:
        print(f"Lucidic UI for {where}", flush=True)
        print(f"  {page}", flush=True)
        print("Press Ctrl-C to stop.", flush=True)

    try:
        run_ui(url, host=args.host, port=args.port, allow_hosts=args.allow_host or (),
               announce=announce, log_level=args.log_level)
    except OSError as exc:
        raise SystemExit(f"lucidic: cannot listen on {args.host}:{args.port} "
                         f"({exc.strerror or exc}); choose another port with --port") from exc
    except StoreError as exc:
        raise SystemExit(f"lucidic: {exc}") from exc
    return 0


def _keys_create(args: argparse.Namespace) -> int:
    with closing(_open_accounts(args)) as store:
        info, key = store.create_api_key(args.project, args.label)
    print(f"project: {info['project']}")
    print(f"key id:  {info['id']} (for `lucidic keys revoke`)")
    print("the key, shown this once (only its hash is kept); set it as LUCIDIC_API_KEY:")
    print(key)
    return 0


def _keys_list(args: argparse.Namespace) -> int:
    with closing(_open_accounts(args)) as store:
        keys = store.list_api_keys(args.project)
    if args.json:
        print(json.dumps(keys, indent=2))
        return 0
    if not keys:
        print("no API keys (make one with `lucidic keys create --project NAME`)")
    for key in keys:
        state = f"revoked {_when(key['revoked_at'])}" if key["revoked_at"] else "active"
        label = f"  {key['label']!r}" if key.get("label") else ""
        print(f"{key['id']}  project={key['project']}  created {_when(key['created_at'])}  "
              f"{state}{label}")
    return 0


def _keys_revoke(args: argparse.Namespace) -> int:
    with closing(_open_accounts(args)) as store:
        found = store.revoke_api_key(args.key_id)
    if not found:
        print(f"lucidic: no API key with id {args.key_id!r} (see `lucidic keys list`)",
              file=sys.stderr)
        return 1
    print(f"revoked {args.key_id}: requests with it are refused from now on")
    return 0


def _add_server_commands(commands: Any) -> None:
    db_help = ("sqlite:///PATH or postgresql://USER@HOST/DB (default: LUCIDIC_DATABASE_URL, "
               "else the embedded store's file)")
    server = commands.add_parser("server", help="run the shared server (needs lucidic[server])")
    server.add_argument("--db", help=db_help)
    server.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (0.0.0.0 to serve other machines)")
    server.add_argument("--port", type=int, default=8765)
    server.add_argument("--max-body-mb", type=float, default=32.0,
                        help="largest request body accepted, in MiB")
    server.add_argument("--log-level", default="info",
                        choices=["critical", "error", "warning", "info", "debug"])
    server.set_defaults(handler=_server)

    ui = commands.add_parser("ui", help="open the sessions in a browser (needs lucidic[server])",
                             description="Serve the web UI over the embedded store on this "
                                         "machine: no server, no key. Runs until Ctrl-C.")
    ui.add_argument("--host", default="127.0.0.1",
                    help="address to listen on (default: 127.0.0.1, this machine only)")
    ui.add_argument("--port", type=int, default=8766, help="port (default: 8766; 0: any free)")
    ui.add_argument("--allow-host", action="append", metavar="NAME",
                    help="another host name the UI may be reached by (it answers only its "
                         "own address and loopback names otherwise)")
    ui.add_argument("--db", help="read this database instead of the embedded store")
    ui.add_argument("--log-level", default="warning",
                    choices=["critical", "error", "warning", "info", "debug"])
    ui.set_defaults(handler=_ui)

    keys = commands.add_parser("keys", help="the server's API keys")
    keys_commands = keys.add_subparsers(dest="keys_command", required=True)
    create = keys_commands.add_parser("create", help="make a key for a project (created if "
                                                     "need be); prints it once, last line")
    create.add_argument("--project", required=True)
    create.add_argument("--label", help="a note to tell keys apart")
    create.add_argument("--db", help=db_help)
    create.set_defaults(handler=_keys_create)
    listing = keys_commands.add_parser("list", help="keys (never the keys themselves)")
    listing.add_argument("--project")
    listing.add_argument("--db", help=db_help)
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(handler=_keys_list)
    revoke = keys_commands.add_parser("revoke", help="refuse a key from now on")
    revoke.add_argument("key_id")
    revoke.add_argument("--db", help=db_help)
    revoke.set_defaults(handler=_keys_revoke)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of at least 1, not {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lucidic", description="Read what Lucidic recorded.")
    commands = parser.add_subparsers(dest="command", required=True)

    sessions = commands.add_parser("sessions", help="list sessions or show one")
    sessions_commands = sessions.add_subparsers(dest="sessions_command", required=True)
    listing = sessions_commands.add_parser("list", help="sessions, newest first")
    listing.add_argument("--agent", help="only this agent's sessions")
    listing.add_argument("--status", choices=["running", "successful", "failed", "finished"],
                         help="running, or ended as successful, failed, or finished (ended "
                              "with no outcome)")
    listing.add_argument("--search", metavar="TEXT",
                         help="only sessions whose name, task, tags, steps or events (LLM "
                              "messages, models, errors) hold TEXT, in any case")
    listing.add_argument("--limit", type=_positive_int, default=50,
                         help="how many sessions to print (default: 50)")
    listing.add_argument("--offset", type=int, default=0)
    listing.add_argument("--json", action="store_true", help="print JSON")
    listing.set_defaults(handler=_sessions_list)
    show = sessions_commands.add_parser("show", help="a session's tree of steps and events")
    show.add_argument("session_id")
    show.add_argument("--json", action="store_true", help="print JSON")
    show.set_defaults(handler=_sessions_show)

    providers = commands.add_parser("providers", help="installed provider plugins")
    providers.add_argument("--json", action="store_true")
    providers.set_defaults(handler=_providers)
    _add_server_commands(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args))
    except BrokenPipeError:
        return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
