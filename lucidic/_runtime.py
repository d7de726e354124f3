"""Process-wide machinery: which pipeline serves which sink, which sessions
this process must end at exit, and what happens across fork()."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections import OrderedDict
from typing import Any

from . import _config
from ._context import Binding, SessionIds, SessionState, process_slot
from ._deferred import deferred
from ._internal import record_internal_error
from ._pipeline import Pipeline
from ._sinks import LocalSink, Sink
from ._spool import Spool

# -- writer identity ------------------------------------------------------------
# Every step and event records which process wrote it (host, pid) and for
# which agent, so a session handed between processes and machines shows who
# did what. Computed once per process (and again in a forked child), so the
# hot path only merges a prepared dict into the record that creates a row.


class WriterIdentity:
    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        try:
            self.host = socket.gethostname() or "unknown"
        except OSError:
            self.host = "unknown"
        self.pid = os.getpid()

    def fields(self, agent_id: str | None) -> dict[str, Any]:
        """The writer columns for records made on behalf of ``agent_id`` (with
        no agent, none: a None leaves a column as it is, as an absent field does,
        and costs the store more to bind)."""
        if agent_id is None:
            return {"writer_host": self.host, "writer_pid": self.pid}
        return {"writer_host": self.host, "writer_pid": self.pid, "writer_agent": agent_id}


writer = WriterIdentity()


# -- sinks and pipelines --------------------------------------------------------

#: How many let-go sessions' ids a process remembers (see Runtime.released_ids).
RELEASED_IDS = 4096


class Runtime:
    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.pipelines: dict[str, Pipeline] = {}
        self.sink_override: Sink | None = None  # set by lucidic.testing
        self.states: dict[str, SessionState] = {}
        #: The ids of sessions this process wrote and let go (detached): a
        #: session continued here again gets them back, so that update_step()
        #: and end_event() still know the ids it made before. The newest
        #: RELEASED_IDS only: a process making sessions without end keeps
        #: no more than that.
        self.released_ids: OrderedDict[str, SessionIds] = OrderedDict()
        #: Bindings to end at exit (auto_end=True), in the order they were made.
        self.auto_end: list[Binding] = []

    def make_sink(self, base_url: str | None, api_key: str | None) -> Sink:
        if self.sink_override is not None:
            return self.sink_override
        if base_url:
            # Imported when first needed: it loads requests, which a program
            # recording into the embedded store never pays for.
            from ._http import shared_sink

            return shared_sink(base_url, api_key)
        return LocalSink(_config.store_path())

    def pipeline_for(self, sink: Sink) -> Pipeline:
        """One pipeline per destination, started on first use."""
        with self.lock:
            pipeline = self.pipelines.get(sink.identity)
            if pipeline is None:
                home = _config.data_home()
                spool = Spool(home / "spool" / sink.identity,
                              rejected=home / "rejected" / f"{sink.identity}.jsonl")
                pipeline = Pipeline(sink, spool, max_queue=_config.max_queue(),
                                    durable=_config.durable())
                self.pipelines[sink.identity] = pipeline
            pipeline.start()
            return pipeline

    def state(self, session_id: str) -> SessionState:
        with self.lock:
            state = self.states.get(session_id)
            if state is None:
                ids = self.released_ids.pop(session_id, None) or SessionIds()
                state = self.states[session_id] = SessionState(session_id, ids)
            return state

    def register(self, binding: Binding) -> None:
        with self.lock:
            if binding.auto_end:
                self.auto_end.append(binding)

    def release(self, binding: Binding) -> None:
        """The binding stops writing (detached, or its session ended)."""
        with self.lock:
            binding.active = False
            if binding in self.auto_end:
                self.auto_end.remove(binding)
            state = binding.state
            if binding in state.bindings:
                state.bindings.remove(binding)
            if not state.bindings and self.states.get(state.id) is state:
                del self.states[state.id]
                if not state.finished:
                    self.released_ids[state.id] = state.ids
                    if len(self.released_ids) > RELEASED_IDS:
                        self.released_ids.popitem(last=False)
            if process_slot.binding is binding:
                process_slot.binding = None

    def finish_state(self, state: SessionState) -> None:
        """The session ended: every binding of it in this process stops."""
        state.finished = True
        for binding in list(state.bindings):
            self.release(binding)

    def forget_pipeline(self, pipeline: Pipeline, timeout: float, *,
                        fail_fast: bool = False) -> None:
        """Stop a pipeline and release every binding that writes through it
        (once the deferred jobs, which may write through it, have run);
        ``fail_fast``: spool what it holds once a delivery fails."""
        deadline = time.monotonic() + timeout
        deferred.wait(timeout)
        timeout = max(0.0, deadline - time.monotonic())
        with self.lock:
            for state in list(self.states.values()):
                for binding in list(state.bindings):
                    if binding.pipeline is pipeline:
                        self.release(binding)
            if self.pipelines.get(pipeline.sink.identity) is pipeline:
                del self.pipelines[pipeline.sink.identity]
        pipeline.shutdown(timeout, fail_fast=fail_fast)

    def flush_all(self, timeout: float, *, fail_fast: bool = False) -> bool:
        deadline = time.monotonic() + timeout
        ok = deferred.wait(timeout)  # what the deferred jobs record is flushed too
        for pipeline in list(self.pipelines.values()):
            remaining = max(0.0, deadline - time.monotonic())
            ok = pipeline.flush(remaining, fail_fast=fail_fast) and ok
        return ok

    def shutdown_all(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        ok = deferred.wait(timeout)
        for pipeline in list(self.pipelines.values()):
            remaining = max(0.0, deadline - time.monotonic())
            try:
                ok = pipeline.shutdown(remaining) and ok
            except Exception as exc:  # noqa: BLE001
                record_internal_error("shutdown", exc)
                ok = False
        return ok

    # -- fork -----------------------------------------------------------------

    def before_fork(self) -> None:
        self.lock.acquire()
        for pipeline in self.pipelines.values():
            pipeline.before_fork()

    def after_fork_in_parent(self) -> None:
        for pipeline in self.pipelines.values():
            pipeline.after_fork_in_parent()
        self.lock.release()

    def after_fork_in_child(self) -> None:
        self.lock = threading.RLock()
        writer.reset()
        self.released_ids.clear()  # the parent goes on counting with their prefixes
        for state in self.states.values():
            state.ids.reset()  # the parent goes on counting with the same prefix
            for binding in state.bindings:
                binding.writer = writer.fields(binding.agent_id)
        for pipeline in self.pipelines.values():
            pipeline.after_fork_in_child()
        # The child did not start or continue the parent's sessions: it records
        # into them but never ends them. Its own exit only flushes.
        self.auto_end = []


runtime = Runtime()


os.register_at_fork(before=lambda: runtime.before_fork(),
                    after_in_parent=lambda: runtime.after_fork_in_parent(),
                    after_in_child=lambda: runtime.after_fork_in_child())


def flush_pipeline(pipeline: Pipeline, timeout: float, *, fail_fast: bool = False) -> bool:
    """Flush one pipeline, after the deferred jobs submitted so far (whose
    records may go through it), within ``timeout`` in all."""
    deadline = time.monotonic() + timeout
    ok = deferred.wait(timeout)
    return pipeline.flush(max(0.0, deadline - time.monotonic()), fail_fast=fail_fast) and ok
