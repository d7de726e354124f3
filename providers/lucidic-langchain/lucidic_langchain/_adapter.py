"""Registering the handler with langchain-core, and taking it away again."""

from __future__ import annotations

import contextvars
from typing import TYPE_CHECKING, Any

from lucidic.plugins import Adapter

if TYPE_CHECKING:
    from ._handler import LucidicCallbackHandler


class LangChainAdapter(Adapter):
    name = "langchain"
    library = "langchain-core"
    supported_versions = ">=0.3"

    def __init__(self) -> None:
        super().__init__()
        self._hook: tuple[Any, ...] | None = None
        self.handler: LucidicCallbackHandler | None = None

    def _instrument(self) -> None:
        from langchain_core.tracers import context as tracer_context

        from ._handler import LucidicCallbackHandler

        handler = LucidicCallbackHandler()
        # A ContextVar whose default is the handler: every callback manager
        # langchain-core configures, in any thread or task, adds it beside the
        # user's own callbacks (inheritable, so child runs report to it too).
        var: contextvars.ContextVar[Any] = contextvars.ContextVar(
            "lucidic_langchain_handler", default=handler)
        tracer_context.register_configure_hook(var, True)
        self._hook = tracer_context._configure_hooks[-1]
        self.handler = handler

    def _uninstrument(self) -> None:
        from langchain_core.tracers import context as tracer_context

        hooks = tracer_context._configure_hooks
        if self._hook is not None:
            for index, hook in enumerate(hooks):
                if hook is self._hook:
                    del hooks[index]
                    break
        self._hook = None
        self.handler = None
