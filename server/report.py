"""Classification reports from confusion matrices (the only evaluation data sites send)."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import classification_report


def _pairs(confusion: np.ndarray):
    true, pred = np.nonzero(confusion)
    return true, pred, confusion[true, pred]


def report_dict(confusion: np.ndarray, labels: tuple[str, ...]) -> dict:
    """sklearn's classification_report (as a dict) for the records counted in `confusion`."""
    true, pred, weight = _pairs(np.asarray(confusion))
    if weight.sum() == 0:
        return {"accuracy": float("nan"), "macro avg": {"f1-score": float("nan")}, "support": 0}
    return classification_report(true, pred, labels=list(range(len(labels))), target_names=list(labels),
                                 sample_weight=weight, output_dict=True, zero_division=0)


def report_text(confusion: np.ndarray, labels: tuple[str, ...]) -> str:
    """The same report laid out like sklearn's text version (support as whole records)."""
    rep = report_dict(confusion, labels)
    if not rep.get("support", 1):
        return "(no evaluation records)\n"
    width = max(len("weighted avg"), *(len(name) for name in labels))
    head = f"{'':>{width}} {'precision':>9} {'recall':>9} {'f1-score':>9} {'support':>9}"
    rows = [head, ""]
    for name in (*labels, "", "accuracy", "macro avg", "weighted avg"):
        if name == "":
            rows.append("")
        elif name == "accuracy":
            total = int(round(rep["macro avg"]["support"]))
            rows.append(f"{name:>{width}} {'':>9} {'':>9} {rep['accuracy']:>9.3f} {total:>9d}")
        else:
            r = rep[name]
            rows.append(f"{name:>{width}} {r['precision']:>9.3f} {r['recall']:>9.3f} "
                        f"{r['f1-score']:>9.3f} {int(round(r['support'])):>9d}")
    return "\n".join(rows) + "\n"
