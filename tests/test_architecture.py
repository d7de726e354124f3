"""The structure the house rules ask for, checked: the import contracts of
pyproject.toml (layers, the SDK never importing the server or the UI, provider
plugins using the public plugin API only), every module placed in a layer,
and an interface for sinks that says everything its callers use."""

from __future__ import annotations

import ast
import pkgutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

import lucidic
import lucidic as lai
from helpers import ROOT, ReadableStore, tomllib
from lucidic._runtime import runtime
from lucidic._sinks import Sink
from lucidic.errors import APIKeyVerificationError
from lucidic.evals._backend import backend_for_sink
from lucidic.store import Record


def test_the_import_contracts_of_pyproject_hold() -> None:
    lint_imports = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run([str(lint_imports), "--no-cache"], capture_output=True, text=True,
                            cwd=ROOT, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    assert f"Contracts: {len(contracts['contracts'])} kept, 0 broken." in result.stdout


def test_every_module_of_the_package_has_its_place_in_the_layers() -> None:
    # A module left out of the layers would be checked by no contract.
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    (layers,) = [c for c in config["contracts"] if c["type"] == "layers"]
    placed = {name.strip() for layer in layers["layers"]
              for name in layer.replace("|", ":").split(":")}
    modules = {m.name for m in pkgutil.iter_modules(lucidic.__path__)}
    assert modules == placed


def test_nothing_in_the_package_probes_a_sink_with_getattr_or_hasattr() -> None:
    probes = []
    for path in sorted((ROOT / "lucidic").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                    and node.func.id in ("getattr", "hasattr") and node.args
                    and "sink" in ast.unparse(node.args[0]).lower()):
                probes.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert probes == []


class _Minimal(Sink):
    """A sink with only what Sink requires; everything else is the defaults."""

    def __init__(self) -> None:
        self.identity = "minimal-sink-for-tests"
        self.store = ReadableStore(":memory:")

    def write(self, records: Sequence[Record]) -> None:
        self.store.write(records)

    def lookup_session(self, session_id: str) -> dict[str, Any] | None:
        return self.store.get_session(session_id)


@pytest.fixture
def minimal_sink() -> Any:
    sink = _Minimal()
    previous, runtime.sink_override = runtime.sink_override, sink
    try:
        yield sink
    finally:
        lai.shutdown()
        runtime.sink_override = previous
        sink.store.close()


def test_a_sink_needs_only_write_and_lookup_session_the_rest_has_defaults(minimal_sink) -> None:
    session_id = lai.init(session_name="minimal", auto_end=False)
    lai.create_event(description="through the defaults")
    lai.end_session()
    assert lai.flush(5)
    session = minimal_sink.store.get_session(session_id)
    assert session is not None and session["project"] == "default" and session["is_finished"]
    assert backend_for_sink(minimal_sink) is None  # neither the embedded store nor a server
    minimal_sink.after_fork_in_child()  # a default that has nothing to drop


def test_a_sink_missing_a_required_method_cannot_be_made() -> None:
    class NoLookup(Sink):
        identity = "no-lookup"

        def write(self, records: Sequence[Record]) -> None:
            pass

    with pytest.raises(TypeError, match="lookup_session"):
        NoLookup()  # type: ignore[abstract]


def test_init_asks_the_sink_to_verify_before_the_first_record(minimal_sink) -> None:
    def refuse() -> None:
        raise APIKeyVerificationError("refused by the test's sink")

    minimal_sink.verify = refuse
    with pytest.raises(APIKeyVerificationError, match="refused by the test's sink"):
        lai.init(session_name="never")
    assert lai.flush(5) and minimal_sink.store.list_sessions() == []
