"""Where the current session and step live.

A ``ContextVar`` holds the session bound by ``continued()``/``session()`` for
the current thread or asyncio task; a process-wide slot holds the one set by
``init()``/``continue_session()``. The current session is the context's, else
the process's. Steps form an immutable linked stack in another ``ContextVar``,
so nesting follows the call stack in every thread and task.
"""

from __future__ import annotations

import contextvars
import itertools
import secrets
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    from ._pipeline import Pipeline
    from ._recording import Step
    from ._records import Mask


class SessionIds:
    """Ids of the steps and events one session gets in this process: a random
    prefix and a counter, cheap to make on the hot path, and enough to tell
    an id given back to update_step() or end_event() from one this session
    never made here, without keeping a list of them. They outlive a detach
    (see Runtime.released_ids)."""

    __slots__ = ("counter", "prefix")

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """New prefix and counter (a forked child must not repeat the parent's)."""
        self.prefix = secrets.token_hex(8)
        self.counter = itertools.count(1)

    def made_here(self, record_id: str) -> bool:
        if not record_id.startswith(self.prefix):
            return False
        digits = record_id[len(self.prefix):]
        try:
            number = int(digits, 16)
        except ValueError:
            return False
        # Canonical digits only, and a number already handed out (peeking at
        # the counter spends one number, which costs nothing).
        return f"{number:x}" == digits and 0 < number < next(self.counter)


class SessionState:
    """What this process knows of one session, shared by all its bindings."""

    __slots__ = ("bindings", "capture_uncaught", "evaluated", "failure", "finished", "id",
                 "ids", "open_handles", "open_steps", "outcome_set")

    def __init__(self, session_id: str, ids: SessionIds | None = None) -> None:
        self.id = session_id
        #: Where create_step() and the events of this session get their ids.
        self.ids = ids if ids is not None else SessionIds()
        self.finished = False
        #: Steps opened with create_step() here and not ended yet: ending the
        #: session ends them too.
        self.open_steps: set[str] = set()
        #: Steps a plugin opened here (plugins.open_step, step_scope) and
        #: has not ended yet, by id: ending the session ends them too.
        self.open_handles: dict[str, Step] = {}
        self.outcome_set = False  # the user said whether it succeeded
        self.failure: str | None = None  # why the process thinks it failed
        #: init(capture_uncaught=False): a crash or SIGTERM records no error
        #: event and does not mark it failed (auto_end still ends it).
        self.capture_uncaught = True
        self.bindings: list[Binding] = []
        #: It names an experiment or rubrics: ending it here scores it.
        self.evaluated = False


class Binding:
    """One use of a session in this process: by ``init``/``continue_session``
    (process scope) or by a ``continued``/``session`` block (context scope).
    Records go to the binding's pipeline, masked with its masking function."""

    __slots__ = ("active", "agent_id", "auto_end", "mask", "pipeline", "project",
                 "session_id", "state", "writer")

    def __init__(self, state: SessionState, pipeline: Pipeline, *, mask: Mask | None,
                 auto_end: bool, agent_id: str | None, project: str,
                 writer: dict[str, Any] | None = None) -> None:
        self.session_id = state.id
        self.state = state
        self.pipeline = pipeline
        self.mask = mask
        self.auto_end = auto_end
        self.agent_id = agent_id
        self.project = project
        #: The writer columns stamped on the steps and events this binding
        #: creates (see _runtime.WriterIdentity); rebuilt in a forked child.
        self.writer = writer or {}
        self.active = True
        state.bindings.append(self)


class EventRef(NamedTuple):
    session_id: str
    event_id: str


scope_binding: contextvars.ContextVar[Binding | None] = contextvars.ContextVar(
    "lucidic_session", default=None)
#: The innermost open step of this context: a ``_recording.Step``, whose
#: ``parent`` is the step it is nested in (an immutable stack of frames).
current_step: contextvars.ContextVar[Step | None] = contextvars.ContextVar(
    "lucidic_step", default=None)
last_event: contextvars.ContextVar[EventRef | None] = contextvars.ContextVar(
    "lucidic_event", default=None)


class _ProcessSlot:
    __slots__ = ("binding",)

    def __init__(self) -> None:
        self.binding: Binding | None = None


process_slot = _ProcessSlot()


def current_binding() -> Binding | None:
    """The active binding for this thread or task, else the process's."""
    binding = scope_binding.get()
    if binding is None:
        binding = process_slot.binding
    if binding is not None and binding.active:
        return binding
    return None


# -- carrying the context into threads ---------------------------------------
#
# asyncio tasks copy the context by themselves; threads do not (before Python
# 3.14). A thread started, or an executor job submitted, inside a scope runs
# in a copy of the starter's context, so LLM calls made there land in the
# right session and step.

_propagation_installed = False
_propagation_lock = threading.Lock()
_original_thread_start = threading.Thread.start
_original_submit = ThreadPoolExecutor.submit


def _in_lucidic_scope() -> bool:
    return scope_binding.get() is not None or current_step.get() is not None


def _is_executor_worker(thread: threading.Thread) -> bool:
    # An executor's threads outlive the scope that happened to start them;
    # their jobs carry their own context (see _submit).
    target = getattr(thread, "_target", None)
    return getattr(target, "__module__", None) == "concurrent.futures.thread"


def _thread_start(self: threading.Thread, *args: Any, **kwargs: Any) -> None:
    if _in_lucidic_scope() and not _is_executor_worker(self) \
            and not getattr(self, "_lucidic_context", None):
        context = contextvars.copy_context()
        run = self.run
        self._lucidic_context = context  # type: ignore[attr-defined]
        self.run = lambda: context.run(run)  # type: ignore[method-assign]
    return _original_thread_start(self, *args, **kwargs)


def _submit(self: ThreadPoolExecutor, fn: Any, /, *args: Any, **kwargs: Any) -> Any:
    if _in_lucidic_scope():
        return _original_submit(self, contextvars.copy_context().run, fn, *args, **kwargs)
    return _original_submit(self, fn, *args, **kwargs)


def install_context_propagation() -> None:
    """Patch Thread.start and ThreadPoolExecutor.submit once. Outside a
    Lucidic scope both behave exactly as before."""
    global _propagation_installed
    with _propagation_lock:
        if _propagation_installed:
            return
        threading.Thread.start = _thread_start  # type: ignore[method-assign]
        ThreadPoolExecutor.submit = _submit  # type: ignore[method-assign, assignment]
        _propagation_installed = True
