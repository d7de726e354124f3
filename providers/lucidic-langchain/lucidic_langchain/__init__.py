"""Lucidic provider plugin for LangChain (``providers=["langchain"]``).

A callback handler is added, through langchain-core's configure hook, beside
the callbacks the user passes: chains and other runnables become steps (nested
as their runs nest), tool calls become ``tool`` events, retrievals become
``function`` events and model calls become ``llm`` events. LangGraph runs on
the same callbacks, so its graphs and nodes are recorded the same way.

The LLM call is recorded here, once: while langchain's model call is in flight
the provider adapters (``openai``, ``anthropic``) are suppressed.
"""

from __future__ import annotations

from ._adapter import LangChainAdapter
from ._handler import LucidicCallbackHandler

__all__ = ["LangChainAdapter", "LucidicCallbackHandler"]
