"""Entity-level NER scores from summed counts (common/ner_report.py) against seqeval on the same
predictions pooled. Issue 31, step 4."""

from __future__ import annotations

import random

import pytest
from seqeval.metrics import classification_report

from common.ner_report import add_counts, entity_counts, entity_report

TYPES = ("Disease", "Chemical")


def sentence(rng: random.Random, n: int) -> list[str]:
    tags, i = [], 0
    while i < n:
        if rng.random() < 0.3:
            kind, length = rng.choice(TYPES), rng.randint(1, 3)
            tags += [f"B-{kind}"] + [f"I-{kind}"] * (length - 1)
            i += length
        else:
            tags.append("O")
            i += 1
    return tags[:n]


def noisy(rng: random.Random, tags: list[str]) -> list[str]:
    """A prediction: each tag kept, or replaced by another valid tag now and then."""
    out = []
    for t in tags:
        if rng.random() < 0.15:
            t = rng.choice(["O", "B-Disease", "B-Chemical"] + ([f"I-{out[-1][2:]}"] if out and out[-1] != "O" else []))
        out.append(t)
    return out


def test_summed_site_counts_score_as_seqeval_on_the_pooled_sentences():
    rng = random.Random(3)
    sites = []
    for _ in range(3):
        true = [sentence(rng, rng.randint(3, 20)) for _ in range(40)]
        sites.append((true, [noisy(rng, t) for t in true]))
    total: dict = {}
    for true, pred in sites:
        add_counts(total, entity_counts(true, pred))
    ours = entity_report(total)
    pooled_true = [t for true, _ in sites for t in true]
    pooled_pred = [p for _, pred in sites for p in pred]
    theirs = classification_report(pooled_true, pooled_pred, output_dict=True, zero_division=0, mode=None)
    for key in (*TYPES, "micro avg", "macro avg"):
        for metric in ("precision", "recall", "f1-score", "support"):
            assert ours[key][metric] == pytest.approx(theirs[key][metric]), (key, metric)
    assert 0.3 < ours["micro avg"]["f1-score"] < 0.95  # neither trivial nor perfect


def test_exact_match_only():
    counts = entity_counts([["B-Disease", "I-Disease", "O"]], [["B-Disease", "O", "O"]])
    assert counts == {"Disease": {"tp": 0, "pred": 1, "true": 1}}
    assert entity_report(counts)["Disease"]["f1-score"] == 0.0
