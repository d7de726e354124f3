"""Fixtures for the provider adapter tests (openai and anthropic fixtures live
in _cassettes.py)."""

from __future__ import annotations

from _cassettes import restore_adapters  # noqa: F401 - a fixture
