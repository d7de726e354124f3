"""Sums over many rows that cannot fail: what one row may hold, a sum of
rows may not (two token counts near 2**63-1; costs whose sum is beyond any
float). Token sums saturate at the 64-bit limits, exact in between, and
cost sums stay finite, on both databases."""

from __future__ import annotations

from ..limits import INT_MAX, INT_MIN, MAX_COST
from ..store import Store

#: An integer's low part (int_parts) holds its low PART_BITS bits: the
#: integer is PART times its high part plus its low part.
PART_BITS = 32
PART = 2 ** PART_BITS


def saturated(store: Store, expression: str) -> str:
    """SQL of an integer ``expression`` (which may have overflowed) held
    within INT_MIN..INT_MAX."""
    if store.dialect == "postgresql":
        # Not GREATEST/LEAST: they skip a NULL, which would come out INT_MAX.
        return (f"CASE WHEN {expression} > {INT_MAX} THEN {INT_MAX} WHEN {expression} < "
                f"{INT_MIN} THEN {INT_MIN} ELSE {expression} END")
    # SQLite's integer arithmetic turns REAL when it overflows, and CAST of
    # a REAL beyond the 64-bit range gives the nearest limit.
    return f"CAST({expression} AS INTEGER)"


def int_sum(store: Store, expression: str) -> str:
    """SQL of SUM(``expression``), an integer column, saturated at the
    64-bit limits (NULL when no row has a value)."""
    if store.dialect == "postgresql":
        # SUM over BIGINT is NUMERIC there: it cannot overflow.
        return saturated(store, f"SUM({expression})")
    # SQLite's SUM raises "integer overflow". The high and the low 32 bits
    # are summed apart, which cannot overflow before 2**31 rows, then joined.
    return parts_sum(store, *int_parts(expression))


def cost_sum(expression: str) -> str:
    """SQL of SUM(``expression``), a cost column, each cost counted at most
    MAX_COST either way: what ingest refuses now but a database may hold
    from before (three costs of 1e308 summed to inf, or NaN, in SQLite and
    failed "out of range" in PostgreSQL). NULL when no row has a value."""
    return f"SUM({clamped_cost(expression)})"


def clamped_cost(expression: str) -> str:
    """SQL of one cost counted at most MAX_COST either way (see cost_sum)."""
    return (f"CASE WHEN {expression} > {MAX_COST!r} THEN {MAX_COST!r} "
            f"WHEN {expression} < {-MAX_COST!r} THEN {-MAX_COST!r} ELSE {expression} END")


def int_parts(expression: str) -> tuple[str, str]:
    """SQL of an integer's high and low 32 bits: sums of each, however
    grouped, make int_sum's exact sum (see parts_sum)."""
    return f"({expression}) >> {PART_BITS}", f"({expression}) & {PART - 1}"


def parts_sum(store: Store, high: str, low: str) -> str:
    """SQL of the sum of integers from the sums of their parts (int_parts),
    saturated as int_sum's (NULL when no row has a value)."""
    return saturated(store, f"SUM({high}) * {PART} + SUM({low})")
