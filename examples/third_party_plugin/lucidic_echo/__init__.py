"""A toy LLM client and the Lucidic adapter that records its calls.

``EchoClient.complete()`` stands for a third party's SDK call: it "generates"
by echoing the prompt. ``EchoAdapter`` is all a plugin needs: a name, the
distribution it instruments and the versions it supports, and an undoable
patch that records each call through ``lucidic.plugins``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import wrapt

from lucidic.plugins import Adapter, record_internal_error, start_llm_call

__all__ = ["EchoAdapter", "EchoClient", "EchoReply"]


@dataclass(frozen=True)
class EchoReply:
    model: str
    text: str
    input_tokens: int
    output_tokens: int


class EchoClient:
    """The "library": one method that answers a prompt."""

    def complete(self, prompt: str, *, model: str = "echo-1") -> EchoReply:
        if not prompt:
            raise ValueError("prompt must not be empty")
        words = prompt.split()
        return EchoReply(model=f"{model}-2025", text=" ".join(reversed(words)),
                         input_tokens=len(words), output_tokens=len(words))


def _record_complete(wrapped: Any, instance: Any, args: tuple[Any, ...],
                     kwargs: dict[str, Any]) -> Any:
    prompt = args[0] if args else kwargs.get("prompt")
    call = start_llm_call("echo", request_model=kwargs.get("model", "echo-1"),
                          input=[{"role": "user", "content": prompt}])
    if call is None:  # no current session: straight through
        return wrapped(*args, **kwargs)
    try:
        reply = wrapped(*args, **kwargs)
    except BaseException as exc:
        call.fail(exc)
        raise
    try:
        output = {"role": "assistant", "content": reply.text}
    except Exception as exc:  # noqa: BLE001 - the plugin's own failure never reaches the caller
        record_internal_error("echo_result", exc)
        output = None
    # cost=None: computed from the price table (LUCIDIC_PRICES can price "echo").
    call.finish(model=reply.model, output=output, input_tokens=reply.input_tokens,
                output_tokens=reply.output_tokens)
    return reply


class EchoAdapter(Adapter):
    name = "echo"
    library = "lucidic-example-echo"  # here the plugin instruments its own distribution
    supported_versions = ">=0.1"

    def _instrument(self) -> None:
        self._original = vars(EchoClient)["complete"]
        wrapt.wrap_function_wrapper(EchoClient, "complete", _record_complete)

    def _uninstrument(self) -> None:
        EchoClient.complete = self._original  # type: ignore[method-assign]
