"""Lucidic provider plugin for LangChain (``providers=["langchain"]``).

A callback handler is added, through langchain-core's configure hook, beside
the callbacks the user passes: chains and other runnables become steps (nested
as their runs nest), tool calls become ``tool`` events, retrievals become
``function`` events and model calls become ``llm`` events. LangGraph runs on
the same callbacks, so its graphs and nodes are recorded the same way.

The LLM call is recorded here, once: while a langchain model's own code runs
(not while its caller holds a streamed chunk) the provider adapters
(``openai``, ``anthropic``) are suppressed.
"""

from __future__ import annotations

from ._adapter import LangChainAdapter

__all__ = ["LangChainAdapter", "LucidicCallbackHandler"]


def __getattr__(name: str) -> object:
    # The LucidicCallbackHandler imports langchain-core; loaded on first use, so that listing the
    # installed plugins (`lucidic providers`) imports no library.
    if name == "LucidicCallbackHandler":
        from ._handler import LucidicCallbackHandler

        return LucidicCallbackHandler
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
