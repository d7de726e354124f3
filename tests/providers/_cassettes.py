"""Replaying recorded provider traffic (vcrpy, record_mode="none") and reading
what a recording implies (model, tokens, cost), independently of the adapters.

The shared recordings are read in place from ../shared/cassettes beside the
checkout (or LUCIDIC_SHARED_CASSETTES); they are never copied into the project.
The project's own hand-written recordings live in cassettes/ at the root.
"""

from __future__ import annotations

import gzip
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import vcr
import yaml

ROOT = Path(__file__).resolve().parents[2]
SHARED_CASSETTES = Path(os.environ.get("LUCIDIC_SHARED_CASSETTES",
                                       ROOT.parent / "shared" / "cassettes"))
OWN_CASSETTES = ROOT / "cassettes"
PRICES = json.loads((ROOT / "lucidic" / "data" / "prices.json").read_text("utf-8"))

_vcr = vcr.VCR(record_mode="none", match_on=("method", "scheme", "host", "port", "path"))


def shared_path(relative: str) -> Path:
    path = SHARED_CASSETTES / relative
    if not path.is_file():
        pytest.skip(f"recorded provider traffic {relative} not found under {SHARED_CASSETTES}: "
                    "put the shared cassettes beside the checkout (../shared/cassettes) or "
                    "point LUCIDIC_SHARED_CASSETTES at them")
    return path


def own_path(relative: str) -> Path:
    path = OWN_CASSETTES / relative
    assert path.is_file(), f"the project's cassette {path} is missing"
    return path


@contextmanager
def replay(path: Path, *, allow_repeats: bool = False) -> Iterator[Any]:
    """Replay a cassette; nothing reaches the network, nothing is recorded."""
    with _vcr.use_cassette(str(path), allow_playback_repeats=allow_repeats) as cassette:
        yield cassette


def interaction(path: Path, index: int = 0) -> dict[str, Any]:
    with open(path, encoding="utf-8") as f:
        return yaml.safe_load(f)["interactions"][index]


def request_body(path: Path, index: int = 0) -> dict[str, Any]:
    return json.loads(interaction(path, index)["request"]["body"])


def response_text(path: Path, index: int = 0) -> str:
    body = interaction(path, index)["response"]["body"]["string"]
    if isinstance(body, bytes):
        try:
            body = gzip.decompress(body)
        except OSError:
            pass
        body = body.decode("utf-8")
    return body


def response_json(path: Path, index: int = 0) -> dict[str, Any]:
    return json.loads(response_text(path, index))


def response_events(path: Path, index: int = 0) -> list[dict[str, Any]]:
    """The JSON data lines of a server-sent-events body."""
    events = []
    for line in response_text(path, index).splitlines():
        if line.startswith("data:") and line[5:].strip() not in ("", "[DONE]"):
            events.append(json.loads(line[5:]))
    return events


def expected_cost(provider: str, model: str, input_tokens: int, output_tokens: int = 0,
                  cached_tokens: int = 0) -> float:
    """tokens × price, from the price table read here (longest matching prefix)."""
    models = PRICES[provider]
    name = max((m for m in models if model.startswith(m)), key=len)
    price = models[name]
    uncached = input_tokens - cached_tokens
    return (uncached * price["input"] + cached_tokens * price.get("cached_input", price["input"])
            + output_tokens * price.get("output", 0.0)) / 1_000_000


@pytest.fixture
def restore_adapters() -> Iterator[None]:
    """Uninstrument every provider adapter after the test, so that each test
    starts from the libraries as they were."""
    yield
    from lucidic import plugins

    for adapter in list(plugins._adapters.values()):
        adapter.uninstrument()
