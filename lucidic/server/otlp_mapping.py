"""OTLP spans as Lucidic steps and events, following what Phoenix and
Langfuse accept, so that existing instrumentation (the OpenTelemetry GenAI
semantic conventions, OpenLLMetry, OpenInference) works as it is.

- A span is a step, nested under its parent span's step; an LLM span
  (``gen_ai.operation.name`` chat / text_completion / generate_content /
  embeddings, ``openinference.span.kind`` LLM or EMBEDDING, OpenLLMetry's
  ``llm.request.type``) is an ``llm`` event and a tool span (``execute_tool``,
  ``openinference.span.kind`` TOOL) a ``tool`` event, each in the step of its
  nearest step ancestor.
- The session is named by ``session.id``, ``gen_ai.conversation.id`` or
  ``langfuse.session.id`` on any span of the trace (or its resource).
- Langfuse's SDKs (v3 and newer) say what a span is in
  ``langfuse.observation.type``: a generation or embedding is an ``llm``
  event, a tool a ``tool`` event, an event a ``generic`` event, and the rest
  (span, agent, chain, retriever, evaluator, guardrail) steps; their input,
  output, model, usage and cost details are read from ``langfuse.observation.*``,
  and the trace's name, tags, user and metadata (``langfuse.trace.*``,
  ``user.id``) go to the session (``session_fields``).
- Error status, exception events and Langfuse's level ERROR become the row's
  ``error``.
- Every attribute not turned into a column is kept in ``attributes``, with
  the span's own facts under ``otel.*``.

Everything here is a function of one span: the order spans arrive in is
dealt with by ``otlp_ingest``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span as PbSpan

from .. import pricing
from .._numbers import bounded_cost
from ..limits import MAX_TEXT_CHARS
from .models import valid_id

SESSION_KEYS = ("session.id", "gen_ai.conversation.id", "langfuse.session.id")
_LLM_OPERATIONS = frozenset({"chat", "text_completion", "generate_content", "embeddings"})
_OI_KINDS = {"LLM": "llm", "EMBEDDING": "llm", "TOOL": "tool"}
_MAX_VALUE_DEPTH = 32
_SPAN_KINDS = {0: "UNSPECIFIED", 1: "INTERNAL", 2: "SERVER", 3: "CLIENT", 4: "PRODUCER",
               5: "CONSUMER"}
# Langfuse's SDKs (v3 and newer): langfuse._client.attributes.LangfuseOtelSpanAttributes.
LF_TYPE = "langfuse.observation.type"
LF_INPUT = "langfuse.observation.input"
LF_OUTPUT = "langfuse.observation.output"
LF_LEVEL = "langfuse.observation.level"
LF_STATUS_MESSAGE = "langfuse.observation.status_message"
LF_MODEL = "langfuse.observation.model.name"
LF_USAGE = "langfuse.observation.usage_details"
LF_COST = "langfuse.observation.cost_details"
LF_COMPLETION_START = "langfuse.observation.completion_start_time"
LF_TRACE_NAME = "langfuse.trace.name"
LF_TRACE_TAGS = "langfuse.trace.tags"
LF_TRACE_METADATA = "langfuse.trace.metadata"
#: What each Langfuse observation type becomes (the others are steps).
_LF_ROLES = {"generation": "llm", "embedding": "llm", "tool": "tool", "event": "event"}


class SpanRefusedError(ValueError):
    """A span that cannot be stored as it is (the reason is the message)."""


@dataclass
class SpanIn:
    """One decoded span with what it belongs to."""

    trace_id: str
    span_id: str
    parent_id: str | None
    name: str
    kind: int
    start: float | None
    end: float | None
    attributes: dict[str, Any]
    resource: dict[str, Any]
    scope: dict[str, Any]
    status_code: int
    status_message: str
    events: list[dict[str, Any]] = field(default_factory=list)
    links: list[dict[str, Any]] = field(default_factory=list)

    @property
    def role(self) -> str:
        """``step``, ``llm``, ``tool`` or ``event``: what this span becomes."""
        return classify(self.attributes)

    def session_name(self) -> str | None:
        """The session this span names, if any (its own attributes first)."""
        for source in (self.attributes, self.resource):
            for key in SESSION_KEYS:
                value = source.get(key)
                if value is not None and value != "":
                    return str(value)
        return None


def classify(attributes: dict[str, Any]) -> str:
    operation = attributes.get("gen_ai.operation.name")
    oi_kind = attributes.get("openinference.span.kind")
    if isinstance(oi_kind, str) and oi_kind.upper() in _OI_KINDS:
        return _OI_KINDS[oi_kind.upper()]
    if not isinstance(operation, str):
        operation = None if operation is None else ""  # a list, say: names no operation
    if operation in _LLM_OPERATIONS:
        return "llm"
    if operation == "execute_tool":
        return "tool"
    if operation is None and attributes.get("llm.request.type") in ("chat", "completion"):
        return "llm"  # OpenLLMetry before the GenAI conventions settled
    langfuse_type = attributes.get(LF_TYPE)
    if isinstance(langfuse_type, str) and langfuse_type in _LF_ROLES:
        return _LF_ROLES[langfuse_type]
    return "step"


# -- decoding ---------------------------------------------------------------------------

def _value(value: AnyValue, depth: int = 0) -> Any:
    which = value.WhichOneof("value")
    if which == "string_value":
        if len(value.string_value) > MAX_TEXT_CHARS:
            raise SpanRefusedError(f"an attribute value is longer than {MAX_TEXT_CHARS} characters")
        return value.string_value
    if which in ("bool_value", "int_value"):
        return getattr(value, which)
    if which == "double_value":
        number = value.double_value
        return number if math.isfinite(number) else str(number)
    if which == "bytes_value":
        if len(value.bytes_value) > MAX_TEXT_CHARS // 2:
            raise SpanRefusedError(f"an attribute value is longer than {MAX_TEXT_CHARS // 2} bytes")
        return value.bytes_value.hex()
    if depth >= _MAX_VALUE_DEPTH:
        raise SpanRefusedError(f"an attribute value is nested more than {_MAX_VALUE_DEPTH} levels")
    if which == "array_value":
        return [_value(v, depth + 1) for v in value.array_value.values]
    if which == "kvlist_value":
        return decode_attributes(value.kvlist_value.values, depth + 1)
    return None


def decode_attributes(pairs: Any, depth: int = 0) -> dict[str, Any]:
    out: dict[str, Any] = {}
    item: KeyValue
    for item in pairs:
        if len(item.key) > 4096:
            raise SpanRefusedError("an attribute key is longer than 4096 characters")
        out[item.key] = _value(item.value, depth)
    return out


def _seconds(nanos: int) -> float | None:
    return nanos / 1e9 if nanos > 0 else None


def _hex_id(raw: bytes, size: int, what: str, *, optional: bool = False) -> str | None:
    if optional and not raw:
        return None
    if len(raw) != size or not any(raw):
        raise SpanRefusedError(f"its {what} is not {size} bytes, not all zero")
    return raw.hex()


def decode_span(span: PbSpan, resource: dict[str, Any], scope: dict[str, Any]) -> SpanIn:
    """One protobuf span, checked; SpanRefusedError says why it cannot be stored."""
    trace_id = _hex_id(span.trace_id, 16, "trace id")
    span_id = _hex_id(span.span_id, 8, "span id")
    assert trace_id is not None and span_id is not None
    parent = _hex_id(span.parent_span_id, 8, "parent span id", optional=True)
    if len(span.name) > 4096:
        raise SpanRefusedError("its name is longer than 4096 characters")
    events = [{"name": e.name, "time": _seconds(e.time_unix_nano),
               "attributes": decode_attributes(e.attributes)} for e in span.events]
    links = [{"trace_id": link.trace_id.hex(), "span_id": link.span_id.hex(),
              "attributes": decode_attributes(link.attributes)} for link in span.links]
    decoded = SpanIn(trace_id=trace_id, span_id=span_id, parent_id=parent, name=span.name,
                     kind=int(span.kind), start=_seconds(span.start_time_unix_nano),
                     end=_seconds(span.end_time_unix_nano),
                     attributes=decode_attributes(span.attributes), resource=resource, scope=scope,
                     status_code=int(span.status.code), status_message=span.status.message,
                     events=events, links=links)
    named = decoded.session_name()
    if named is not None and not valid_id(named):
        raise SpanRefusedError(f"the session id it names, {named[:80]!r}, is not 1 to 256 "
                               "printable characters")
    return decoded


# -- fields -----------------------------------------------------------------------------

def _json(value: Any) -> Any:
    """A JSON-looking string as what it encodes, else the value itself."""
    if isinstance(value, str) and value[:1] in ("[", "{"):
        try:
            return json.loads(value)
        except (ValueError, RecursionError):  # (nested deeper than the parser goes)
            return value
    return value


def _unflatten(attributes: dict[str, Any], prefix: str, used: set[str]) -> list[Any]:
    """``prefix.0.a.b = v`` style keys as a list of nested dicts (OpenLLMetry's
    ``gen_ai.prompt.N.*``, OpenInference's ``llm.input_messages.N.*``)."""
    root: dict[str, Any] = {}
    start = prefix + "."
    for key, value in attributes.items():
        if not key.startswith(start):
            continue
        parts = key[len(start):].split(".")
        if not _is_index(parts[0]):
            continue
        used.add(key)
        node = root
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                break
        else:
            node[parts[-1]] = value
    return _listify(root) if root else []


def _is_index(part: str) -> bool:
    """A flattened key's list index: ASCII digits only (str.isdigit takes
    '²' too, which int() cannot read)."""
    return part.isascii() and part.isdigit()


def _listify(node: Any) -> Any:
    if not isinstance(node, dict):
        return node
    items = {k: _listify(v) for k, v in node.items()}
    if items and all(_is_index(k) for k in items):
        return [items[k] for k in sorted(items, key=int)]
    return items


def _clean(message: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in message.items() if v not in (None, [], "", {})}


def _tool_call(call: Any) -> Any:
    """One tool call as {id, name, arguments}; one given in another shape
    (text, say) is kept as it is."""
    if not isinstance(call, dict):
        return _json(call)
    inner = call.get("tool_call", call)
    if not isinstance(inner, dict):
        return _json(inner)
    function = inner.get("function")
    named = function if isinstance(function, str) else None  # the function's name alone
    function = function if isinstance(function, dict) else {}
    return _clean({"id": inner.get("id"),
                   "name": inner.get("name") or function.get("name") or named,
                   "arguments": _json(inner.get("arguments", function.get("arguments")))})


def _tool_calls(calls: Any) -> Any:
    """A message's tool calls: a list of them, or what was given instead
    (text, or a JSON text of the list, say) as it is."""
    calls = _json(calls)
    return [_tool_call(c) for c in calls] if isinstance(calls, list) else calls


def _from_indexed(message: Any) -> Any:
    """One OpenLLMetry or OpenInference indexed message as {role, content, ...}."""
    if not isinstance(message, dict):
        return message
    inner = message.get("message", message)
    if not isinstance(inner, dict):
        return inner
    content = inner.get("content")
    contents = inner.get("contents")
    if content is None and isinstance(contents, list):
        texts = [c.get("message_content", c).get("text") for c in contents
                 if isinstance(c, dict) and isinstance(c.get("message_content", c), dict)]
        content = "\n".join(t for t in texts if isinstance(t, str)) or contents
    return _clean({"role": inner.get("role"), "content": _json(content),
                   "tool_calls": _tool_calls(inner.get("tool_calls")),
                   "tool_call_id": inner.get("tool_call_id"), "name": inner.get("name"),
                   "finish_reason": inner.get("finish_reason")})


def _from_parts(message: Any) -> Any:
    """One GenAI-conventions message ({role, parts: [...]}) as {role, content, ...}."""
    if not isinstance(message, dict) or not isinstance(message.get("parts"), list):
        return message
    texts, calls, thinking, others = [], [], [], []
    out: dict[str, Any] = {"role": message.get("role")}
    for part in message["parts"]:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            texts.append(part.get("content"))
        elif kind == "tool_call":
            calls.append(_clean({"id": part.get("id"), "name": part.get("name"),
                                 "arguments": _json(part.get("arguments"))}))
        elif kind == "tool_call_response":
            out["tool_call_id"] = part.get("id")
            texts.append(part.get("response") if isinstance(part.get("response"), str)
                         else json.dumps(part.get("response"), default=str))
        elif kind == "reasoning":
            thinking.append(part.get("content"))
        else:
            others.append(part)
    strings = [t for t in texts if isinstance(t, str)]
    out.update(content="\n".join(strings) if strings else None, tool_calls=calls,
               thinking="\n".join(t for t in thinking if isinstance(t, str)) or None,
               parts=others, name=message.get("name"),
               finish_reason=message.get("finish_reason"))
    return _clean(out)


def _messages(attributes: dict[str, Any], used: set[str]) -> tuple[Any, Any]:
    """(input, output) messages from whichever convention the span uses."""
    def take(key: str) -> Any:
        used.add(key)
        return attributes.get(key)

    if "gen_ai.input.messages" in attributes or "gen_ai.output.messages" in attributes:
        given = _json(take("gen_ai.input.messages"))
        inputs = [_from_parts(m) for m in given] if isinstance(given, list) else given
        system = _json(take("gen_ai.system_instructions"))
        if system is not None:
            text = (system if isinstance(system, str)
                    else _from_parts({"role": "system", "parts": system}).get("content", system)
                    if isinstance(system, list) else system)
            given_inputs = inputs if isinstance(inputs, list) else [] if inputs is None \
                else [inputs]
            inputs = [{"role": "system", "content": text}, *given_inputs]
        produced = _json(take("gen_ai.output.messages"))
        outputs = [_from_parts(m) for m in produced] if isinstance(produced, list) else produced
        return inputs, _one_or_many(outputs)
    for prompt, completion in (("gen_ai.prompt", "gen_ai.completion"),
                               ("llm.input_messages", "llm.output_messages")):
        inputs = [_from_indexed(m) for m in _unflatten(attributes, prompt, used)]
        outputs = [_from_indexed(m) for m in _unflatten(attributes, completion, used)]
        if inputs or outputs:
            return inputs or None, _one_or_many(outputs)
    if "input.value" in attributes or "output.value" in attributes:
        return _json(take("input.value")), _json(take("output.value"))
    if LF_INPUT in attributes or LF_OUTPUT in attributes:
        return _json(take(LF_INPUT)), _json(take(LF_OUTPUT))
    return None, None


def _one_or_many(messages: Any) -> Any:
    if isinstance(messages, list):
        if not messages:
            return None
        return messages[0] if len(messages) == 1 else messages
    return messages


def _first(attributes: dict[str, Any], used: set[str], *keys: str) -> Any:
    for key in keys:
        value = attributes.get(key)
        if value is not None and value != "":
            used.update(k for k in keys if k in attributes)
            return value
    return None


def _int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            return None
    if isinstance(value, float) and math.isfinite(value):
        value = int(value)
    return value if isinstance(value, int) and 0 <= value < 2**62 else None


def _float(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def _error(span: SpanIn) -> str | None:
    for event in span.events:
        if event["name"] == "exception":
            attrs = event["attributes"]
            kind, message = attrs.get("exception.type"), attrs.get("exception.message")
            text = ": ".join(str(p) for p in (kind, message) if p)
            if text:
                return text
    if span.status_code == 2:  # STATUS_CODE_ERROR
        return span.status_message or "error"
    if span.attributes.get(LF_LEVEL) == "ERROR":
        message = span.attributes.get(LF_STATUS_MESSAGE)
        return str(message) if message not in (None, "") else "error"
    return None


def _kept(span: SpanIn, used: set[str]) -> dict[str, Any]:
    kept = {k: v for k, v in span.attributes.items() if k not in used}
    if LF_TYPE in span.attributes:  # a Langfuse observation: its JSON texts decoded
        kept.update((k, _langfuse_value(k, v)) for k, v in kept.items()
                    if k.startswith("langfuse."))
    kept.update({"otel.trace_id": span.trace_id, "otel.span_id": span.span_id,
                 "otel.span_kind": _SPAN_KINDS.get(span.kind, str(span.kind))})
    if span.parent_id:
        kept["otel.parent_span_id"] = span.parent_id
    if span.status_code:
        kept["otel.status_code"] = "OK" if span.status_code == 1 else "ERROR"
    if span.status_message:
        kept["otel.status_message"] = span.status_message
    if span.events:
        kept["otel.events"] = span.events
    if span.links:
        kept["otel.links"] = span.links
    if span.scope:
        kept["otel.scope"] = span.scope
    if span.resource:
        kept["otel.resource"] = span.resource
    return kept


_LF_METADATA = ("langfuse.observation.metadata", LF_TRACE_METADATA)


def _langfuse_value(key: str, value: Any) -> Any:
    """A Langfuse attribute's value as what it encodes: metadata values are
    JSON texts (strings included), and input, output, model parameters,
    usage and cost details JSON texts when they are not plain text."""
    if key.startswith(_LF_METADATA) and isinstance(value, str):
        try:
            return json.loads(value)
        except (ValueError, RecursionError):
            return value
    return _json(value)


def _times(span: SpanIn) -> dict[str, Any]:
    fields: dict[str, Any] = {"started_at": span.start, "ended_at": span.end,
                              "is_finished": True}
    return fields


def span_duration(span: SpanIn) -> float | None:
    """How long a span took, in seconds; unknown (None) without both times,
    or when it ends before it starts (a client's clock stepped back): a
    duration runs forwards, as the records API and the lucidicai routes
    refuse a negative one (422) and the SDK records one as unknown. A span
    is not refused alone for it, which would lose it to its request."""
    if span.start is None or span.end is None or span.end < span.start:
        return None
    return span.end - span.start


def step_fields(span: SpanIn) -> dict[str, Any]:
    """A step span's columns (but session and parent, which ingest decides)."""
    used: set[str] = set()
    function = _first(span.attributes, used, "code.function.name", "code.function")
    return {"action": span.name or None, "function_name": function, "error": _error(span),
            **_times(span), "attributes": _kept(span, used)}


def llm_fields(span: SpanIn) -> dict[str, Any]:
    """An LLM span's event columns (but session and step)."""
    attrs = span.attributes
    used = {"gen_ai.operation.name", "openinference.span.kind", "llm.request.type"}
    provider = _first(attrs, used, "gen_ai.provider.name", "gen_ai.system", "llm.provider",
                      "llm.system")
    provider = str(provider).lower() if provider is not None else None
    invocation = _json(attrs.get("llm.invocation_parameters"))
    request_model = _first(attrs, used, "gen_ai.request.model", "llm.request.model")
    if request_model is None and isinstance(invocation, dict):
        request_model = invocation.get("model")
    model = _first(attrs, used, "gen_ai.response.model", "llm.response.model",
                   "llm.model_name", LF_MODEL) or request_model
    inputs, outputs = _messages(attrs, used)
    input_tokens = _int(_first(attrs, used, "gen_ai.usage.input_tokens",
                               "gen_ai.usage.prompt_tokens", "llm.token_count.prompt"))
    output_tokens = _int(_first(attrs, used, "gen_ai.usage.output_tokens",
                                "gen_ai.usage.completion_tokens", "llm.token_count.completion"))
    cached = _int(_first(attrs, used, "gen_ai.usage.cache_read.input_tokens",
                         "gen_ai.usage.cache_read_input_tokens",
                         "llm.token_count.prompt_details.cache_read"))
    reasoning = _int(_first(attrs, used, "gen_ai.usage.reasoning.output_tokens",
                            "gen_ai.usage.reasoning_tokens",
                            "llm.token_count.completion_details.reasoning"))
    cache_write = None
    if input_tokens is None and output_tokens is None and LF_USAGE in attrs:
        used.add(LF_USAGE)
        usage = langfuse_usage(_json(attrs[LF_USAGE]))
        input_tokens, output_tokens = usage.get("input"), usage.get("output")
        cached = cached if cached is not None else usage.get("cached")
        reasoning = reasoning if reasoning is not None else usage.get("reasoning")
        cache_write = usage.get("cache_write")
    cost = _float(_first(attrs, used, "gen_ai.usage.cost", "llm.cost.total"))
    if cost is None and LF_COST in attrs:
        used.add(LF_COST)
        cost = langfuse_cost(_json(attrs[LF_COST]))
    if cost is not None:
        cost = bounded_cost(cost)  # beyond it, as tokens beyond their range: the price table's
    if cost is None:
        cost = pricing.cost_of(provider, str(model) if model is not None else None,
                               input_tokens, output_tokens, cached, cache_write)
    duration = span_duration(span)
    fields = {"type": "llm", "description": span.name or None, "provider": provider,
              "model": None if model is None else str(model),
              "request_model": None if request_model is None else str(request_model),
              "input": inputs, "output": outputs, "input_tokens": input_tokens,
              "output_tokens": output_tokens, "cached_tokens": cached,
              "reasoning_tokens": reasoning, "cost": cost, "duration": duration,
              "error": _error(span), **_times(span), "attributes": _kept(span, used)}
    if cache_write is not None:
        fields["cache_write_tokens"] = cache_write
    if LF_COMPLETION_START in attrs and duration is not None:
        first_token = _first_token(attrs[LF_COMPLETION_START], span.start)
        if first_token is not None:
            fields["time_to_first_token"] = first_token
    return fields


#: A provider's usage object whose totals include their parts (OpenAI's):
#: (total's key, its parts' key, which side).
_PROVIDER_TOTALS = (("prompt_tokens", "prompt_tokens_details", "input"),
                    ("input_tokens", "input_tokens_details", "input"),
                    ("completion_tokens", "completion_tokens_details", "output"),
                    ("output_tokens", "output_tokens_details", "output"))


def langfuse_usage(details: Any) -> dict[str, int]:
    """Token counts from a Langfuse generation's ``usage_details``: input,
    output, cached (cache reads), reasoning and cache_write, each where known.

    Two shapes come: a provider's own usage object as Langfuse's integrations
    pass it on (OpenAI's ``prompt_tokens``/``input_tokens`` with their
    ``*_tokens_details``), whose totals include the cached and reasoning
    tokens, as ours do; and Langfuse's own keys (``input``, ``output``,
    ``input_cached_tokens``, ``cache_read_input_tokens``,
    ``output_reasoning_tokens``...), where every ``input*`` and ``output*`` key
    is a part of its side, added up (Langfuse's ``input`` leaves the cached
    tokens out, as Anthropic's ``input_tokens`` does)."""
    if not isinstance(details, dict):
        return {}
    out: dict[str, int] = {}
    # Anthropic's own usage object (``input_tokens`` beside
    # ``cache_read_input_tokens``/``cache_creation_input_tokens``) counts its
    # input without the cache, as Langfuse's keys do: added up below.
    anthropic = any(key in details for key in _LF_CACHE_READ + _LF_CACHE_WRITE)
    for total_key, details_key, side in () if anthropic else _PROVIDER_TOTALS:
        total = _int(details.get(total_key))
        if total is None or side in out:
            continue
        out[side] = total
        parts = details.get(details_key)
        if isinstance(parts, dict):
            part = "cached" if side == "input" else "reasoning"
            count = _int(parts.get("cached_tokens" if side == "input" else "reasoning_tokens"))
            if count is not None:
                out[part] = count
    if out:
        return out
    counts = {k: n for k, n in ((k, _int(v)) for k, v in details.items()
                                if isinstance(k, str)) if n is not None}
    cached = next((counts[k] for k in _LF_CACHE_READ if k in counts), None)
    written = next((counts[k] for k in _LF_CACHE_WRITE if k in counts), None)
    reasoning = next((counts[k] for k in _LF_REASONING if k in counts), None)
    inputs = [n for k, n in counts.items()
              if k.startswith("input") or k in _LF_CACHE_READ or k in _LF_CACHE_WRITE]
    outputs = [n for k, n in counts.items() if k.startswith("output")]
    for key, value in (("input", sum(inputs) if inputs else None),
                       ("output", sum(outputs) if outputs else None), ("cached", cached),
                       ("reasoning", reasoning), ("cache_write", written)):
        if value is not None:
            out[key] = value
    return out


_LF_CACHE_READ = ("input_cached_tokens", "cache_read_input_tokens", "input_cache_read",
                  "input_cached")
_LF_CACHE_WRITE = ("cache_creation_input_tokens", "input_cache_creation", "input_cache_write")
_LF_REASONING = ("output_reasoning_tokens", "output_reasoning", "reasoning_tokens")


def langfuse_cost(details: Any) -> float | None:
    """USD from a Langfuse generation's ``cost_details``: its ``total``, else
    the sum of its parts."""
    if not isinstance(details, dict):
        return None
    total = _float(details.get("total"))
    if total is not None:
        return total
    parts = [n for n in (_float(v) for v in details.values()) if n is not None]
    return sum(parts) if parts else None


def _first_token(completion_start: Any, start: float | None) -> float | None:
    """Seconds from a span's start to Langfuse's ``completion_start_time``
    (a JSON-encoded ISO 8601 time)."""
    value = _json(completion_start)
    if isinstance(value, str) and value.startswith('"'):
        try:
            value = json.loads(value)
        except ValueError:
            return None
    if not isinstance(value, str) or start is None:
        return None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    seconds = moment.timestamp() - start
    return seconds if 0 <= seconds < 86_400 else None


def tool_fields(span: SpanIn) -> dict[str, Any]:
    """A tool span's event columns (but session and step)."""
    attrs = span.attributes
    used = {"gen_ai.operation.name", "openinference.span.kind"}
    name = _first(attrs, used, "gen_ai.tool.name", "tool.name")
    if name is None and LF_TYPE in attrs:
        name = span.name or None  # a Langfuse tool is named by its observation's name
    arguments = _json(_first(attrs, used, "gen_ai.tool.call.arguments", "tool.parameters",
                             "input.value", LF_INPUT))
    result = _first(attrs, used, "gen_ai.tool.call.result", "output.value", LF_OUTPUT)
    duration = span_duration(span)
    return {"type": "tool", "description": span.name or None,
            "function_name": None if name is None else str(name), "arguments": arguments,
            "result": None if result is None else
            (result if isinstance(result, str) else json.dumps(result, default=str)),
            "duration": duration, "error": _error(span), **_times(span),
            "attributes": _kept(span, used)}


def event_fields(span: SpanIn) -> dict[str, Any]:
    """A Langfuse event's columns (a point in time: a ``generic`` event
    named after it, its input as arguments and its output as result)."""
    attrs = span.attributes
    used: set[str] = set()
    arguments = _json(_first(attrs, used, LF_INPUT))
    result = _first(attrs, used, LF_OUTPUT)
    return {"type": "generic", "description": span.name or None, "arguments": arguments,
            "result": None if result is None else str(result), "error": _error(span),
            **_times(span), "attributes": _kept(span, used)}


def fields_of(span: SpanIn) -> dict[str, Any]:
    role = span.role
    if role == "llm":
        return llm_fields(span)
    if role == "tool":
        return tool_fields(span)
    if role == "event":
        return event_fields(span)
    return step_fields(span)


def session_fields(spans: list[SpanIn]) -> dict[str, Any]:
    """What a trace's Langfuse spans say of its session: the trace's name
    (``langfuse.trace.name``, else the name of its root observation), tags,
    and in ``attributes`` the user (``user.id``), the trace's metadata, its
    environment and release. Empty for spans that are not Langfuse's. The
    root span's values come first, then the earliest span's."""
    theirs = [s for s in spans if LF_TYPE in s.attributes or LF_TRACE_NAME in s.attributes]
    if not theirs:
        return {}
    found: dict[str, Any] = {}
    attributes: dict[str, Any] = {}
    for span in sorted(theirs, key=lambda s: (s.parent_id is not None,
                                              s.start if s.start is not None else math.inf)):
        attrs = span.attributes
        name = attrs.get(LF_TRACE_NAME)
        if isinstance(name, str) and name and "name" not in found:
            found["name"] = name
        if span.parent_id is None and span.name and "root_name" not in found:
            found["root_name"] = span.name
        tags = _json(attrs.get(LF_TRACE_TAGS))
        if isinstance(tags, str):
            tags = [tags]
        if isinstance(tags, list) and "tags" not in found:
            found["tags"] = [t for t in tags if isinstance(t, str)]
        for key in ("user.id", "langfuse.environment", "langfuse.release"):
            value = attrs.get(key)
            if value not in (None, "") and key not in attributes:
                attributes[key] = value
        metadata = {k[len(LF_TRACE_METADATA) + 1:]: _langfuse_value(k, v)
                    for k, v in attrs.items() if k.startswith(LF_TRACE_METADATA + ".")}
        if LF_TRACE_METADATA in attrs:
            metadata.setdefault("", _langfuse_value(LF_TRACE_METADATA, attrs[LF_TRACE_METADATA]))
        if metadata and LF_TRACE_METADATA not in attributes:
            attributes[LF_TRACE_METADATA] = metadata.get("") if list(metadata) == [""] \
                else metadata
    out: dict[str, Any] = {}
    name = found.get("name", found.get("root_name"))
    if name is not None:
        out["name"] = name
    if "tags" in found:
        out["tags"] = found["tags"]
    if attributes:
        out["attributes"] = attributes
    return out
