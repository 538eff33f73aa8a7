"""What bench/render.py's tables and plots share: the provenance line, number formatting, Markdown tables.

Imports nothing from the other render modules, so render_tables and render_plots can both use it.
"""

from __future__ import annotations

import math

# the utility benchmark's arms, ceiling first; then the recipe before head-init stats, then the defaults
ARM_ORDER = ["centralised", "federated", "federated DP", "federated, head from statistics",
             "federated DP, head from statistics"]

# round_efficiency's steps: (key in each round's JSON, what it is)
STEP_NAMES = [("mean_time_train", "training"), ("mean_time_evaluate", "evaluation"), ("mean_time_load", "model loading"),
              ("mean_time_tokenise", "tokenisation"), ("other_seconds", "other (start-up, communication, SecAgg+, aggregation)")]


def provenance(h: dict | None) -> str:
    """Machine, commit, profile, seeds, start and load average of the run that wrote a result."""
    if not h:
        return "provenance not recorded (result written before the bench header existed)"
    m = h["machine"]
    load = h.get("load_average_at_start")
    return (f"{m['cpu']}, {m['cores']} cores, {m['ram_gib']} GiB RAM · commit {h['commit']} · profile {h['profile']} · "
            f"seeds {', '.join(map(str, h['seeds'])) or 'per benchmark'} · started {h['started_utc']}"
            + (f" · load avg {load[0]:.1f}" if load else ""))


def fmt(x, digits: int = 1) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, int):
        return f"{x:,}"
    if isinstance(x, float):
        return f"{x:,.{digits}f}"
    return str(x)


def verdict(met) -> str:
    return {True: "**met**", False: "**not met**", None: "not decided by this run (not measured, or the run did not finish)"}[met]


def table(head: list[str], rows: list[list]) -> list[str]:
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head), *("| " + " | ".join(map(str, r)) + " |" for r in rows)]


def details(summary: str, lines: list[str]) -> list[str]:
    """A long table folded away (GitHub shows it on a click); the blank lines let Markdown render inside."""
    return [f"<details><summary>{summary}</summary>", "", *lines, "", "</details>"]


def arm_label(arm: str, eps) -> str:
    return f"{arm} ε={eps:g}" if eps is not None else arm


def slowest_share(rounds: list[dict]) -> float:
    """The slowest site's training seconds over the rounds' wall time, from the per-site times."""
    return sum(max(r["train_seconds_by_site"].values()) for r in rounds) / sum(r["round_seconds"] for r in rounds)


def runs_note(rows: list[dict]) -> list[str]:
    """A line naming the runs a result's rows come from, when there are several (each row names its own)."""
    runs = sorted({(r["run"]["started_utc"], r["run"]["commit"]) for r in rows if isinstance(r.get("run"), dict)})
    if len(runs) < 2:
        return []
    return ["Rows from several runs (each row's commit is in the table of every run): "
            + "; ".join(f"commit {commit} started {started}" for started, commit in runs) + ".", ""]
