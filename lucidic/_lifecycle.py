"""auto_end: sessions end by themselves when the process does.

At normal interpreter exit, on SIGTERM, and after an uncaught exception, the
sessions this process started or continued (with ``auto_end``) and has not
ended or detached are ended, and everything queued is flushed within the
flush bound; what the sink did not take by then is spooled for the next
process. The flush bound (``LUCIDIC_FLUSH_TIMEOUT``) bounds that whole exit
path, ending the sessions included, not each of its steps. Signal handlers
are installed from the main thread only, chain the
previous handler and keep the process's exit status. SIGINT is left alone:
Ctrl-C still raises KeyboardInterrupt.
"""

from __future__ import annotations

import atexit
import gc
import os
import signal
import sys
import threading
import time
import traceback
import types
from collections.abc import Iterator
from types import FrameType, TracebackType
from typing import Any

from . import _config, _sessions
from ._context import Binding, current_step
from ._internal import record_internal_error
from ._recording import Step, record_error
from ._runtime import runtime

_installed = False
_install_lock = threading.Lock()
_finished = False
_previous_sigterm: Any = None
_previous_excepthook: Any = None
#: True once SIGTERM is ending this process: only what fits the flush bound
#: is done (sessions end; scoring them is left for later).
terminating = False


def install() -> None:
    """Called by every init/continue_session: the exit hooks once per
    process; SIGTERM's handler as soon as a call comes from the main thread
    (the first may come from another); and, in a multiprocessing child, the
    finalizer that stands in for atexit there."""
    global _installed, _previous_excepthook
    with _install_lock:
        if not _installed:
            _installed = True
            atexit.register(_at_exit)
            _previous_excepthook = sys.excepthook
            sys.excepthook = _excepthook
        if not _sigterm_decided:
            _install_sigterm()
        _finalize_as_multiprocessing_child()


_multiprocessing_hooked = False
#: The pid whose multiprocessing finalizer is registered (a forked child's
#: own pid differs from its parent's, so each registers its own).
_finalizer_pid: int | None = None
#: SIGTERM's handler is installed, or the program's choice leaves it alone.
_sigterm_decided = False


def before_fork() -> None:
    """multiprocessing's children leave through os._exit(), skipping atexit;
    its own finalizers still run there. It clears finalizers at the start of
    a forked child and then runs its after-fork hooks, so that is where the
    exit finalizer of a child that inherited our state is registered: hooked
    just before every fork, by when multiprocessing (if it is the one
    forking) is loaded. A child that starts Lucidic itself (spawn,
    forkserver, or a fork by a parent that had not) registers it in
    install()."""
    global _multiprocessing_hooked
    util = sys.modules.get("multiprocessing.util")
    if util is not None and not _multiprocessing_hooked:
        util.register_after_fork(_hook_owner, _after_multiprocessing_fork)
        _multiprocessing_hooked = True


class _HookOwner:
    """multiprocessing keeps after-fork hooks in a weak dictionary: this
    module-level object keeps ours alive."""


_hook_owner = _HookOwner()


def _after_multiprocessing_fork(_: object) -> None:
    _finalize_as_multiprocessing_child()


def _finalize_as_multiprocessing_child() -> None:
    """In a multiprocessing child, run the exit path (end the auto_end
    sessions, deliver or spool) from multiprocessing's last finalizer, since
    the child's atexit never runs."""
    global _finalizer_pid
    if _finalizer_pid == os.getpid():
        return
    process = sys.modules.get("multiprocessing.process")
    if process is None or process.parent_process() is None:
        return  # not a multiprocessing child: atexit runs as usual
    import multiprocessing.util

    multiprocessing.util.Finalize(None, _at_exit, exitpriority=-100)
    _finalizer_pid = os.getpid()


def _install_sigterm() -> None:
    global _previous_sigterm, _sigterm_decided
    if threading.current_thread() is not threading.main_thread():
        return  # signal.signal only works there: tried again on the next call
    _sigterm_decided = True
    try:
        previous = signal.getsignal(signal.SIGTERM)
        if previous is signal.SIG_IGN or previous is None:
            return  # the program chose to ignore SIGTERM, or a C handler owns it
        _previous_sigterm = previous
        signal.signal(signal.SIGTERM, _on_sigterm)
    except (ValueError, OSError) as exc:
        record_internal_error("install_sigterm", exc)


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    global terminating
    previous = _previous_sigterm
    if callable(previous):
        # The program handles SIGTERM itself; if it exits, atexit ends the
        # sessions. If it carries on, so do they.
        previous(signum, frame)
        return
    terminating = True
    deadline = _exit_deadline()
    try:
        ended = _end_interrupted_steps("terminated by SIGTERM")
        _end_steps_left_open("terminated by SIGTERM", on_sigterm=True, ended=ended)
    except Exception as exc:  # noqa: BLE001 - the sessions must end all the same
        record_internal_error("end_interrupted_step", exc)
    end_sessions(failure="terminated by SIGTERM", deadline=deadline)
    shutdown(deadline)
    # Die of the signal as we would have, so the exit status stays -SIGTERM.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGTERM)


def _end_interrupted_steps(error: str) -> set[tuple[str, str]]:
    """End, as failed, the steps the signal interrupted: those open in the
    main thread's context (the handler runs there), innermost first. Returns
    the steps ended, as (session id, step id)."""
    ended: set[tuple[str, str]] = set()
    step = current_step.get()
    while step is not None:
        try:
            if step.binding.active:
                step.binding.state.open_steps.discard(step.step_id)
                step.end(error=error)
                ended.add((step.session_id, step.step_id))
        except Exception as exc:  # noqa: BLE001
            record_internal_error("end_interrupted_step", exc)
        step = step.parent
    return ended


#: The module whose wrappers hold a decorated call's Step in a local.
_DECORATORS = __name__.rpartition(".")[0] + "._decorators"

#: Set (by the decorators, when they wrap one) once a coroutine, generator
#: or async generator function records steps: only then can a step wait in a
#: suspended one, and only then does the exit look for them.
suspendable_steps = False

#: The steps _end_steps_left_open ended, as (session id, step id): a
#: suspended coroutine or generator the interpreter closes later, as it
#: finalizes, must not end its step again (see _decorators._StepSpec.exit).
ended_at_exit: set[tuple[str, str]] = set()

#: The kinds of suspendable objects a decorator's wrapper can be, and the
#: names of what the exit reads of each: its frame, and whether it runs.
_SUSPENDABLE = {
    types.CoroutineType: ("coroutine", "cr_frame", "cr_running"),
    types.GeneratorType: ("generator", "gi_frame", "gi_running"),
    types.AsyncGeneratorType: ("async generator", "ag_frame", "ag_running"),
}


def _end_steps_left_open(why: str, *, on_sigterm: bool = False,
                         ended: set[tuple[str, str]] | None = None) -> None:
    """End, as failed with ``why``, the steps of the sessions auto_end is
    about to end that are still open while the process ends and that nothing
    else would end: at exit only daemon threads are left, which the
    interpreter stops without unwinding them, and a coroutine or generator
    that is suspended then is never resumed, so their steps would never end
    (Sentry ends a span left open when its transaction ends the same way,
    "cancelled" at that moment). Found where they are, so that the hot path
    keeps no register of open steps:

    * decorated steps other threads are inside of, in the decorators' frames
      on the threads' stacks;
    * decorated steps of suspended coroutines, generators and async
      generators (an asyncio task awaiting inside one), in the frames of the
      decorators' wrappers among the objects the garbage collector tracks,
      looked through only once such a function was decorated;
    * steps a plugin opened (``plugins.open_step``, ``step_scope``) and did
      not end: a framework run that never reported its end;
    * on SIGTERM (``on_sigterm``), the steps opened with ``create_step``
      too. At a normal exit those end with their session, without an error:
      leaving the last one for the session's end to close is the imperative
      API's way (the seed's own basic example does so).

    Innermost first, so that a step never ends after the one it is in.
    ``ended``: steps ended already, as (session id, step id). (A step that
    ends on its own in the moment between keeps this error; its end time is
    its own.)"""
    ending = [binding for binding in runtime.auto_end if binding.active]
    if not ending:
        return
    bindings = {id(binding) for binding in ending}
    found: dict[tuple[str, str], tuple[Step, str]] = {}
    seen = set(ended or ())
    for step, error in _steps_left_open(why, bindings, ending, on_sigterm):
        key = (step.session_id, step.step_id)
        if key not in seen:
            seen.add(key)
            found[key] = (step, error)
    ended_at_exit.update(found)
    for step, error in sorted(found.values(), key=lambda item: -_depth(item[0])):
        try:
            step.binding.state.open_steps.discard(step.step_id)
            step.end(error=error)
        except Exception as exc:  # noqa: BLE001
            record_internal_error("end_interrupted_step", exc)


def _steps_left_open(why: str, bindings: set[int], ending: list[Binding],
                     on_sigterm: bool) -> Iterator[tuple[Step, str]]:
    """The steps _end_steps_left_open ends, each with its error (a step may
    come more than once)."""
    yield from _steps_of_other_threads(why, bindings)
    if suspendable_steps:
        yield from _steps_of_suspended_calls(why, bindings)
    states = {id(binding.state): binding for binding in ending}
    for binding in states.values():
        state = binding.state
        for handle in list(state.open_handles.values()):
            yield handle, f"{why} while this step was open"
        if on_sigterm:
            for step_id in list(state.open_steps):
                yield Step(binding, step_id), why


def _steps_of_other_threads(why: str, bindings: set[int]) -> Iterator[tuple[Step, str]]:
    me = threading.get_ident()
    names = {thread.ident: thread.name for thread in threading.enumerate()}
    for ident, frame in sys._current_frames().items():
        if ident == me:
            continue
        error = f"{why} while this step ran (in thread {names.get(ident, ident)!r})"
        walked: FrameType | None = frame
        while walked is not None:
            for step in _steps_in(walked, bindings):
                yield step, error
            walked = walked.f_back


def _steps_of_suspended_calls(why: str, bindings: set[int]) -> Iterator[tuple[Step, str]]:
    """Decorated steps whose coroutine, generator or async generator is
    suspended (a running one is on a thread's stack)."""
    for obj in gc.get_objects():
        kind = _SUSPENDABLE.get(type(obj))
        if kind is None:
            continue
        name, frame_attr, running_attr = kind
        frame = getattr(obj, frame_attr)
        if frame is None or getattr(obj, running_attr):
            continue  # finished, or running (and on a stack)
        error = f"{why} while this step's {name} was suspended"
        for step in _steps_in(frame, bindings):
            yield step, error


def _steps_in(frame: FrameType, bindings: set[int]) -> list[Step]:
    """The steps of ``bindings`` a decorator's frame holds."""
    if frame.f_globals.get("__name__") != _DECORATORS:
        return []
    return [value for value in frame.f_locals.values()
            if isinstance(value, Step) and id(value.binding) in bindings]


def _depth(step: Step) -> int:
    depth, parent = 0, step.parent
    while parent is not None and depth < 10_000:
        depth, parent = depth + 1, parent.parent
    return depth


def _excepthook(exc_type: type[BaseException], exc: BaseException,
                tb: TracebackType | None) -> None:
    try:
        _record_crash(exc_type, exc, tb)
    except Exception as error:  # noqa: BLE001
        record_internal_error("excepthook", error)
    hook = _previous_excepthook or sys.__excepthook__
    hook(exc_type, exc, tb)


def _record_crash(exc_type: type[BaseException], exc: BaseException,
                  tb: TracebackType | None) -> None:
    summary = f"{exc_type.__name__}: {exc}"
    detail = "".join(traceback.format_exception(exc_type, exc, tb))
    for binding in list(runtime.auto_end):
        if binding.active and binding.state.capture_uncaught:
            binding.state.failure = f"uncaught exception: {summary}"
            record_error(binding, f"Uncaught exception: {summary}", detail)


def _exit_deadline() -> float:
    return time.monotonic() + _config.flush_timeout()


def end_sessions(failure: str | None = None, deadline: float | None = None) -> None:
    """End every auto_end session this process still holds, waiting for
    their delivery until ``deadline`` at most."""
    if deadline is None:
        deadline = _exit_deadline()
    for binding in list(runtime.auto_end):
        if not binding.active:
            continue
        try:
            reason = failure or binding.state.failure
            if failure is not None and not binding.state.capture_uncaught:
                reason = None  # the user asked that a crash not mark it failed
            _sessions.end(binding, failure=reason,
                          timeout=max(0.0, deadline - time.monotonic()))
        except Exception as exc:  # noqa: BLE001
            record_internal_error("auto_end", exc)


def shutdown(deadline: float | None = None) -> None:
    """Deliver what is queued until ``deadline`` (else the flush bound from
    now); what is left by then is spooled for the next process."""
    global _finished
    if _finished:
        return
    _finished = True
    if deadline is None:
        deadline = _exit_deadline()
    runtime.shutdown_all(max(0.0, deadline - time.monotonic()))


def _at_exit() -> None:
    deadline = _exit_deadline()
    try:
        _end_steps_left_open("interrupted at exit: the process ended")
    except Exception as exc:  # noqa: BLE001 - the sessions must end all the same
        record_internal_error("end_interrupted_step", exc)
    end_sessions(deadline=deadline)
    shutdown(deadline)


# Just before every fork (see before_fork); registered here, where it is done,
# rather than called from the runtime's own fork hooks.
os.register_at_fork(before=before_fork)
