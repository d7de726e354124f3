"""Adding the processor beside the SDK's own, and taking it out again."""

from __future__ import annotations

from typing import Any

from lucidic.plugins import Adapter

from ._processor import LucidicTracingProcessor


class OpenAIAgentsAdapter(Adapter):
    name = "openai_agents"
    library = "openai-agents"
    supported_versions = ">=0.2"

    def __init__(self) -> None:
        super().__init__()
        self.processor: LucidicTracingProcessor | None = None

    def _instrument(self) -> None:
        from agents import add_trace_processor

        processor = LucidicTracingProcessor()
        add_trace_processor(processor)
        self.processor = processor

    def _uninstrument(self) -> None:
        from agents import set_trace_processors
        from agents.tracing import get_trace_provider

        processor, self.processor = self.processor, None
        if processor is None:
            return
        processor.enabled = False  # inert even where it cannot be taken out
        multi = getattr(get_trace_provider(), "_multi_processor", None)
        current: Any = getattr(multi, "_processors", None)
        if isinstance(current, tuple) and any(p is processor for p in current):
            # The SDK has add and set but no remove: set the list without ours,
            # leaving every other processor where it was.
            set_trace_processors([p for p in current if p is not processor])
