"""How the CLI shows sessions: what an agent did, and what it cost, at a
glance.

Everything is first laid out as lines of styled segments; ``plain()`` turns
them into text (for pipes and files, drawn with box characters) and
``rich_renderable()`` into a coloured ``rich`` tree for a terminal. Values are
shown as text, never as Python ``repr``; counts are pluralised; durations and
costs get the precision that suits them. ``with_iso_times()`` prepares the
JSON form. This module is the CLI's: ``import lucidic`` never loads it, and it
loads ``rich`` only when asked for a terminal rendering.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

#: (text, style); the style names are keys of STYLES.
Segment = tuple[str, str]
Line = list[Segment]

STYLES = {
    "": "", "title": "bold", "label": "dim", "dim": "dim", "id": "dim",
    "step": "bold cyan", "llm": "bold magenta", "event": "bold blue", "tool": "bold yellow",
    "error": "bold red", "failed": "red", "ok": "green", "running": "yellow",
    "model": "cyan", "cost": "green", "prompt": "", "answer": "",
}

_SHORT = 100  # characters of a prompt, an answer or an error shown by default
_TIME_FIELDS = ("started_at", "ended_at", "updated_at", "created_at", "revoked_at")


# -- values as text ------------------------------------------------------------------

def plural(n: int, word: str, words: str | None = None) -> str:
    return f"{n:,} {word if n == 1 else (words or word + 's')}"


def duration(seconds: float | None) -> str:
    """40 µs, 1.23 ms, 12.3 ms, 123 ms, 1.23 s, 2 min 5 s, 1 h 2 min; nothing
    when unknown (None, or negative: a span that ended before it started)."""
    if seconds is None or seconds < 0:
        return ""
    # Each unit up to where its rounding would show the next one (999.7 ms
    # reads as 1.00 s, not 1000 ms).
    if seconds < 0.000_999_5:
        return f"{_three_digits(seconds * 1e6)} µs"
    if seconds < 0.999_5:
        return f"{_three_digits(seconds * 1e3)} ms"
    if seconds < 59.95:
        return f"{_three_digits(seconds)} s"
    whole = round(seconds)
    if whole < 3600:
        return f"{whole // 60} min {whole % 60} s"
    minutes = round(seconds / 60)
    return f"{minutes // 60} h {minutes % 60} min"


def _three_digits(value: float) -> str:
    """Three significant digits, no exponent: 0.42, 4.2, 42.0, 420."""
    if value >= 99.95:
        return f"{value:.0f}"
    if value >= 9.995:
        return f"{value:.1f}"
    return f"{value:.2f}" if value >= 0.9995 else f"{value:.2g}"


def money(cost: float | None) -> str:
    """$1.50, $0.25, $0.0123, $0.000036: three significant digits below a dollar."""
    if cost is None:
        return ""
    if cost >= 1 or cost <= 0:
        return f"${cost:,.2f}"
    decimals = min(10, max(2, 2 - math.floor(math.log10(cost))))
    whole, _, fraction = f"{cost:.{decimals}f}".partition(".")
    fraction = fraction.rstrip("0").ljust(2, "0")
    return f"${whole}.{fraction}"


def when(ts: float | None) -> str:
    """Local time, to the second."""
    return datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S") if ts else ""


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=timezone.utc).isoformat()


def text(value: Any) -> str:
    """A value as a person reads it: strings as they are, structures as JSON."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (int, float)):
        return f"{value:g}" if isinstance(value, float) else str(value)
    return json.dumps(value, ensure_ascii=False, default=str)


#: What a terminal would obey rather than show: C0 and C1 controls (which
#: move the cursor, recolour, retitle or clear it; tab and newline excepted)
#: and the marks that reorder the text after them. Recorded text (a session
#: name, an LLM's answer) may hold any of them.
_INVISIBLE = {code: f"\\x{code:02x}" for code in (*range(0x20), *range(0x7f, 0xa0))
              if code not in (0x09, 0x0a)}
_INVISIBLE.update({code: f"\\u{code:04x}" for code in (
    0x061c, 0x200e, 0x200f, *range(0x202a, 0x202f), *range(0x2066, 0x206a))})


def visible(value: str) -> str:
    """Text safe to write to a terminal: what it would obey is shown as an
    escape instead (idempotent: an escape holds no control character)."""
    return value.translate(_INVISIBLE)


def short(value: Any, width: int = _SHORT) -> str:
    flat = " ".join(text(value).split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


# -- the layout ----------------------------------------------------------------------

@dataclass
class Node:
    label: Line
    details: list[Line] = field(default_factory=list)
    children: list[Node] = field(default_factory=list)


@dataclass
class Layout:
    header: list[Line]
    nodes: list[Node]


def _parts(*parts: Line) -> Line:
    """Join non-empty parts with two spaces."""
    out: Line = []
    for part in parts:
        if part and any(t for t, _ in part):
            if out:
                out.append(("  ", ""))
            out.extend(part)
    return out


def status(item: dict[str, Any]) -> Line:
    """The session's status in the four words the UI and ``--status`` use."""
    if not item.get("is_finished"):
        return [("running", "running")]
    outcome = item.get("is_successful")
    if outcome is None:
        return [("finished", "ok")]
    return [("successful", "ok") if outcome else ("failed", "failed")]


def totals(session: dict[str, Any]) -> Line:
    parts = [plural(session.get("step_count") or 0, "step"),
             plural(session.get("event_count") or 0, "event")]
    line: Line = [(", ".join(parts), "")]
    if session.get("error_count"):
        line += [(", ", ""), (plural(session["error_count"], "error"), "error")]
    tokens = _tokens(session, estimated=False)
    if tokens:
        line += [("  ·  ", "dim"), (tokens, "")]
    if session.get("total_cost"):
        line += [("  ·  ", "dim"), (money(session["total_cost"]), "cost")]
    # LLM calls left out of those sums: the totals are not all that was used
    for key, what in (("llm_calls_without_tokens", "no token counts"),
                      ("llm_calls_without_cost", "no cost")):
        if session.get(key):
            line += [("  ·  ", "dim"), (f"{what} for {plural(session[key], 'LLM call')}", "dim")]
    return line


def _tokens(item: dict[str, Any], *, estimated: bool) -> str:
    into, out = item.get("input_tokens"), item.get("output_tokens")
    if not into and not out:
        return ""
    mark = "~" if estimated else ""
    words = f"{mark}{into or 0:,} → {mark}{out or 0:,} tokens"
    extra = []
    if item.get("cached_tokens"):
        extra.append(f"{item['cached_tokens']:,} from cache")
    if item.get("cache_write_tokens"):
        extra.append(f"{item['cache_write_tokens']:,} written to cache")
    if item.get("reasoning_tokens"):
        extra.append(f"{item['reasoning_tokens']:,} reasoning")
    if estimated:
        extra.append("estimated")
    return words + (f" ({', '.join(extra)})" if extra else "")


def layout(session: dict[str, Any], *, full: bool = False) -> Layout:
    return Layout(_header(session, full), [_node(c, full) for c in _children(session)])


def _header(session: dict[str, Any], full: bool) -> list[Line]:
    lines: list[Line] = [[(session.get("name") or "unnamed session", "title")]]

    def row(label: str, value: Line) -> None:
        lines.append([("  " + label.ljust(9), "label"), *value])

    row("session", [(session["id"], "")])
    outcome = status(session)
    if session.get("is_successful_reason"):
        outcome = [*outcome, (": " + text(session["is_successful_reason"]), "")]
    row("status", outcome)
    for label, key in (("agent", "agent_id"), ("task", "task")):
        if session.get(key):
            row(label, [(text(session[key]), "")])
    if session.get("tags"):
        row("tags", [(", ".join(text(t) for t in session["tags"]), "")])
    started = [(when(session.get("started_at")), "")]
    if session.get("is_finished") and session.get("ended_at") and session.get("started_at") \
            and session["ended_at"] >= session["started_at"]:  # (else how long is unknown)
        started.append((", took " + duration(session["ended_at"] - session["started_at"]), ""))
    row("started", started)
    if session.get("session_eval") is not None or session.get("session_eval_reason"):
        value = text(session.get("session_eval"))
        reason = text(session.get("session_eval_reason"))
        row("eval", [(value + (": " if value and reason else "") + reason, "")])
    row("totals", totals(session))
    for label, line in _judgement_rows(session):
        row(label, line)
    if full:
        shown = {"id", "name", "is_successful_reason", "agent_id", "task", "tags",
                 "session_eval", "session_eval_reason", "steps", "events", "scores",
                 "score_details", "rubric_results", "evaluations", "evaluates",
                 "experiment_id", "case_id", "repeat", "mass_sim_id", "rubrics"}
        lines.extend(_fields(session, shown, indent="  "))
    return lines


def score_text(value: Any) -> str:
    """A score's value: pass/fail, a number, or the label."""
    if isinstance(value, bool):
        return "pass" if value else "fail"
    return text(value)


def _judgement_rows(session: dict[str, Any]) -> list[tuple[str, Line]]:
    """What says where a session belongs (its experiment run, mass
    simulation, rubrics) and what was said about it (scores, evaluations)."""
    rows: list[tuple[str, Line]] = []
    if session.get("experiment_id"):
        run = f"experiment {session['experiment_id']}"
        if session.get("case_id") is not None:
            run += f", case {session['case_id']}, repeat {session.get('repeat') or 0}"
        rows.append(("run", [(run, "")]))
    if session.get("mass_sim_id"):
        rows.append(("mass sim", [(session["mass_sim_id"], "")]))
    if session.get("rubrics"):
        rows.append(("rubrics", [(", ".join(text(r) for r in session["rubrics"]), "")]))
    if session.get("error"):
        rows.append(("error", [(short(session["error"]), "failed")]))
    scores = session.get("scores") or {}
    if scores:
        rows.append(("scores", [("  ".join(f"{name} {score_text(value)}"
                                           for name, value in scores.items()), "")]))
    failed = [e for e in session.get("evaluations") or () if e.get("status") == "failed"]
    for evaluation in failed:
        rows.append(("eval err", [(f"{evaluation['name']}: {short(evaluation.get('error'))}",
                                   "failed")]))
    for judged in session.get("evaluates") or ():
        rows.append(("judges", [(f"{judged['name']} of session {judged['session_id']}", "")]))
    return rows


def _children(node: dict[str, Any]) -> list[dict[str, Any]]:
    items = [("step", s) for s in node.get("steps", [])] + \
            [("event", e) for e in node.get("events", [])]
    items.sort(key=lambda kv: (kv[1].get("started_at") or 0, kv[1]["id"]))
    return [{"kind": kind, **item} for kind, item in items]


def _node(item: dict[str, Any], full: bool) -> Node:
    if item["kind"] == "step":
        node = Node(_step_label(item), children=[_node(c, full) for c in _children(item)])
        shown = {"kind", "steps", "events"}
    elif item.get("type") == "llm":
        node = Node(_llm_label(item), _llm_details(item, full))
        shown = {"kind", "input", "output"}
    else:
        node = Node(_event_label(item))
        shown = {"kind"}
    if full:
        node.details.extend(_fields(item, shown, indent=""))
    return node


def arrivals(session: dict[str, Any], seen: set[str]) -> list[Line]:
    """One line for each step and event of the session tree whose id is not in
    ``seen`` (then added to it), in tree order and indented by depth: what
    ``sessions show --follow`` prints as a session grows."""
    lines: list[Line] = []

    def walk(node: dict[str, Any], depth: int) -> None:
        for child in _children(node):
            if child["id"] not in seen:
                seen.add(child["id"])
                label = _node(child, full=False).label
                lines.append([("  " * depth + "+ ", "dim"), *label])
            if child["kind"] == "step":
                walk(child, depth + 1)

    walk(session, 0)
    return lines


def _elapsed(item: dict[str, Any]) -> Line:
    if item.get("never_ended"):
        return [("did not end", "failed")]
    if not item.get("is_finished") and item.get("ended_at") is None:
        return [("running", "running")]
    seconds = item.get("duration")
    if seconds is None and item.get("ended_at") is not None \
            and item.get("started_at") is not None:
        seconds = item["ended_at"] - item["started_at"]
    return [(duration(seconds), "dim")] if seconds else []


def _failure(item: dict[str, Any]) -> Line:
    return [("FAILED ", "error"), (short(item["error"]), "failed")] if item.get("error") else []


def _step_label(step: dict[str, Any]) -> Line:
    name = step.get("action") or step.get("state") or step.get("function_name") or "step"
    extra: Line = []
    for key in ("state", "goal"):
        value = step.get(key)
        if value and value != name:
            extra += [(f"{key}: ", "label"), (short(value, 60), ""), ("  ", "")]
    if step.get("eval_score") is not None or step.get("eval_description"):
        extra += [("eval: ", "label"),
                  (" ".join(x for x in (text(step.get("eval_score")),
                                         short(step.get("eval_description"), 60)) if x), ""),
                  ("  ", "")]
    return _parts([("step ", "step"), (name, "title")], _elapsed(step), extra[:-1],
                  _failure(step))


def _llm_label(event: dict[str, Any]) -> Line:
    who = [("llm ", "llm"), (f"{event.get('provider') or ''} ".lstrip(), "")]
    if event.get("model"):
        who.append((event["model"], "model"))
    else:  # a call that failed never heard which model answered
        who += [(event.get("request_model") or "?", "model"), (" (requested)", "dim")]
    timing = _elapsed(event)
    if event.get("time_to_first_token") is not None and timing:
        timing = [*timing, (f" (first token {duration(event['time_to_first_token'])})", "dim")]
    cost = [(money(event["cost"]), "cost")] if event.get("cost") else []
    failed: Line = [("FAILED", "error")] if event.get("error") else []
    replayed: Line = [("replayed", "dim")] if event.get("replayed_from") else []
    return _parts(who, timing, [(_tokens(event, estimated=bool(event.get("tokens_estimated"))),
                                 "")], cost, replayed, failed,
                  [(text(event["result"]), "dim")] if event.get("result") else [])


def _event_label(event: dict[str, Any]) -> Line:
    kind = event.get("type") or "generic"
    head: Line = [("event" if kind == "generic" else kind,
                   {"tool": "tool", "error": "error"}.get(kind, "event"))]
    call = event.get("function_name")
    if call:
        arguments = event.get("arguments")
        head += [(" " + call, "title"),
                 (f"({short(_call_arguments(arguments), 60)})" if arguments is not None else "",
                  "dim")]
    if event.get("description") and event.get("description") != call:
        head += [(" " + short(event["description"], 80), "")]
    result: Line = [("→ ", "dim"), (short(event["result"], 60), "")] \
        if event.get("result") not in (None, "") else []
    model = [("model ", "label"), (text(event["model"]), "model")] if event.get("model") else []
    cost = [(money(event["cost"]), "cost")] if event.get("cost") else []
    seconds = event.get("duration")
    elapsed: Line = [(duration(seconds), "dim")] if seconds else []
    return _parts(head, result, elapsed, model, cost, _failure(event))


def _call_arguments(arguments: Any) -> str:
    if isinstance(arguments, dict):
        return ", ".join(f"{k}={short(v, 30) if isinstance(v, str) else text(v)}"
                         for k, v in arguments.items())
    if isinstance(arguments, list):
        return ", ".join(short(a, 30) for a in arguments)
    return text(arguments)


# -- messages ------------------------------------------------------------------------

def _content(value: Any) -> str:
    """A message's content as text: strings, text parts, and a word for the rest."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        parts = []
        for part in value:
            if isinstance(part, str):
                parts.append(part)
            elif isinstance(part, dict):
                kind = part.get("type")
                if isinstance(part.get("text"), str):
                    parts.append(part["text"])
                elif kind == "tool_result" or kind == "function_call_output":
                    parts.append(_content(part.get("content", part.get("output"))))
                elif kind == "tool_use":
                    parts.append(f"[calls {part.get('name')}({text(part.get('input'))})]")
                elif kind:
                    parts.append(f"[{kind}]")
        return " ".join(p for p in parts if p)
    return text(value)


def _message(message: Any) -> tuple[str, str]:
    """(role, text) of one input or output message, in any provider's shape."""
    if not isinstance(message, dict):
        return "", text(message)
    role = text(message.get("role") or message.get("type") or "")
    words = _content(message.get("content"))
    calls = [c for c in message.get("tool_calls") or [] if isinstance(c, dict)]
    if calls:
        words = (words + " " if words else "") + f"[calls {', '.join(map(_call, calls))}]"
    if not words and message.get("refusal"):
        words = f"[refused: {text(message['refusal'])}]"
    if not words and "embeddings" in message:
        words = (f"{plural(message['embeddings'] or 0, 'embedding')} of "
                 f"{message.get('dimensions')} dimensions")
    return role, words


def _call(call: dict[str, Any]) -> str:
    """name(arguments) of a tool call, flat or in OpenAI's {"function": {...}}."""
    nested = call.get("function")
    function: dict[str, Any] = nested if isinstance(nested, dict) else call
    return f"{text(function.get('name'))}({text(function.get('arguments'))})"


def _messages(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, list) else [value]


def _llm_details(event: dict[str, Any], full: bool) -> list[Line]:
    inputs, outputs = _messages(event.get("input")), _messages(event.get("output"))
    lines: list[Line] = []
    if not full:
        if inputs:
            role, words = _message(inputs[-1])
            lines.append([("› ", "dim"), (f"{role}: " if role else "", "label"),
                          (short(words), "prompt")])
        for output in outputs:
            role, words = _message(output)
            if words:
                lines.append([("‹ ", "dim"), (f"{role}: " if role else "", "label"),
                              (short(words), "answer")])
        if event.get("error"):
            lines.append([("✗ ", "error"), (short(event["error"]), "failed")])
        return lines
    for title, messages in (("input", inputs), ("output", outputs)):
        if messages:
            lines.append([(title, "label")])
            for message in messages:
                role, words = _message(message)
                lines.extend(_block(f"  {role}: " if role else "  ", words))
            if any(isinstance(m, dict) and m.get(k) for m in messages
                   for k in ("thinking", "reasoning")):
                for message in messages:
                    for key in ("thinking", "reasoning"):
                        if isinstance(message, dict) and message.get(key):
                            lines.extend(_block(f"  {key}: ", text(message[key])))
    return lines


def _block(lead: str, value: str) -> list[Line]:
    """A label and a possibly multi-line text, continuation lines indented."""
    rows = value.splitlines() or [""]
    pad = " " * len(lead)
    return [[(lead if i == 0 else pad, "label"), (row, "")] for i, row in enumerate(rows)]


def _fields(item: dict[str, Any], shown: set[str], indent: str) -> list[Line]:
    """--full: every other field that holds something, untruncated."""
    lines: list[Line] = []
    for key, value in item.items():
        if key in shown or value in (None, "", [], {}) or key.endswith("_iso"):
            continue
        if key in _TIME_FIELDS:
            rendered = f"{when(value)} ({iso(value)})"
        elif key in ("duration", "time_to_first_token"):
            rendered = duration(value)
        elif key in ("cost", "total_cost"):
            rendered = money(value)
        elif isinstance(value, (dict, list)):
            rendered = json.dumps(value, ensure_ascii=False, indent=2, default=str)
        else:
            rendered = text(value)
        lines.extend(_block(f"{indent}{key}: ", rendered))
    return lines


# -- output --------------------------------------------------------------------------

def plain_lines(line: Line) -> str:
    return visible("".join(t for t, _ in line))


def plain(tree: Layout) -> str:
    out = [plain_lines(line) for line in tree.header]
    if not tree.nodes:
        out.append("  (nothing recorded in it yet)")
    _plain_nodes(tree.nodes, "", out)
    return "\n".join(out)


def _plain_nodes(nodes: list[Node], prefix: str, out: list[str]) -> None:
    for index, node in enumerate(nodes):
        last = index == len(nodes) - 1
        out.append(prefix + ("└─ " if last else "├─ ") + plain_lines(node.label))
        inner = prefix + ("   " if last else "│  ")
        for detail in node.details:
            out.append((inner + ("│  " if node.children else "   ") + plain_lines(detail))
                       .rstrip())
        _plain_nodes(node.children, inner, out)


def rich_text(lines: Iterable[Line]) -> Any:
    from rich.text import Text

    result = Text()
    for number, line in enumerate(lines):
        if number:
            result.append("\n")
        for chunk, style in line:
            result.append(visible(chunk), style=STYLES.get(style, ""))
    return result


def rich_renderable(tree: Layout) -> Any:
    """The layout as a rich tree whose root is the session's header."""
    from rich.tree import Tree

    header = list(tree.header)
    if not tree.nodes:
        header.append([("  (nothing recorded in it yet)", "dim")])
    root = Tree(rich_text(header), guide_style="dim")

    def add(parent: Any, node: Node) -> None:
        branch = parent.add(rich_text([node.label, *node.details]))
        for child in node.children:
            add(branch, child)

    for node in tree.nodes:
        add(root, node)
    return root


def json_document(value: Any) -> str:
    """Rows as ``--json`` prints them: epoch seconds with ISO 8601 beside them."""
    return json.dumps(with_iso_times(value), indent=2, ensure_ascii=False, default=str)


def print_json(value: Any) -> None:
    """What every command's ``--json`` prints."""
    print(json_document(value))


def with_iso_times(value: Any) -> Any:
    """A copy of a JSON value with ``<field>_iso`` (ISO 8601, UTC) beside
    every epoch time field, at every level."""
    if isinstance(value, list):
        return [with_iso_times(v) for v in value]
    if not isinstance(value, dict):
        return value
    out: dict[str, Any] = {}
    for key, item in value.items():
        out[key] = with_iso_times(item)
        if key in _TIME_FIELDS and isinstance(item, (int, float)) \
                and not isinstance(item, bool):
            out[key + "_iso"] = iso(item)
    return out


# -- sessions list --------------------------------------------------------------------

def session_row(session: dict[str, Any]) -> Line:
    name = [(session["name"], "title")] if session.get("name") else []
    agent = [("agent ", "label"), (text(session["agent_id"]), "")] \
        if session.get("agent_id") else []
    return _parts([(session["id"], "id")], name, agent, [(when(session.get("started_at")), "")],
                  status(session), [("(", "dim"), *totals(session), (")", "dim")])
