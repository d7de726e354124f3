"""How experiments, their runs, comparisons and mass simulations read as
text: the tables of ``lucidic experiments`` / ``lucidic mass-sims`` and of
``ExperimentResult.print()``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ._render import duration, money, short, visible, when
from .reading.summary import score_names


def value(item: Any) -> str:
    """A score as a person reads it: pass/fail, three digits, or the label."""
    if item is None:
        return "-"
    if isinstance(item, bool):
        return "pass" if item else "fail"
    if isinstance(item, float):
        return f"{item:.3g}"
    return short(item, 40)


def signed(delta: float | None, unit: str = "") -> str:
    if delta is None:
        return "-"
    if unit == "$":
        return ("+" if delta >= 0 else "-") + money(abs(delta))
    if unit == "s":
        return ("+" if delta >= 0 else "-") + duration(abs(delta)) if delta else "+0"
    return f"{delta:+.3g}"


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    header = [visible(h) for h in header]
    rows = [[visible(cell) for cell in row] for row in rows]
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(line.rstrip() for line in lines)


def _score_cell(run: Mapping[str, Any], name: str) -> str:
    if name in (run.get("evaluation_errors") or {}):
        return "error"
    return value((run.get("scores") or {}).get(name))


def runs_table(runs: Sequence[Mapping[str, Any]]) -> str:
    names = score_names(runs)
    rows = [[str(r.get("case_id")), str(r.get("repeat")),
             *(_score_cell(r, n) for n in names),
             money(r.get("cost") or 0.0), duration(r.get("duration")) or "-",
             short(r.get("error"), 50) if r.get("error") else
             ("running" if r.get("status") == "running" else "")] for r in runs]
    return table(["case", "repeat", *names, "cost", "duration", "error"], rows)


def stats_line(stats: Mapping[str, Mapping[str, Any]]) -> str:
    parts = []
    for name, entry in stats.items():
        if "value" in entry:
            parts.append(f"{name} {value(entry['value'])}")
            continue
        labels = entry.get("labels") or {}
        if entry.get("mean") is None and labels:  # label scores: each label counted
            counted = [f"{value(label)} {count}" for label, count in list(labels.items())[:4]]
            bits = [" ".join(counted) + (" …" if len(labels) > 4 else "")]
        else:
            bits = [f"mean {value(entry.get('mean'))}"]
        if entry.get("pass_rate") is not None:
            bits.append(f"pass {entry['pass_rate']:.0%}")
        if entry.get("spread"):
            bits.append(f"spread {entry['spread']:.3g}")
        if entry.get("missing"):
            bits.append(f"{entry['missing']} missing")
        if entry.get("errors"):
            bits.append(f"{entry['errors']} evaluator error{'s' if entry['errors'] > 1 else ''}")
        parts.append(f"{name} " + ", ".join(bits))
    return "summary  " + (" | ".join(parts) if parts else "(no scores)")


def evaluation_errors(runs: Sequence[Mapping[str, Any]], shown: int = 10) -> str:
    """The evaluators that failed, a line each (the first ``shown``): which
    run, which evaluator, and its error. Empty when none failed."""
    failures = [(r, name, error) for r in runs
                for name, error in (r.get("evaluation_errors") or {}).items()]
    lines = [visible(f"  case {r.get('case_id')} repeat {r.get('repeat')}, {name}: "
                     f"{short(error, 100)}") for r, name, error in failures[:shown]]
    if len(failures) > shown:
        lines.append(f"  and {len(failures) - shown} more")
    return "\n".join(["evaluator errors", *lines]) if lines else ""


def runs_report(runs: Sequence[Mapping[str, Any]], stats: Mapping[str, Mapping[str, Any]]
                ) -> str:
    """An experiment's runs as every command shows them: the table, the
    summary line, and the evaluator errors, if any."""
    return "\n".join(part for part in (runs_table(runs), stats_line(stats),
                                        evaluation_errors(runs)) if part)


def _pair(pair: Mapping[str, Any]) -> str:
    text = f"{value(pair.get('a'))} → {value(pair.get('b'))}"
    return text + (f" ({signed(pair['delta'])})" if pair.get("delta") is not None else "")


def compare_table(comparison: Mapping[str, Any]) -> str:
    names = list(comparison["summary"])
    rows = [[str(row["case_id"]), *(_pair(row["scores"][n]) for n in names),
             signed(row["cost"]["delta"], "$"), signed(row["duration"]["delta"], "s")]
            for row in comparison["cases"]]
    rows.append(["(all)", *(_pair(comparison["summary"][n]) for n in names),
                 signed(comparison["cost"]["delta"], "$"),
                 signed(comparison["duration"]["delta"], "s")])
    return table(["case", *(f"{n} A → B" for n in names), "Δ cost", "Δ duration"], rows)


def experiment_head(experiment: Mapping[str, Any], runs: Sequence[Mapping[str, Any]]) -> str:
    failed = sum(1 for r in runs if r.get("status") == "failed")
    running = sum(1 for r in runs if r.get("status") == "running")
    cost = sum(float(r.get("cost") or 0.0) for r in runs)
    head = (f"{visible(experiment.get('name') or 'experiment')}  {experiment['id']}\n"
            f"  {len(runs)} runs, {failed} failed"
            + (f", {running} running" if running else "") + f", cost {money(cost)}")
    if experiment.get("replay_of"):
        head += f"\n  replays {experiment['replay_of']} ({experiment.get('replay_mode')})"
    return head


def experiments_table(experiments: Sequence[Mapping[str, Any]]) -> str:
    rows = [[str(x["id"]), short(x.get("name") or "", 30), when(x.get("created_at")),
             str(x.get("run_count", 0)), str(x.get("ended_count", 0)),
             str(x.get("failed_count", 0)), str(x.get("replay_of") or "")]
            for x in experiments]
    return table(["id", "name", "created", "runs", "ended", "failed", "replays"], rows)


def mass_sims_table(sims: Sequence[Mapping[str, Any]]) -> str:
    rows = [[str(m["id"]), short(m.get("name") or "", 30), when(m.get("created_at")),
             "-" if m.get("total") is None else str(m["total"]), str(m["sessions"]),
             str(m["ended"]), str(m.get("failed", 0))] for m in sims]
    return table(["id", "name", "created", "total", "sessions", "ended", "failed"], rows)
