"""A NER round's entity-level scores, from the entity counts the sites send.

Each site counts, on its held-out sentences, the entities of each type it found right, found and
should have found (client/ner_eval.py); nothing names a sentence or a word. The coordinator sums
the counts over the sites and scores the sum with seqeval's definitions (common/ner_report.py):
the federated figure is the one seqeval gives on every site's sentences pooled. Each site's own
counts are scored too. The word-level report per tag is the round's confusion matrix, as for
classification (report.txt, reports/round-N.json).
"""

from __future__ import annotations

from common.ner_report import add_counts, entity_report


def entity_types(tags: tuple[str, ...]) -> tuple[str, ...]:
    """The entity types of a tag set (B-X / I-X -> X), sorted."""
    return tuple(sorted({t[2:] for t in tags if t != "O"}))


class EntityCounts:
    """The entity counts of one round's evaluation replies."""

    def __init__(self) -> None:
        self.total: dict[str, dict[str, int]] = {}
        self.sites: dict[str, dict[str, dict[str, int]]] = {}

    def add(self, site: str, clean: dict) -> None:
        """Take a checked reply's entity counts (server/site_reports.py), if it has any."""
        counts = clean.pop("entity_counts", None)
        if counts is not None:
            self.sites[site] = counts
            add_counts(self.total, counts)

    def record(self) -> dict:
        """{"entities": ...} for the round's record (metrics.jsonl), or {} in a classification run."""
        if not self.sites:
            return {}
        federated = entity_report(self.total)
        return {"entity_f1": federated["micro avg"]["f1-score"], "entities": {
            "federated": federated, "counts": self.total,
            "sites": {name: entity_report(c) for name, c in sorted(self.sites.items())}}}


def entity_text(record: dict) -> str | None:
    """The round line's part: entity-level micro F1 (seqeval, exact match) and its P / R."""
    fed = (record.get("entities") or {}).get("federated")
    if not fed:
        return None
    micro = fed["micro avg"]
    return (f"entity-F1 {micro['f1-score']:.3f} (P {micro['precision']:.3f} R {micro['recall']:.3f}, "
            f"{micro['support']} entities)")


def entity_lines(entities: dict | None) -> list[str]:
    """report.txt's entity section: per type and averaged, federated then each site."""
    if not entities or not entities.get("federated"):
        return []

    def table(report: dict) -> list[str]:
        width = max(len("micro avg"), *(len(k) for k in report))
        rows = [f"{'':<{width}} {'precision':>9} {'recall':>9} {'f1-score':>9} {'support':>9}"]
        for kind, m in report.items():
            rows.append(f"{kind:<{width}} {m['precision']:>9.3f} {m['recall']:>9.3f} {m['f1-score']:>9.3f} "
                        f"{int(m['support']):>9d}")
        return rows

    lines = ["== entities (seqeval, exact match; counts summed over the sites) ==", *table(entities["federated"])]
    for name, report in entities["sites"].items():
        lines += ["", f"== entities, site {name} ==", *table(report)]
    return lines + [""]
