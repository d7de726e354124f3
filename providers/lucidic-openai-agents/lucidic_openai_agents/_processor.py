"""The trace processor: the SDK's spans into Lucidic steps and events.

The SDK starts and finishes each span in one context (it keeps the current
span in a ContextVar itself), so a step opened at an agent span's start is
made the current step there, and a model call's suppression of the provider
adapter covers exactly that call.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from lucidic import plugins
from lucidic.plugins import swallow

from ._adapter import requested_model

try:
    from agents.tracing import TracingProcessor
except ImportError:  # pragma: no cover - the adapter checks the library first
    TracingProcessor = object  # type: ignore[misc,assignment]



@dataclass
class _Open:
    step: plugins.StepHandle | None = None
    call: plugins.LLMCall | None = None
    suppression: plugins.Suppression | None = None
    started_at: float = field(default_factory=time.time)
    started: float = field(default_factory=time.perf_counter)


class LucidicTracingProcessor(TracingProcessor):  # type: ignore[misc]
    """Records agent runs into the current Lucidic session."""

    def __init__(self) -> None:
        self.enabled = True
        self._open: dict[str, _Open] = {}
        self._lock = threading.Lock()

    # Traces group runs; the task span inside each is what becomes a step.
    def on_trace_start(self, trace: Any) -> None:
        pass

    def on_trace_end(self, trace: Any) -> None:
        pass

    def shutdown(self) -> None:
        pass

    def force_flush(self) -> None:
        pass

    def on_span_start(self, span: Any) -> None:
        if not self.enabled or not plugins.in_session():
            return
        with swallow("openai_agents_span_start"):
            data = span.span_data
            kind = getattr(data, "type", None)
            opened = _Open()
            if kind in ("agent", "task"):
                name = getattr(data, "name", None)
                step = plugins.open_step(action=f"{kind}: {name}" if name else kind,
                                         function_name=name)
                if step is None:
                    return
                step.activate()
                opened.step = step
            elif kind in ("response", "generation"):
                # generation spans name it up front; response spans do not
                model = getattr(data, "model", None) or (
                    requested_model.get() if kind == "response" else None)
                call = plugins.start_llm_call("openai", request_model=model,
                                              description=f"openai_agents {kind}")
                if call is None:
                    return
                opened.call = call
                # Recorded here: the openai adapter below stays quiet for this call.
                opened.suppression = plugins.begin_suppressing_llm_calls("openai_agents")
            elif kind not in ("function", "handoff", "guardrail"):
                return
            with self._lock:
                self._open[span.span_id] = opened

    def on_span_end(self, span: Any) -> None:
        if not self.enabled:
            return
        with self._lock:
            opened = self._open.pop(span.span_id, None)
        if opened is None:
            return
        try:
            with swallow("openai_agents_span_end"):
                self._end(span, opened)
        finally:
            if opened.suppression is not None:
                opened.suppression.end()
            if opened.step is not None:
                opened.step.end(error=_error_text(span))

    def _end(self, span: Any, opened: _Open) -> None:
        data = span.span_data
        kind = data.type
        error = _error_text(span)
        if opened.call is not None:
            if error is not None:
                opened.call.fail(error)
            elif kind == "response":
                opened.call.annotate(input=_response_input(data))
                opened.call.finish(**_response_fields(data))
            else:
                opened.call.annotate(input=data.input, arguments=data.model_config or None)
                opened.call.finish(**_generation_fields(data))
            return
        duration = time.perf_counter() - opened.started
        timing = {"started_at": opened.started_at, "ended_at": opened.started_at + duration,
                  "duration": duration}
        if kind == "function":
            plugins.record_event("tool", description=data.name, function_name=data.name,
                                 arguments=_json_or_text(data.input), output=data.output,
                                 error=error, **timing)
        elif kind == "handoff":
            plugins.record_event("generic",
                                 description=f"handoff: {data.from_agent} -> {data.to_agent}",
                                 arguments={"from_agent": data.from_agent,
                                            "to_agent": data.to_agent},
                                 error=error, **timing)
        elif kind == "guardrail":
            plugins.record_event("generic", description=f"guardrail: {data.name}",
                                 function_name=data.name, result=f"triggered={data.triggered}",
                                 error=error, **timing)


def _error_text(span: Any) -> str | None:
    error = getattr(span, "error", None)
    if not error:
        return None
    message = error.get("message") if isinstance(error, dict) else str(error)
    detail = error.get("data") if isinstance(error, dict) else None
    return f"{message}: {detail}" if detail else str(message)


def _json_or_text(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def _usage_fields(usage: Any) -> dict[str, Any]:
    """Token counts from an openai usage object or the SDK's span usage dict."""
    if usage is None:
        return {}
    def get(key: str) -> Any:
        return usage.get(key) if isinstance(usage, dict) else getattr(usage, key, None)

    details_in = get("input_tokens_details") or {}
    details_out = get("output_tokens_details") or {}

    def detail(details: Any, key: str) -> Any:
        return details.get(key) if isinstance(details, dict) else getattr(details, key, None)

    return {"input_tokens": get("input_tokens"), "output_tokens": get("output_tokens"),
            "cached_tokens": detail(details_in, "cached_tokens"),
            "reasoning_tokens": detail(details_out, "reasoning_tokens")}


def _response_fields(data: Any) -> dict[str, Any]:
    response = data.response
    if response is None:  # trace_include_sensitive_data=False: usage only
        return _usage_fields(data.usage)
    output = [item.model_dump(exclude_none=True) if hasattr(item, "model_dump") else item
              for item in (response.output or [])]
    return {"model": response.model, "output": output,
            **_usage_fields(response.usage if response.usage is not None else data.usage)}


def _response_input(data: Any) -> Any:
    """The request's input items, with the agent's instructions first."""
    items = data.input
    if items is None:
        return None
    if isinstance(items, str):
        items = [{"role": "user", "content": items}]
    instructions = getattr(data.response, "instructions", None)
    if isinstance(instructions, str) and instructions:
        items = [{"role": "system", "content": instructions}, *items]
    return items


def _generation_fields(data: Any) -> dict[str, Any]:
    return {"model": data.model, "output": data.output, **_usage_fields(data.usage)}
