"""Site-side PII redaction: replace personal data in free text with typed placeholders.

Runs at the site, before training (data minimisation): "Call Mary Johnson on +44 20 7946 0958"
becomes "Call [NAME] on [PHONE]". Everything is offline and hand-written with `re`: no model,
no download, no network. Where an issuer defines a check (IBAN mod-97, card Luhn, US SSN
ranges, IP octets) a candidate must pass it, so that random digit runs are not redacted as
account numbers. Identifiers without a checkable shape (medical record numbers, customer ids,
names) are only taken after a context word ("MRN", "passport", "Dr", "my name is", ...).

This is a recall aid, not a guarantee: pattern rules miss what they were not written for (a
name with no context and not in the small first-name list, an address without a street
suffix). `python -m tests.pii_synth` measures precision and recall per type. The recognisers
are in common/pii_patterns.py; this module resolves overlaps and replaces.
"""

from __future__ import annotations

import bisect
import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from common.errors import FedSiloError

from common.pii_patterns import ENTITY_TYPES, FINDERS

# Two overlapping candidates of the same length: the more specific (checksummed or
# context-anchored) type wins, e.g. "123-45-6789" after "ID:" is an SSN, not a generic ID.
_PRIORITY = ("IBAN", "CARD", "SSN", "MRN", "ID", "EMAIL", "URL", "IP", "DATE", "PHONE", "ADDRESS",
             "NAME")
_RANK = {t: i for i, t in enumerate(_PRIORITY)}


@dataclass(frozen=True)
class Span:
    start: int
    end: int
    type: str

    @property
    def kind(self) -> str:  # the name other tools use for the PII type
        return self.type


def _check_types(types: Iterable[str], where: str = "") -> tuple[str, ...]:
    """Canonical type names (case-insensitive input, ENTITY_TYPES order, no duplicates)."""
    if isinstance(types, str):
        types = (types,)
    wanted = set()
    for t in types:
        name = t.strip().upper() if isinstance(t, str) else None
        if name not in FINDERS:
            raise FedSiloError(f"{where}unknown PII type {t!r} (valid types: {', '.join(ENTITY_TYPES)})")
        wanted.add(name)
    return tuple(t for t in ENTITY_TYPES if t in wanted)


def _names(texts: list[str], types: tuple[str, ...]) -> list[list[tuple[int, int]]]:
    """The tagger's person names in each text (one batched pass), when NAME is wanted."""
    if "NAME" not in types:
        return [[] for _ in texts]
    from common.name_tagger import find_names  # torch: imported only when names are wanted

    return find_names(texts)


def _find(text: str, types: tuple[str, ...], names: list[tuple[int, int]] = ()) -> list[Span]:
    candidates = {Span(s, e, t) for t in types for find in FINDERS[t] for s, e in find(text) if e > s}
    candidates |= {Span(s, e, "NAME") for s, e in names if e > s}
    # Longest span first, then the fixed priority: "12 Oak Street" beats a DATE-looking piece
    # of it, and an IBAN beats the phone-looking digits inside it.
    chosen: list[Span] = []  # kept sorted by start; non-overlapping
    starts: list[int] = []
    for c in sorted(candidates, key=lambda c: (c.start - c.end, _RANK[c.type], c.start)):
        i = bisect.bisect_right(starts, c.start)
        if (i == 0 or chosen[i - 1].end <= c.start) and (i == len(chosen) or c.end <= chosen[i].start):
            chosen.insert(i, c)
            starts.insert(i, c.start)
    return chosen


def find_pii(text: str, types: Iterable[str] = ENTITY_TYPES) -> list[Span]:
    """Non-overlapping PII spans of the given types in `text`, sorted by position; each has
    `start`, `end` and `kind` (the type). Overlaps are resolved among the requested types only.
    """
    types = _check_types(types)
    return _find(text, types, _names([text], types)[0])


def find_pii_all(texts: list[str], types: Iterable[str] = ENTITY_TYPES) -> list[list[Span]]:
    """find_pii for many texts at once (the name tagger runs in batches: much faster)."""
    types = _check_types(types)
    return [_find(t, types, names) for t, names in zip(texts, _names(texts, types))]


def _apply(text: str, spans: list[Span]) -> str:
    out, pos = [], 0
    for sp in spans:
        out.append(text[pos:sp.start])
        out.append(f"[{sp.type}]")
        pos = sp.end
    out.append(text[pos:])
    return "".join(out)


def redact(text: str, types: Iterable[str] = ENTITY_TYPES) -> tuple[str, Counter]:
    """`text` with every PII span replaced by its placeholder, and how many of each type."""
    spans = find_pii(text, types)
    return _apply(text, spans), Counter(sp.type for sp in spans)


class Redactor:
    """Redacts a site's texts for a fixed set of types (checked once, here)."""

    def __init__(self, types: Iterable[str] = ENTITY_TYPES):
        self.types = _check_types(types)

    def redact(self, text: str) -> tuple[str, Counter]:
        out, counts = self.redact_all([text])
        return out[0], counts

    def redact_all(self, texts: list[str]) -> tuple[list[str], Counter]:
        out, total = [], Counter()
        for text, spans in zip(texts, find_pii_all(texts, self.types)):
            out.append(_apply(text, spans))
            total.update(sp.type for sp in spans)
        return out, total


def load_redaction_config(path: str | Path) -> tuple[str, ...]:
    """Types to redact from `{"entities": [...]}` (or `{"enabled": false}`: none).

    `{"enabled": true}` without "entities" means every type. Any problem is one FedSiloError
    naming the file: a typo must stop the site, not silently redact less.
    """
    path = Path(path)
    try:
        raw = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FedSiloError(f"{path}: redaction config not found") from None
    except (OSError, UnicodeDecodeError) as err:
        why = err.strerror if isinstance(err, OSError) else "not valid UTF-8"
        raise FedSiloError(f"{path}: cannot read redaction config ({why})") from None
    try:
        cfg = json.loads(raw)
    except json.JSONDecodeError as err:
        raise FedSiloError(f"{path}:{err.lineno}: redaction config is not valid JSON ({err.msg})") from None
    if not isinstance(cfg, dict):
        raise FedSiloError(f"{path}: redaction config must be a JSON object, "
                           'e.g. {"entities": ["EMAIL", "PHONE"]} or {"enabled": false}')
    unknown = sorted(set(cfg) - {"entities", "enabled"})
    if unknown:
        raise FedSiloError(f"{path}: unknown key(s) {', '.join(map(repr, unknown))} in redaction config "
                           "(expected 'entities', 'enabled')")
    enabled = cfg.get("enabled", True)
    if not isinstance(enabled, bool):
        raise FedSiloError(f"{path}: 'enabled' must be true or false, not {enabled!r}")
    if not enabled:
        return ()
    entities = cfg.get("entities", list(ENTITY_TYPES))
    if not isinstance(entities, list) or not all(isinstance(e, str) for e in entities):
        raise FedSiloError(f"{path}: 'entities' must be a list of type names "
                           f"(valid types: {', '.join(ENTITY_TYPES)})")
    return _check_types(entities, where=f"{path}: ")


def report_lines(counts: Counter, n_texts: int) -> list[str]:
    """The site operator's local redaction report: counts by type, never the values."""
    total = sum(counts.values())
    lines = [f"PII redaction: {total} value(s) replaced in {n_texts} text(s) (values are not shown)"]
    for t in (t for t in ENTITY_TYPES if counts.get(t)):
        lines.append(f"  {t:<8} {counts[t]:>7}")
    if not total:
        lines.append("  no personal data found")
    return lines
