"""Two finished runs' accuracy by group, side by side: `fl-server report RUN_DIR --compare OTHER`.

The use it is made for is DP's cost by group (issue 32): the same federation trained with DP and
without (or with and without --fairness-reweight), each group's accuracy on the sites' held-out
splits in the last round of each run, and the difference. The table goes into RUN_DIR's
report.html and its model card (MODEL_CARD.md and model_card.html are written again, with every
other section as the run wrote it).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from common.config import RunConfig
from common.errors import FedSiloError
from server.run_status import RunView
from server.site_reports import resumed_privacy


def _fairness(view: RunView) -> dict:
    fed = next((r["fairness"].get("federated") for r in reversed(view.rounds) if r.get("fairness")), None)
    if not fed:
        raise FedSiloError(f"{view.path}: no round with counts by group (the sites need --group-column)")
    return fed


def privacy_of(view: RunView) -> str:
    """How the run's sites trained, from what they reported (summary.json)."""
    lines = list(((view.summary or {}).get("privacy") or {}).values())
    if not lines:
        return "privacy unknown (no summary)"
    no_dp = sum("NO differential privacy" in line for line in lines)
    return "no DP" if no_dp == len(lines) else "DP at every site" if not no_dp else f"DP at {len(lines) - no_dp} of {len(lines)} sites"


def comparison(run_dir: Path, other_dir: Path) -> tuple[str, tuple[list[str], list[list[str]]], list[str]]:
    """(heading, table, notes) comparing each group's accuracy in RUN_DIR and OTHER."""
    this, other = RunView(run_dir), RunView(other_dir)
    mine, theirs = _fairness(this), _fairness(other)
    a, b = f"this run ({privacy_of(this)})", f"{other.path.name} ({privacy_of(other)})"
    cell = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
    rows = []
    for group in sorted(set(mine["groups"]) | set(theirs["groups"])):
        x, y = (mine["groups"].get(group) or {}).get("accuracy"), (theirs["groups"].get(group) or {}).get("accuracy")
        rows.append([group, cell(x), cell(y), "n/a" if x is None or y is None else f"{x - y:+.3f}"])
    gaps = [f"{name}: {cell(mine['gaps'].get(key))} in this run, {cell(theirs['gaps'].get(key))} in {other.path.name}"
            for name, key in (("Worst-group accuracy", "worst_group_accuracy"),
                              ("Equalized-odds difference", "equalized_odds_difference"),
                              ("Demographic-parity difference", "demographic_parity_difference"))]
    notes = gaps + [f"Each run's last round, on its own sites' held-out splits (the same sites and data make the "
                    f"comparison fair; {other.path} is the other run)."]
    return f"Accuracy by group against {other.path.name}", (["group", a, b, "difference"], rows), notes


def rewrite_card(run_dir: Path, extra: list[tuple[str, object]]) -> None:
    """The run's model card written again from its own records, with `extra` sections added."""
    from server.model_card import write_model_card

    view = RunView(run_dir)
    if not view.summary or not (run_dir / "MODEL_CARD.md").exists():
        raise FedSiloError(f"{run_dir}: the run has not finished (no summary.json or model card yet)")
    known = {f.name for f in dataclasses.fields(RunConfig)}  # a newer or older run's extra keys are left out
    cfg = RunConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in view.config.items() if k in known})
    state = json.loads((run_dir / "state.json").read_text(encoding="utf-8")) if (run_dir / "state.json").exists() else {}
    sites, _ = resumed_privacy(state.get("site_privacy", {}))
    write_model_card(run_dir, cfg, view.summary, sites, extra)
