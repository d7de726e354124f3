"""Helpers shared by the framework adapter tests (langchain, pydantic_ai,
openai_agents). Recordings are replayed through _cassettes (read in place)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lucidic.testing import Capture


def price_file(tmp_path: Path, provider: str, model: str, input_price: float,
               output_price: float) -> Path:
    """A LUCIDIC_PRICES override file adding one model's price."""
    path = tmp_path / "prices.json"
    path.write_text(json.dumps({provider: {model: {"input": input_price,
                                                   "output": output_price}}}))
    return path


def steps_by_action(captured: Capture) -> dict[str, dict[str, Any]]:
    return {step["action"]: step for step in captured.steps()}


def chain_of_actions(captured: Capture, step_id: str | None) -> list[str]:
    """The actions from the given step up to its root step."""
    by_id = {step["id"]: step for step in captured.steps()}
    actions = []
    while step_id is not None:
        step = by_id[step_id]
        actions.append(step["action"])
        step_id = step["parent_step_id"]
    return actions


def only(items: list[Any]) -> Any:
    assert len(items) == 1, f"expected exactly one, got {len(items)}: {items}"
    return items[0]
