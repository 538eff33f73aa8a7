"""A round's fairness figures, from the counts by group that sites with a group column send.

The coordinator never sees a group per record: each site sends one confusion matrix per group of
its evaluation split (common/fairness.py; small groups merged at the site). Matrices of the same
group name are summed over the sites for the federated figures; each site's own are kept too.
"""

from __future__ import annotations

import math

import numpy as np

from common.fairness import add_confusions, group_report, largest_gap


class GroupCounts:
    """The counts by group of one round's evaluation replies."""

    def __init__(self) -> None:
        self.total: dict[str, np.ndarray] = {}
        self.sites: dict[str, dict[str, np.ndarray]] = {}

    def add(self, site: str, clean: dict) -> None:
        """Take a checked reply's counts by group (server/site_reports.py), if it has any."""
        counts = clean.pop("group_confusion", None)
        if counts:
            self.sites[site] = counts
            add_confusions(self.total, counts)

    def record(self, labels: tuple[str, ...], max_gap: float) -> dict:
        """{"fairness": ...} for the round's record (metrics.jsonl), or {} when no site sent groups."""
        if not self.sites:
            return {}
        federated = group_report(self.total, labels)
        alert = None
        worst = largest_gap(federated)
        if max_gap > 0 and worst and worst[1] > max_gap:
            alert = f"{worst[0]} difference {worst[1]:.3f} above max-fairness-gap {max_gap:g}"
        return {"fairness": _finite({
            "federated": federated,
            "sites": {name: group_report(counts, labels) for name, counts in sorted(self.sites.items())},
            "counts": {name: m.tolist() for name, m in sorted(self.total.items())},
            "alert": alert})}


def _finite(value):
    """NaN (a rate no group defines) as null: metrics.jsonl stays strict JSON."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def fairness_text(record: dict) -> str | None:
    """The round line's part: worst group's accuracy and the two largest gaps (and the alert)."""
    fed = (record.get("fairness") or {}).get("federated")
    if not fed:
        return None
    gaps = fed["gaps"]
    shown = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
    text = (f"worst group {gaps['worst_group']} {shown(gaps['worst_group_accuracy'])} "
            f"EO-gap {shown(gaps['equalized_odds_difference'])} DP-gap {shown(gaps['demographic_parity_difference'])}")
    alert = record["fairness"].get("alert")
    return text + (f" | FAIRNESS ALERT: {alert}" if alert else "")


def group_table(report: dict, labels: tuple[str, ...]) -> list[str]:
    """One line per group: records, accuracy, and each class's selection rate, TPR and FPR."""
    cell = lambda v: f"{'n/a' if v is None else f'{v:.3f}':>7}"  # noqa: E731
    width = max(len("group"), *(len(g) for g in report["groups"]))
    head = f"{'group':<{width}} {'records':>7} {'acc':>7} " + " ".join(
        f"{k + '/' + name:>14}" for name in labels for k in ("sel", "tpr", "fpr"))
    rows = [head]
    for group, m in report["groups"].items():
        rows.append(f"{group:<{width}} {int(m['records']):>7d} {cell(m['accuracy'])} " + " ".join(
            f"{cell(m[f'{k}/{name}']):>14}" for name in labels for k in ("selection_rate", "tpr", "fpr")))
    gaps = report["gaps"]
    rows.append(f"gaps: equalized odds {cell(gaps['equalized_odds_difference']).strip()}, demographic parity "
                f"{cell(gaps['demographic_parity_difference']).strip()}, accuracy "
                f"{cell(gaps['accuracy_difference']).strip()}; worst group {gaps['worst_group']} "
                f"({cell(gaps['worst_group_accuracy']).strip()})")
    return rows


def fairness_lines(fairness: dict | None, labels: tuple[str, ...]) -> list[str]:
    """report.txt's fairness section: federated, then each site's own groups."""
    if not fairness or not fairness.get("federated"):
        return []
    lines = ["== fairness by group (federation; groups under each site's min-group-size merged "
             "into 'other' at the site) ==", *group_table(fairness["federated"], labels)]
    if fairness.get("alert"):
        lines.append(f"FAIRNESS ALERT: {fairness['alert']}")
    for name, report in fairness["sites"].items():
        if report:
            lines += ["", f"== fairness by group, site {name} ==", *group_table(report, labels)]
    return lines + [""]
