"""Shared fixtures. Every test gets its own LUCIDIC_HOME and a clean process
state; swallowed internal errors fail the test unless it is marked
``allow_internal_errors`` (production swallows, tests fail loudly)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers import ENV_VARS, ReadableStore, run_python  # noqa: F401 - re-exported for older imports
from lucidic import _internal
from lucidic._context import current_step, last_event, process_slot, scope_binding
from lucidic._internal import internal_errors
from lucidic._runtime import runtime

ROOT = Path(__file__).resolve().parent.parent
SHARED_CASSETTES = Path(os.environ.get("LUCIDIC_SHARED_CASSETTES",
                                       ROOT.parent / "shared" / "cassettes"))

@pytest.fixture(autouse=True)
def lucidic_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    home = tmp_path / "lucidic-home"
    monkeypatch.setenv("LUCIDIC_HOME", str(home))
    _internal.reset_warnings()  # each test sees the warnings it causes
    for name in ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    yield home
    # fail_fast: what a sink that is down (or was taken down by the test)
    # refuses is spooled at once, not after waiting out the whole bound.
    for pipeline in list(runtime.pipelines.values()):
        runtime.forget_pipeline(pipeline, timeout=5.0, fail_fast=True)
    process_slot.binding = None
    # What a test left bound in this thread's context (a scope it never
    # left, on code that failed) must not become the next test's session.
    for var in (scope_binding, current_step, last_event):
        var.set(None)


@pytest.fixture(autouse=True)
def fail_on_internal_errors(request: pytest.FixtureRequest) -> Iterator[None]:
    before = sum(internal_errors.values())
    snapshot = dict(internal_errors)
    yield
    if request.node.get_closest_marker("allow_internal_errors"):
        return
    after = sum(internal_errors.values())
    if after != before:
        grown = {k: v - snapshot.get(k, 0) for k, v in internal_errors.items()
                 if v != snapshot.get(k, 0)}
        pytest.fail(f"lucidic swallowed internal errors during the test: {grown}")


@pytest.fixture
def store(lucidic_home: Path) -> Iterator[ReadableStore]:
    """The embedded store this test's code writes to (read it after lai.flush())."""
    s = ReadableStore(lucidic_home / "lucidic.db")
    yield s
    s.close()


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """`make test` runs `-n 4 --dist loadgroup`: each xdist worker appends the
    test's xdist_group to its node id (``test_x.py::test_y@port-8000``) and
    the scheduler sends a group's tests to one worker. pytest 9.2 reads a node
    id from a structured id that pytest-xdist 3.8 leaves alone (it sets the
    old ``_nodeid``; pytest-dev/pytest-xdist#1386), so the suffix was lost and
    the groups were spread over the workers: the port-8000 tests waited for
    each other's port, and module fixtures were made on each. The suffix is
    added here where xdist's was lost."""
    if not getattr(config.option, "loadgroup", False):
        return  # not an xdist worker under --dist loadgroup
    for item in items:
        groups = sorted({str(mark.args[0] if mark.args else mark.kwargs.get("name", "default"))
                         for mark in item.iter_markers("xdist_group")})
        suffix = "@" + "_".join(groups)
        structured = getattr(item, "_id", None)
        if groups and not item.nodeid.endswith(suffix) and hasattr(structured, "parse"):
            item._id = type(structured).parse(item.nodeid + suffix)
