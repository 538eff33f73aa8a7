"""Classification reports from confusion matrices (the only evaluation data sites send), and
the round line."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import classification_report

from common.errors import printable
from server.entity_round import entity_text
from server.fairness_round import fairness_text
from server.site_reports import MAX_TEXT


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


def round_line(record: dict, rounds: int) -> str:
    """The one line per round the coordinator sees (server/strategy.py logs it); whatever came
    from a site is escaped (control characters) and bounded: one line stays one line."""
    parts = [f"round {record['round']}/{rounds}"]
    if record.get("status") == "failed":
        parts.append(f"FAILED (model unchanged): {record.get('failed_reason') or 'see the log'}")
    if entities := entity_text(record):  # a NER run: entities first, then its word-level scores
        parts.append(entities)
    if record.get("eval_examples"):
        parts.append(f"{'token accuracy' if entities else 'accuracy'} {record['accuracy']:.3f}  "
                     f"macro-F1 {record['macro_f1']:.3f}")
    else:
        parts.append("no evaluation results")
    name = lambda n: printable(str(n), 100)  # noqa: E731 - names are checked already; a line stays a line
    if record.get("site_accuracy"):
        parts.append("sites " + " ".join(f"{name(n)}={a:.3f}" for n, a in record["site_accuracy"].items()))
    if fairness := fairness_text(record):
        parts.append(fairness)
    fit = dict(sorted(record.get("fit", {}).items()))
    eps = {n: f["epsilon"] for n, f in fit.items() if f.get("dp")}
    if eps:
        parts.append("epsilon " + " ".join(f"{name(n)}={v:.2f}" for n, v in eps.items()))
    no_dp = [name(n) for n, f in fit.items() if not f.get("dp")]
    if no_dp:
        parts.append("NO DP at " + ",".join(no_dp))
    for text in dict.fromkeys([*record.get("fit_failures", []), *record.get("eval_failures", [])]):
        parts.append(f"left out: {printable(str(text), MAX_TEXT)}")
    parts.append(f"{record['seconds']:.1f}s")
    return " | ".join(parts)
