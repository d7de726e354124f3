"""Checking what the public API is given: a clear InvalidOperationError for
bad input, before anything is recorded.

Shared by the public calls (``_api``), the decorators, experiments and
``lucidic.evals``; the recording core below them takes values already
checked here.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import _config
from ._numbers import bounded_cost, finite_float, short_number_repr
from ._records import Mask, items_of, text_field
from .errors import InvalidOperationError
from .limits import MAX_COST, MAX_ID_LENGTH


def session_id_arg(value: Any, name: str = "session_id") -> str:
    if not isinstance(value, str):
        raise InvalidOperationError(
            f"{name} must be a string (the id returned by lai.init()), "
            f"not {type(value).__name__}")
    if not _is_id(value):
        raise InvalidOperationError(
            f"{name} {value[:80]!r} is not a valid session id: use 1 to {MAX_ID_LENGTH} "
            "printable characters")
    return value


def _is_id(value: str) -> bool:
    """What an id may be: 1 to MAX_ID_LENGTH printable characters."""
    return bool(value) and len(value) <= MAX_ID_LENGTH and value.isprintable()


def number_arg(name: str, value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidOperationError(f"{name} must be a number, not {type(value).__name__} "
                                    f"{value!r:.80}")
    number = finite_float(value)
    if number is None:
        raise InvalidOperationError(f"{name} must be a finite number, not "
                                    f"{short_number_repr(value)}")
    return number


def cost_arg(name: str, value: Any) -> float | None:
    """A cost in dollars: a finite number within MAX_COST (the server's
    bound, so that any sum of costs stays finite)."""
    cost = number_arg(name, value)
    if cost is not None and bounded_cost(cost) is None:
        raise InvalidOperationError(f"{name} must be within ±{MAX_COST:g} dollars, not "
                                    f"{short_number_repr(value)}")
    return cost


def bool_arg(name: str, value: Any) -> bool | None:
    if value is None or isinstance(value, bool):
        return value
    raise InvalidOperationError(f"{name} must be True, False or None, not {value!r:.80}")


def mask_arg(value: Any) -> Mask | None:
    if value is None or callable(value):
        return value  # type: ignore[no-any-return]
    raise InvalidOperationError(
        f"masking_function must be a callable taking and returning text, not "
        f"{type(value).__name__}")


def tags_arg(value: Any) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, str) or not isinstance(value, (list, tuple, set, frozenset)):
        raise InvalidOperationError(f"tags must be a list of strings, not {type(value).__name__}")
    return [text_field(tag) or "" for tag in items_of(value)]


def id_arg(name: str, value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not _is_id(value):
        raise InvalidOperationError(f"{name} must be an id string of 1 to {MAX_ID_LENGTH} "
                                    f"printable characters, not {value!r:.80}")
    return value


def rubrics_arg(value: Any) -> list[str] | None:
    """Rubric names (a rubric object stands for its name)."""
    if value is None:
        return None
    if isinstance(value, str) or not isinstance(value, (list, tuple)):
        raise InvalidOperationError(f"rubrics must be a list of rubric names, not {value!r:.80}")
    names = []
    for item in items_of(value):
        name = item if isinstance(item, str) else getattr(item, "name", None)
        if not isinstance(name, str) or not name.strip():
            raise InvalidOperationError(f"rubrics must be a list of rubric names, not "
                                        f"{item!r:.80}")
        names.append(name)
    return names


def evaluation_fields(production_monitoring: Any, mass_sim_id: Any, experiment_id: Any,
                      rubrics: Any) -> dict[str, Any]:
    """The hosted SDK's init() keywords, as session fields. An experiment or
    mass simulation id not seen before is created when the session is stored."""
    return {"production_monitoring": bool_arg("production_monitoring",
                                              production_monitoring) or None,
            "mass_sim_id": id_arg("mass_sim_id", mass_sim_id),
            "experiment_id": id_arg("experiment_id", experiment_id),
            "rubrics": rubrics_arg(rubrics)}


def screenshot_args(screenshot: Any, screenshot_path: Any) -> tuple[str | None, str | None]:
    """A screenshot given inline (base64) or by path, which is read now."""
    if screenshot is not None or screenshot_path is None:
        return text_field(screenshot), text_field(screenshot_path)
    path = Path(str(screenshot_path))
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InvalidOperationError(
            f"cannot read screenshot_path {str(path)!r}: {exc.strerror or exc}") from exc
    return base64.b64encode(data).decode("ascii"), str(path)


def screenshots_arg(value: Any) -> Any:
    if value is not None and (isinstance(value, str) or not isinstance(value, (list, tuple))):
        raise InvalidOperationError("screenshots must be a list of base64 strings, not "
                                    f"{type(value).__name__}")
    return value


def record_id_arg(name: str, value: Any, what: str) -> str:
    """A step or event id the caller names (update_step(step_id=...))."""
    if not isinstance(value, str) or not value:
        raise InvalidOperationError(f"{name} must be {what} id string, not {value!r:.80}")
    return value


#: The longest wait flush() and shutdown() take (longer ones overflow the clock).
_MAX_TIMEOUT = 1e9


def timeout_arg(value: Any) -> float:
    """flush(timeout) and friends: seconds, by default the flush bound."""
    timeout = _config.flush_timeout() if value is None else number_arg("timeout", value)
    assert timeout is not None
    return min(timeout, _MAX_TIMEOUT)


class Options:
    """init/continue options, checked and resolved against the environment."""

    __slots__ = ("agent_id", "api_key", "auto_end", "base_url", "mask", "providers")

    def __init__(self, *, lucidic_api_key: str | None, api_key: str | None,
                 agent_id: str | None, providers: Sequence[str] | None,
                 masking_function: Any, auto_end: Any) -> None:
        key = lucidic_api_key if lucidic_api_key is not None else api_key
        self.api_key = key if key is not None else _config.env("LUCIDIC_API_KEY")
        self.agent_id = agent_id if agent_id is not None else _config.env("LUCIDIC_AGENT_ID")
        for name, value in (("api key", self.api_key), ("agent_id", self.agent_id)):
            if value is not None and not isinstance(value, str):
                raise InvalidOperationError(f"{name} must be a string, not {type(value).__name__}")
        self.base_url = _config.base_url()
        self.mask = mask_arg(masking_function)
        auto = bool_arg("auto_end", auto_end)
        self.auto_end = True if auto is None else auto
        if providers is not None and (isinstance(providers, str)
                                      or not isinstance(providers, (list, tuple))):
            raise InvalidOperationError(
                f"providers must be a list of names such as ['openai'], not {providers!r:.80}")
        self.providers = list(items_of(providers or ()))
