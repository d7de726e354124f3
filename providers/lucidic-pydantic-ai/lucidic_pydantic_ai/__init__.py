"""Lucidic provider plugin for Pydantic AI (``providers=["pydantic_ai"]``).

Each agent run started in a session gets a capability of ours beside the
ones the user gave it, through the public ``capabilities=`` argument of
``Agent.iter`` (which ``run``, ``run_sync`` and the streaming runs use): the
run becomes a step (a run started inside a tool nests in the calling run's
step), each tool call a ``tool`` event and each model request an ``llm``
event. The model request is recorded here, once: while it is in flight the
provider adapters (``openai``, ``anthropic``) are suppressed. Runs started
with no session current get nothing added.
"""

from __future__ import annotations

from ._adapter import PydanticAIAdapter

__all__ = ["LucidicCapability", "PydanticAIAdapter"]


def __getattr__(name: str) -> object:
    # The LucidicCapability imports pydantic-ai; loaded on first use, so that listing the
    # installed plugins (`lucidic providers`) imports no library.
    if name == "LucidicCapability":
        from ._capability import LucidicCapability

        return LucidicCapability
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
