"""Entity-level NER scores from counts: what a site can send, and what the coordinator makes of it.

seqeval scores entities by exact match: a predicted entity counts as found only with the same type
and the same first and last token as a true one. Its per-type precision, recall and F1 need three
counts per type: true positives, predicted entities and true entities. A site counts them on its
held-out sentences (`entity_counts`, no sentence or token leaves it), the coordinator sums them
over the sites and scores the sum (`entity_report`): the same numbers seqeval gives on all the
sites' sentences pooled (tests/test_ner_report.py checks it against seqeval).

Issue 31, step 4: not yet wired into the rounds.
"""

from __future__ import annotations

from collections import Counter

from common.conll import entity_spans


def entity_counts(true: list[list[str]], predicted: list[list[str]]) -> dict[str, dict[str, int]]:
    """{type: {"tp", "pred", "true"}} over sentences of IOB2 tags (true and predicted aligned)."""
    counts: dict[str, Counter] = {}
    for t, p in zip(true, predicted):
        gold, guess = set(entity_spans(t)), set(entity_spans(p))
        for kind, *_ in gold:
            counts.setdefault(kind, Counter())["true"] += 1
        for kind, *_ in guess:
            counts.setdefault(kind, Counter())["pred"] += 1
        for kind, *_ in gold & guess:
            counts[kind]["tp"] += 1
    return {k: {"tp": c["tp"], "pred": c["pred"], "true": c["true"]} for k, c in sorted(counts.items())}


def add_counts(into: dict[str, dict[str, int]], more: dict[str, dict[str, int]]) -> None:
    for kind, c in more.items():
        total = into.setdefault(kind, {"tp": 0, "pred": 0, "true": 0})
        for key in total:
            total[key] += int(c.get(key, 0))


def _prf(tp: int, pred: int, true: int) -> dict[str, float]:
    precision = tp / pred if pred else 0.0
    recall = tp / true if true else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1-score": f1, "support": true}


def entity_report(counts: dict[str, dict[str, int]]) -> dict:
    """seqeval's classification_report (as a dict, zero_division 0) from summed counts: each type,
    then "micro avg" (all entities pooled) and "macro avg" (the types' plain mean)."""
    report = {kind: _prf(c["tp"], c["pred"], c["true"]) for kind, c in sorted(counts.items())}
    totals = {key: sum(c[key] for c in counts.values()) for key in ("tp", "pred", "true")}
    report["micro avg"] = _prf(totals["tp"], totals["pred"], totals["true"])
    kinds = [report[k] for k in sorted(counts)]
    report["macro avg"] = {m: (sum(r[m] for r in kinds) / len(kinds) if kinds else 0.0)
                           for m in ("precision", "recall", "f1-score")} | {"support": totals["true"]}
    return report
