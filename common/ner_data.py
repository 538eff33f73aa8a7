"""NER sentences in the shape the rest of a site's round already handles: one `Records` entry per
sentence, so the privacy ledger's fingerprint, the held-out split, the simulation's partition and
the site's caps treat a sentence exactly as they treat a text record.

A sentence's text is its tokens joined by TAB (a CoNLL token never holds one: TAB separates it
from its tag), its label its IOB2 tags joined by spaces; both split back losslessly. Under DP-SGD
the protected unit is therefore one sentence, as the run's guarantee text says.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

from common.conll import Sentences, read_conll, redact_sentences, to_iob2
from common.data import Records, refuse_unknown
from common.errors import FedSiloError

TOKEN_SEP, TAG_SEP = "\t", " "


def as_records(sentences: Sentences) -> Records:
    return Records([TOKEN_SEP.join(words) for words in sentences.tokens],
                   [TAG_SEP.join(to_iob2(tags)) for tags in sentences.tags])


def as_sentences(records: Records) -> Sentences:
    return Sentences([text.split(TOKEN_SEP) for text in records.texts],
                     [label.split(TAG_SEP) for label in records.labels])


def read_sentence_records(path: str | Path, group_column: str = "") -> Records:
    """A CoNLL file (common/conll.py) as one record per sentence; IOB1 files are accepted and
    stored as IOB2. A group column has no place in a CoNLL file: one clear line."""
    if group_column:
        raise FedSiloError("--group-column: fairness by group is for text classification; a CoNLL file has "
                           "no group column (task ner)")
    return as_records(read_conll(path, scheme="iob1"))


def tag_set(records: Records) -> tuple[str, ...]:
    """O first, then by entity type, B- before I- (fl-sim's default label set for task ner)."""
    found = {t for label in records.labels for t in label.split(TAG_SEP)} | {"O"}
    return ("O", *sorted(found - {"O"}, key=lambda t: (t[2:], t[0])))


def encode_tags(records: Records, tags: tuple[str, ...], source: str = "data",
                quote_values: bool = True) -> np.ndarray:
    """Each sentence's tag ids (an object array of int lists); a tag outside the run's set is an
    error that, at a real site (quote_values=False), names no tag to the server (common/data.py)."""
    index = {t: i for i, t in enumerate(tags)}
    refuse_unknown({t for label in records.labels for t in label.split(TAG_SEP) if t not in index}, "tag", tags,
                   source, quote_values, "tokens have tags")
    out = np.empty(len(records), dtype=object)
    for i, label in enumerate(records.labels):
        out[i] = [index[t] for t in label.split(TAG_SEP)]
    return out


def redact_records(records: Records, types) -> tuple[list[str], Counter]:
    """Each sentence's tokens with personal data replaced token by token (tags stay aligned)."""
    if not types:
        return records.texts, Counter()
    clean, counts = redact_sentences(as_sentences(records), types)
    return [TOKEN_SEP.join(words) for words in clean.tokens], counts
