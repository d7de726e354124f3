"""Lucidic provider plugin for the OpenAI Agents SDK (``providers=["openai_agents"]``).

A trace processor is added beside the SDK's own processors (its export to
OpenAI keeps working): each run's task and each agent become steps (nested as
they run, so a handoff's agent follows the one that handed off, and an agent
run as a tool nests in the agent that called it), function tools become
``tool`` events, handoffs and guardrails become ``generic`` events and model
calls become ``llm`` events. The model call is recorded here, once: while it
is in flight the ``openai`` provider adapter is suppressed. Responses API
spans do not name the model asked for, so ``OpenAIResponsesModel``'s
``get_response`` and ``stream_response`` are wrapped to supply it.

The SDK sends nothing to processors when its tracing is disabled
(``OPENAI_AGENTS_DISABLE_TRACING``, ``set_tracing_disabled(True)`` or
``RunConfig(tracing_disabled=True)``), so neither is anything recorded then;
with ``trace_include_sensitive_data=False`` model calls are recorded with
their token counts and cost but without input and output.
"""

from __future__ import annotations

from ._adapter import OpenAIAgentsAdapter

__all__ = ["LucidicTracingProcessor", "OpenAIAgentsAdapter"]


def __getattr__(name: str) -> object:
    # The LucidicTracingProcessor imports the Agents SDK; loaded on first use, so that listing the
    # installed plugins (`lucidic providers`) imports no library.
    if name == "LucidicTracingProcessor":
        from ._processor import LucidicTracingProcessor

        return LucidicTracingProcessor
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
