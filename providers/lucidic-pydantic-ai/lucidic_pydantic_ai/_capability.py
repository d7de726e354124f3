"""The capability: agent runs, model requests and tool calls into Lucidic."""

from __future__ import annotations

import contextvars
import time
from dataclasses import KW_ONLY, dataclass
from typing import Any

from pydantic_ai.capabilities import AbstractCapability

from lucidic import plugins
from lucidic.plugins import swallow
from lucidic.streams import ABANDONED

# The current run's suppression of provider adapters, switched on while one of
# its model requests is in flight. pydantic-ai hands what wrap_run sets to the
# caller's task, where the run's graph executes and where a streamed request
# opens its stream, while wrap_model_request runs in a task of its own: a
# suppression set only there would miss the streamed request's HTTP call.
_run_suppression: contextvars.ContextVar[plugins.Suppression | None] = contextvars.ContextVar(
    "lucidic_pydantic_ai_run_suppression", default=None)

_SETTINGS = ("temperature", "max_tokens", "top_p", "seed", "stop_sequences",
             "presence_penalty", "frequency_penalty", "parallel_tool_calls")


@dataclass
class LucidicCapability(AbstractCapability[Any]):
    """Records the run it is part of into the current Lucidic session."""

    _: KW_ONLY
    id: str | None = "lucidic"

    @classmethod
    def get_serialization_name(cls) -> str | None:
        return None  # added at run time, never part of an agent spec

    async def wrap_run(self, ctx: Any, *, handler: Any) -> Any:
        name = getattr(getattr(ctx, "agent", None), "name", None) or "agent"
        with plugins.step_scope(action=f"agent run: {name}", function_name=name):
            suppression = plugins.begin_suppressing_llm_calls("pydantic_ai", active=False)
            token = _run_suppression.set(suppression)
            try:
                return await handler()
            finally:
                _run_suppression.reset(token)
                suppression.end()

    async def wrap_model_request(self, ctx: Any, *, request_context: Any, handler: Any) -> Any:
        call: plugins.LLMCall | None = None
        with swallow("pydantic_ai_model_request_start"):
            model = request_context.model
            settings = request_context.model_settings or {}
            arguments = {k: settings[k] for k in _SETTINGS if settings.get(k) is not None}
            tools = [t.name for t in
                     getattr(request_context.model_request_parameters, "function_tools", ())]
            if tools:
                arguments["tools"] = tools
            call = plugins.start_llm_call(
                _provider(model), request_model=getattr(model, "model_name", None),
                input=_messages(request_context.messages),
                description=f"pydantic_ai {getattr(model, 'system', 'model')}",
                arguments=arguments or None)
        if call is None:
            return await handler(request_context)
        # Recorded here: the provider adapter below stays quiet for this request,
        # in this task and in the run's (where a streamed request is opened).
        run_suppression = _run_suppression.get()
        if run_suppression is not None:
            run_suppression.active = True
        with plugins.suppress_llm_calls("pydantic_ai"):
            try:
                response = await handler(request_context)
            except BaseException as exc:
                call.fail(exc)
                raise
            finally:
                if run_suppression is not None:
                    run_suppression.active = False
        with swallow("pydantic_ai_model_request_end"):
            call.finish(**_response_fields(response))
        return response

    async def wrap_tool_execute(self, ctx: Any, *, call: Any, tool_def: Any, args: Any,
                                handler: Any) -> Any:
        started_at, started = time.time(), time.perf_counter()
        error: BaseException | None = None
        result: Any = None
        try:
            result = await handler(args)
            return result
        except BaseException as exc:
            error = exc
            raise
        finally:
            with swallow("pydantic_ai_tool"):
                duration = time.perf_counter() - started
                plugins.record_event(
                    "tool", description=call.tool_name, function_name=call.tool_name,
                    arguments=args, output=None if error is not None else result,
                    error=None if error is None else f"{type(error).__name__}: {error}",
                    started_at=started_at, ended_at=started_at + duration, duration=duration)


def _provider(model: Any) -> str:
    for attribute in ("system", "provider_name"):
        value = getattr(model, attribute, None)
        if isinstance(value, str) and value:
            return value
    return "pydantic_ai"


def _messages(messages: Any) -> list[dict[str, Any]]:
    """pydantic-ai's messages as provider-neutral {role, content, ...} dicts."""
    out: list[dict[str, Any]] = []
    # The latest request's instructions are the ones the model is sent.
    instructions = next((m.instructions for m in reversed(list(messages or ()))
                         if getattr(m, "kind", None) == "request"
                         and getattr(m, "instructions", None)), None)
    if instructions:
        out.append({"role": "system", "content": instructions})
    for message in messages or ():
        if getattr(message, "kind", None) == "response":
            out.append(_response_message(message))
            continue
        for part in getattr(message, "parts", ()):
            kind = getattr(part, "part_kind", None)
            if kind == "system-prompt":
                out.append({"role": "system", "content": part.content})
            elif kind == "user-prompt":
                out.append({"role": "user", "content": part.content})
            elif kind == "tool-return":
                out.append({"role": "tool", "name": part.tool_name,
                            "tool_call_id": part.tool_call_id, "content": part.content})
            elif kind == "retry-prompt":
                out.append({"role": "tool" if getattr(part, "tool_name", None) else "user",
                            "name": getattr(part, "tool_name", None),
                            "tool_call_id": getattr(part, "tool_call_id", None),
                            "content": part.content})
    return out


def _response_message(response: Any) -> dict[str, Any]:
    texts, thinking, tool_calls = [], [], []
    for part in getattr(response, "parts", ()):
        kind = getattr(part, "part_kind", None)
        if kind == "text":
            texts.append(part.content)
        elif kind == "thinking":
            thinking.append(part.content)
        elif kind == "tool-call":
            tool_calls.append({"id": part.tool_call_id, "name": part.tool_name,
                               "arguments": part.args})
    message: dict[str, Any] = {"role": "assistant", "content": "".join(texts) or None}
    if tool_calls:
        message["tool_calls"] = tool_calls
    if thinking:
        message["thinking"] = "".join(thinking)
    return message


def _response_fields(response: Any) -> dict[str, Any]:
    usage = getattr(response, "usage", None)
    details = getattr(usage, "details", None) or {}
    fields: dict[str, Any] = {"model": getattr(response, "model_name", None),
                              "output": _response_message(response)}
    state = getattr(response, "state", "complete")
    if state == "incomplete":  # a streamed response its consumer stopped reading
        fields["result"] = ABANDONED
    elif state == "interrupted":
        fields["result"] = "response interrupted"
    # A stream whose API sent no usage (chat completions without
    # stream_options.include_usage) leaves pydantic-ai's counts at zero:
    # unknown, not free.
    if usage is not None and (usage.input_tokens or usage.output_tokens):
        fields.update(input_tokens=usage.input_tokens, output_tokens=usage.output_tokens,
                      cached_tokens=getattr(usage, "cache_read_tokens", None),
                      cache_write_tokens=getattr(usage, "cache_write_tokens", None),
                      cache_write_1h_tokens=getattr(usage, "cache_write_1h_tokens", None),
                      reasoning_tokens=details.get("reasoning_tokens"))
    return fields
