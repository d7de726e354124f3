"""Fixtures for the evaluation tests: the provider stub, and the support
module the child processes import (PYTHONPATH)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from provider_stub import ProviderStub

HERE = Path(__file__).resolve().parent


@pytest.fixture
def provider() -> Iterator[ProviderStub]:
    stub = ProviderStub()
    yield stub
    stub.close()


@pytest.fixture
def support_env(provider: ProviderStub) -> dict[str, str]:
    """What a child process needs to import evals_support and to reach the stub."""
    return {"PYTHONPATH": str(HERE), "OPENAI_BASE_URL": provider.url + "/v1",
            "OPENAI_API_KEY": "sk-test", "ANTHROPIC_BASE_URL": provider.url,
            "ANTHROPIC_API_KEY": "sk-ant-test"}
