"""Cases: the inputs an experiment runs its task on."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .._records import to_jsonable
from ..errors import InvalidOperationError

_MAX_ID = 200


def canonical_json(value: Any) -> str:
    """One text for one value, whichever process or run made it: keys
    sorted, objects JSON cannot hold as ``to_jsonable`` renders them."""
    return json.dumps(to_jsonable(value), sort_keys=True, ensure_ascii=False,
                      separators=(",", ":"))


@dataclass(frozen=True)
class Case:
    """One case: the task's ``input``, what it should produce (``expected``,
    for evaluators to compare with), an optional ``name`` and ``metadata``.

    A case's ``id`` is stable across runs and processes: its name, or else a
    hash of its input, so the same case in two experiments is compared with
    itself."""

    input: Any
    expected: Any = None
    name: str | None = None
    metadata: Mapping[str, Any] | None = field(default=None, hash=False, compare=False)

    def __post_init__(self) -> None:
        if self.name is not None:
            if not isinstance(self.name, str) or not self.name.strip():
                raise InvalidOperationError(f"a case's name must be a non-empty string, not "
                                            f"{self.name!r:.80}")
            if len(self.name) > _MAX_ID or not self.name.isprintable():
                raise InvalidOperationError(f"case name {self.name[:80]!r} must be 1 to "
                                            f"{_MAX_ID} printable characters")
        if self.metadata is not None and not isinstance(self.metadata, Mapping):
            raise InvalidOperationError(f"a case's metadata must be a mapping, not "
                                        f"{type(self.metadata).__name__}")

    @property
    def id(self) -> str:
        if self.name is not None:
            return self.name
        digest = hashlib.sha256(canonical_json(self.input).encode("utf-8", "surrogatepass"))
        return "case-" + digest.hexdigest()[:12]


def as_cases(cases: Any) -> list[Case]:
    """The cases given to an experiment: Case objects, or bare inputs (each
    becomes ``Case(input)``). Two cases with the same id would be one case in
    every comparison, so that is refused."""
    if isinstance(cases, (str, bytes, Mapping)) or not isinstance(cases, Iterable):
        raise InvalidOperationError(
            "cases must be a list of lucidic.evals.Case (or of inputs), not "
            f"{type(cases).__name__}")
    out = [c if isinstance(c, Case) else Case(c) for c in cases]
    seen: dict[str, int] = {}
    for index, case in enumerate(out):
        earlier = seen.setdefault(case.id, index)
        if earlier != index:
            raise InvalidOperationError(
                f"cases {earlier} and {index} have the same id {case.id!r} (the same name, or "
                "the same input and no name); give them distinct names")
    return out
