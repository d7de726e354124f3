"""Adding our capability to runs started in a session, and stopping again."""

from __future__ import annotations

import functools
from typing import Any

from lucidic import plugins
from lucidic.plugins import Adapter, swallow


class PydanticAIAdapter(Adapter):
    name = "pydantic_ai"
    library = "pydantic-ai-slim"
    supported_versions = ">=1.30"

    def __init__(self) -> None:
        super().__init__()
        self._original: Any = None

    def _instrument(self) -> None:
        from pydantic_ai import Agent

        from ._capability import LucidicCapability

        original = Agent.__dict__["iter"]

        @functools.wraps(original)
        def iter(self: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: A001 - Agent.iter
            if plugins.in_session():
                with swallow("pydantic_ai_iter"):
                    given = kwargs.get("capabilities")
                    kwargs["capabilities"] = [*(given or ()), LucidicCapability()]
            return original(self, *args, **kwargs)

        iter.__lucidic_original__ = original  # type: ignore[attr-defined]
        Agent.iter = iter  # type: ignore[method-assign]
        self._original = original

    def _uninstrument(self) -> None:
        from pydantic_ai import Agent

        if self._original is not None:
            Agent.iter = self._original  # type: ignore[method-assign]
        self._original = None
