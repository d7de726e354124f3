"""Where replay answers: the HTTP client under the OpenAI and Anthropic
libraries.

While an experiment replays, ``send`` of the httpx clients (``httpx2``,
which the current libraries use, and ``httpx``, which older ones use) is
wrapped: a request made for a replaying run to a generation endpoint
(chat completions, responses, messages) is answered from the recording,
with the body or the stream the API would have sent, so the library, the
caller and the provider plugin all see a real response. Everything else (no
replaying run in this context, other endpoints, other hosts) goes through
untouched. The wrap is put in place by the first replaying experiment and
taken away by the last.
"""

from __future__ import annotations

import functools
import importlib
import json
import threading
from collections.abc import Callable
from typing import Any

from .._internal import logger
from ..errors import ReplayMissError
from . import _synth
from ._replay import current_scope

_lock = threading.Lock()
_users = 0
_originals: list[tuple[type, str, Any]] = []
_CLIENT_MODULES = ("httpx2", "httpx")


def install() -> None:
    global _users
    with _lock:
        _users += 1
        if _users > 1:
            return
        for name in _CLIENT_MODULES:
            try:
                module = importlib.import_module(name)
            except ImportError:
                continue
            for cls_name, wrap in (("Client", _wrap_sync), ("AsyncClient", _wrap_async)):
                cls = getattr(module, cls_name, None)
                if cls is None or "send" not in vars(cls):
                    continue
                original = vars(cls)["send"]
                setattr(cls, "send", wrap(original, module))  # noqa: B010
                _originals.append((cls, "send", original))


def uninstall() -> None:
    global _users
    with _lock:
        _users = max(0, _users - 1)
        if _users:
            return
        for cls, attr, original in reversed(_originals):
            setattr(cls, attr, original)
        _originals.clear()


def endpoint(request: Any) -> str | None:
    """The provider of a generation request (openai or anthropic), else None."""
    if request.method != "POST":
        return None
    path = request.url.path.rstrip("/")
    headers = request.headers
    agent = headers.get("user-agent", "")
    if path.endswith("/messages") and ("anthropic-version" in headers
                                       or agent.startswith("Anthropic/")):
        return "anthropic"
    if path.endswith(("/chat/completions", "/responses")):
        return "openai"
    return None


def _answer(request: Any, module: Any) -> Any | None:
    """The replayed response for this request, or None to send it for real."""
    scope = current_scope.get()
    if scope is None:
        return None
    provider = endpoint(request)
    if provider is None:
        return None
    try:
        body = json.loads(request.read() or b"null")
    except ValueError:
        return None
    if not isinstance(body, dict):
        return None
    try:
        event = scope.lookup(provider, body)
    except ReplayMissError as exc:
        raise _as_library_error(provider, exc) from None
    if event is None:
        logger.info("lucidic: replay found no recorded %s call for this request; "
                    "making it for real (fallback)", provider)
        return None
    _mark_replayed(str(event.get("id")))
    return _response(module, request, provider, body, event)


def _response(module: Any, request: Any, provider: str, body: dict[str, Any],
              event: dict[str, Any]) -> Any:
    model = str(event.get("model") or body.get("model") or "")
    replay_id = "replay_" + str(event.get("id"))[-24:]
    stream = body.get("stream") is True
    path = request.url.path.rstrip("/")
    content: bytes
    if provider == "anthropic":
        if stream:
            content = b"".join(_synth.anthropic_message_stream(event, model, replay_id))
        else:
            content = _dumps(_synth.anthropic_message(event, model, replay_id))
    elif path.endswith("/responses"):
        if stream:
            content = b"".join(_synth.openai_response_stream(event, model, replay_id))
        else:
            content = _dumps(_synth.openai_response(event, model, replay_id))
    elif stream:
        options = body.get("stream_options")
        include_usage = isinstance(options, dict) and options.get("include_usage") is True
        content = b"".join(_synth.openai_chat_stream(event, model, replay_id, include_usage))
    else:
        content = _dumps(_synth.openai_chat(event, model, replay_id))
    headers = {"content-type": "text/event-stream" if stream else "application/json",
               "x-lucidic-replayed-from": str(event.get("id"))}
    return module.Response(200, headers=headers, content=content, request=request)


def _dumps(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False).encode("utf-8")


def _mark_replayed(event_id: str) -> None:
    from ..plugins import mark_replayed

    mark_replayed(event_id)


_library_errors: dict[str, type[ReplayMissError]] = {}


def _as_library_error(provider: str, error: ReplayMissError) -> ReplayMissError:
    """The miss as an error of the provider's library too, so that the library
    passes it to the caller as it is (it wraps, and retries, errors of its
    transport that are not its own)."""
    cls = _library_errors.get(provider)
    if cls is None:
        base: type[Exception] | None = None
        try:
            if provider == "anthropic":
                base = importlib.import_module("anthropic").AnthropicError
            else:
                base = importlib.import_module("openai").OpenAIError
        except (ImportError, AttributeError):
            base = None
        bases: tuple[type, ...] = (ReplayMissError,) if base is None else (ReplayMissError, base)
        cls = type("ReplayMissError", bases, {"__module__": ReplayMissError.__module__})
        _library_errors[provider] = cls
    return cls(str(error))


def _wrap_sync(original: Callable[..., Any], module: Any) -> Callable[..., Any]:
    @functools.wraps(original)
    def send(self: Any, request: Any, *args: Any, **kwargs: Any) -> Any:
        response = _answer(request, module)
        if response is None:
            return original(self, request, *args, **kwargs)
        return response
    return send


def _wrap_async(original: Callable[..., Any], module: Any) -> Callable[..., Any]:
    @functools.wraps(original)
    async def send(self: Any, request: Any, *args: Any, **kwargs: Any) -> Any:
        response = _answer(request, module)
        if response is None:
            return await original(self, request, *args, **kwargs)
        return response
    return send
