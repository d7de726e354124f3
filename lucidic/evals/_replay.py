"""Replay: answer a run's LLM calls from the calls an experiment recorded.

A request is matched by its provider, its model, the request itself (the
messages with their system prompt or instructions, and the parameters that
change an answer: temperature, tools, limits, ...) and its occurrence: the
n-th identical request of a run is answered by the n-th identical call of the
recorded run of the same case and repeat, else of another run of the
experiment (the same case first). Stream options, response formats and
bookkeeping fields (user, metadata, store, ...) are not part of the match.

Requests and recordings are compared as the recordings were stored: after the
run's masking function, when it has one.
"""

from __future__ import annotations

import contextvars
import hashlib
import json
import threading
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .._records import Mask, mask_value, to_jsonable
from ..errors import ReplayMissError

MODES = ("strict", "fallback")

#: Request fields that never change what a model answers, or that are
#: recorded in another shape than they are sent (a response format is a
#: class in the call and a JSON schema on the wire).
_NOT_MATCHED = frozenset({
    "stream", "stream_options", "timeout", "extra_headers", "extra_query", "extra_body",
    "user", "metadata", "store", "service_tier", "prompt_cache_key", "safety_identifier",
    "response_format", "text_format", "text", "background", "include",
})
#: Where each provider's request keeps what is matched as the input.
_INPUT_FIELDS = {"openai": ("messages", "input", "instructions"),
                 "anthropic": ("messages", "system")}


def _without_nulls(value: Any) -> Any:
    """None-valued keys dropped at every level: a client library leaves out
    what a recorded call may hold as null."""
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_nulls(v) for v in value]
    return value


def request_key(provider: str | None, model: str | None, input: Any,  # noqa: A002
                params: Mapping[str, Any] | None, mask: Mask | None = None) -> str:
    """The key two identical requests share, whichever side they come from."""
    matched = {k: v for k, v in (params or {}).items() if k not in _NOT_MATCHED}
    document = _without_nulls(to_jsonable([provider or "", model or "", input, matched]))
    if mask is not None:
        document = mask_value(mask, document)
    text = json.dumps(document, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def body_input(provider: str, body: Mapping[str, Any]) -> Any:
    """A request body's input as the provider plugins record it."""
    if provider == "anthropic":
        items = list(body.get("messages") or ())
        if body.get("system") is not None:
            items.insert(0, {"role": "system", "content": body["system"]})
        return items or None
    if "messages" in body:
        return body.get("messages")
    items = []
    if body.get("instructions") is not None:
        items.append({"role": "system", "content": body["instructions"]})
    value = body.get("input")
    if isinstance(value, str):
        items.append({"role": "user", "content": value})
    elif isinstance(value, list):
        items.extend(value)
    return items or None


def body_key(provider: str, body: Mapping[str, Any], mask: Mask | None) -> str:
    params = {k: v for k, v in body.items() if k not in _INPUT_FIELDS[provider] and k != "model"}
    return request_key(provider, body.get("model"), body_input(provider, body), params, mask)


def event_key(event: Mapping[str, Any]) -> str:
    arguments = event.get("arguments")
    return request_key(event.get("provider"), event.get("request_model") or event.get("model"),
                       event.get("input"), arguments if isinstance(arguments, Mapping) else None)


# -- what an experiment recorded ---------------------------------------------------------

RunKey = tuple[str, int]  # (case_id, repeat)


@dataclass
class ReplaySource:
    """The LLM calls an experiment's runs recorded, indexed by run and key."""

    experiment_id: str
    runs: dict[RunKey, dict[str, list[dict[str, Any]]]] = field(default_factory=dict)

    @classmethod
    def from_events(cls, experiment_id: str, events: Iterable[Mapping[str, Any]]
                    ) -> ReplaySource:
        """``events``: the experiment's LLM events, each with its run's
        ``case_id`` and ``repeat``. Failed calls are left out: there is no
        answer to give back."""
        source = cls(experiment_id)
        ordered = sorted(events, key=lambda e: (e.get("started_at") or 0.0, str(e.get("id"))))
        for event in ordered:
            if event.get("error") is not None or event.get("output") is None:
                continue
            run = (str(event.get("case_id") or ""), int(event.get("repeat") or 0))
            source.runs.setdefault(run, {}).setdefault(event_key(event), []).append(dict(event))
        return source

    def answer(self, run: RunKey, key: str, occurrence: int) -> dict[str, Any] | None:
        """The recorded call answering the ``occurrence``-th request ``key`` of
        ``run``: that run's, else the same case's other repeats', else any
        run's of the experiment (in case and repeat order)."""
        calls = self.runs.get(run, {}).get(key)
        if calls is not None and occurrence < len(calls):
            return calls[occurrence]
        others = sorted((r for r in self.runs if r != run), key=lambda r: (r[0] != run[0], r))
        for other in others:
            calls = self.runs[other].get(key)
            if calls is not None and occurrence < len(calls):
                return calls[occurrence]
        return None

    def calls_of(self, run: RunKey) -> int:
        return sum(len(v) for v in self.runs.get(run, {}).values())


@dataclass
class ReplayStats:
    replayed: int = 0
    missed: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def count(self, hit: bool) -> None:
        with self.lock:
            if hit:
                self.replayed += 1
            else:
                self.missed += 1


class ReplayScope:
    """One run replaying: its run key, its occurrence counters and its mode."""

    def __init__(self, source: ReplaySource, run: RunKey, mode: str, stats: ReplayStats,
                 mask: Callable[[], Mask | None]) -> None:
        self.source = source
        self.run = run
        self.mode = mode
        self.stats = stats
        self._mask = mask
        self._seen: defaultdict[str, int] = defaultdict(int)
        self._lock = threading.Lock()

    def lookup(self, provider: str, body: Mapping[str, Any]) -> dict[str, Any] | None:
        """The recorded call answering this request, or None (a miss: in
        strict mode ReplayMissError, which says what was asked)."""
        key = body_key(provider, body, self._mask())
        with self._lock:
            occurrence = self._seen[key]
            self._seen[key] += 1
        event = self.source.answer(self.run, key, occurrence)
        self.stats.count(event is not None)
        if event is None and self.mode == "strict":
            raise miss_error(provider, body.get("model"), self, occurrence)
        return event


def miss_error(provider: str, model: Any, scope: ReplayScope, occurrence: int) -> ReplayMissError:
    case_id, repeat = scope.run
    recorded = scope.source.calls_of(scope.run)
    message = (f"replay: experiment {scope.source.experiment_id!r} recorded no {provider} call "
               f"to {model!r} with this request (case {case_id!r}, repeat {repeat}, "
               f"occurrence {occurrence + 1}; that run recorded {recorded} LLM call(s)). "
               "Run with replay_mode='fallback' to make missing calls for real and record "
               "them.")
    return ReplayMissError(message)


#: The replay scope of the run the calling thread or task works for.
current_scope: contextvars.ContextVar[ReplayScope | None] = contextvars.ContextVar(
    "lucidic_replay", default=None)
