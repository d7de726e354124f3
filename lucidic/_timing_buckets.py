"""How the dashboard's LLM timings are counted by hour, model and bucket of
value (``timing_counts``, schema migration 10), so that a percentile reads
only the calls of the one bucket that holds its rank (lucidic.reading.percentiles).

A bucket is a sixteenth of a power of two: value v in [2**e, 2**(e+1)) is
in bucket 16*e + floor(16 * (v - 2**e) / 2**e), whose bounds are exact
floats; every value below 2**MIN_EXPONENT (zero, a negative) is in one
bucket, every value from 2**TOP_EXPONENT on in another. The buckets are
ordered as their values, so counting calls bucket by bucket finds the
bucket of a rank. The SQL is the same on SQLite and PostgreSQL and computes
exactly the same buckets on both (a power of two divides exactly, and no
function beyond CAST is needed), which lets a migration fill the table.
"""

from __future__ import annotations

#: Buckets per power of two (each spans 1/16 of its power: values within 6.25%).
PER_POWER = 16
#: Values below 2**MIN_EXPONENT (about a microsecond) share one bucket ...
MIN_EXPONENT = -20
#: ... and so do values from 2**TOP_EXPONENT (about 24 days) on.
TOP_EXPONENT = 21
BOTTOM_BUCKET = (MIN_EXPONENT - 1) * PER_POWER
TOP_BUCKET = TOP_EXPONENT * PER_POWER
#: The timings counted, by their number in timing_counts.measure.
MEASURES = {"duration": 1, "time_to_first_token": 2}
HOUR = 3600


def floor_sql(expression: str) -> str:
    """SQL of floor(``expression``) as an integer, on either database (no
    floor() in a SQLite built without its math functions; PostgreSQL's CAST
    rounds, SQLite's truncates: either is corrected by one where it passed)."""
    whole = f"CAST({expression} AS BIGINT)"
    return f"({whole} - CASE WHEN {whole} > {expression} THEN 1 ELSE 0 END)"


def hour_sql(at: str) -> str:
    """SQL of the hour (whole hours since the epoch) of a time ``at``."""
    return floor_sql(f"({at}) / {HOUR}")


def bucket_sql(value: str) -> str:
    """SQL of the bucket of ``value`` (not NULL)."""
    branches = [f"WHEN {value} >= {float(2 ** TOP_EXPONENT)!r} THEN {TOP_BUCKET}"]
    for exponent in range(TOP_EXPONENT - 1, MIN_EXPONENT - 1, -1):
        power = 2.0 ** exponent
        # (value - power) is exact, and so is dividing it by a power of two.
        within = floor_sql(f"({value} - {power!r}) / {power / PER_POWER!r}")
        branches.append(f"WHEN {value} >= {power!r} THEN {exponent * PER_POWER} + {within}")
    return f"(CASE {' '.join(branches)} ELSE {BOTTOM_BUCKET} END)"


def bucket_bounds(bucket: int) -> tuple[float | None, float | None]:
    """The values of ``bucket``: from the first (None: no lower bound) up to,
    not including, the second (None: no upper bound)."""
    if bucket <= BOTTOM_BUCKET:
        return None, 2.0 ** MIN_EXPONENT
    if bucket >= TOP_BUCKET:
        return 2.0 ** TOP_EXPONENT, None
    exponent, part = divmod(bucket, PER_POWER)
    power = 2.0 ** exponent
    step = power / PER_POWER
    return power + part * step, power + (part + 1) * step


#: llm_timings' columns that counts_sql reads.
COUNTED = "project, started_at, model, duration, time_to_first_token"


def counts_sql(where: str, sign: int = 1, rows: str = "llm_timings") -> str:
    """The statement adding ``sign`` times the counts of the llm_timings rows
    ``where`` (SQL over its columns) to timing_counts; of the rows of
    ``rows`` (a relation with the columns COUNTED: on PostgreSQL, a WITH
    entry deleting or inserting llm_timings' rows RETURNING them, which the
    caller puts before the statement)."""
    selects = " UNION ALL ".join(
        f"SELECT {number} AS measure, {hour_sql('started_at')} AS hour, model, "
        f"{bucket_sql(column)} AS bucket, CASE WHEN project IS NULL THEN 1 ELSE 0 END "
        f"AS orphan, COALESCE(project, '') AS project FROM {rows} "
        f"WHERE ({where}) AND {column} IS NOT NULL"
        for column, number in MEASURES.items())
    return ("INSERT INTO timing_counts (measure, hour, model, bucket, orphan, project, calls) "
            f"SELECT measure, hour, model, bucket, orphan, project, {sign} * COUNT(*) "
            f"FROM ({selects}) counted WHERE 1 = 1 "
            "GROUP BY measure, hour, model, bucket, orphan, project "
            "ON CONFLICT (measure, hour, model, bucket, orphan, project) "
            "DO UPDATE SET calls = timing_counts.calls + excluded.calls")
