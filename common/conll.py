"""A site's token-classification data: CoNLL-style files, one `token<TAB>tag` per line and a
blank line between sentences (the format of NCBI-disease and CoNLL-2003).

Tags follow IOB2 (also called BIO: every entity starts with B-) or IOB1 (an entity may start
with I-; B- only separates two adjacent entities of one type). Every problem is one FedSiloError
naming the file and line: a line that is not `token<TAB>tag`, a tag that is neither O nor
B-TYPE / I-TYPE, an I- tag that continues nothing where IOB2 forbids it, a file with no sentence.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from common.data import _read_lines
from common.errors import FedSiloError

SCHEMES = ("iob2", "iob1")
_TAG = re.compile(r"(O)|([BI])-([A-Za-z0-9_.\-]{1,40})")
MAX_SENTENCE_TOKENS = 2000  # a longer "sentence" is a file without blank lines between sentences


@dataclass(frozen=True)
class Sentences:
    tokens: list[list[str]]
    tags: list[list[str]]

    def __len__(self) -> int:
        return len(self.tokens)

    def subset(self, idx) -> "Sentences":
        return Sentences([self.tokens[i] for i in idx], [self.tags[i] for i in idx])


def read_conll(path: str | Path, scheme: str = "iob2") -> Sentences:
    """Read a CoNLL file (module docstring); FedSiloError names the file and line of a problem."""
    if scheme not in SCHEMES:
        raise FedSiloError(f"tag scheme {scheme!r}: use one of {', '.join(SCHEMES)}")
    path = Path(path)
    lines = _read_lines(path)
    tokens: list[list[str]] = []
    tags: list[list[str]] = []
    words: list[str] = []
    labels: list[str] = []
    for line_no, raw in enumerate(lines, start=1):
        line = raw.rstrip("\r\n")
        if not line.strip():
            if words:
                tokens.append(words)
                tags.append(labels)
                words, labels = [], []
            continue
        if line.startswith("-DOCSTART-"):  # CoNLL-2003's document marker: not a token
            continue
        fields = line.split("\t")
        if len(fields) != 2 or not fields[0].strip() or not fields[1].strip():
            raise FedSiloError(f"{path}:{line_no}: expected 'token<TAB>tag', found "
                               f"{len(fields)} tab-separated field(s)" + (" with an empty one" if len(fields) == 2 else ""))
        token, tag = fields[0].strip(), fields[1].strip()
        match = _TAG.fullmatch(tag)
        if not match:
            raise FedSiloError(f"{path}:{line_no}: tag {tag[:40]!r} is neither O nor B-TYPE / I-TYPE")
        if match.group(2) == "I" and scheme == "iob2":
            before = labels[-1] if labels else "O"
            if before[2:] != match.group(3):
                raise FedSiloError(f"{path}:{line_no}: {tag} follows {before}: in IOB2 (BIO) an entity starts "
                                   "with B- (use --tag-scheme iob1 for files where I- may start one)")
        words.append(token)
        labels.append(tag)
        if len(words) > MAX_SENTENCE_TOKENS:
            raise FedSiloError(f"{path}:{line_no}: a sentence of more than {MAX_SENTENCE_TOKENS} tokens: "
                               "sentences must be separated by blank lines")
    if words:
        tokens.append(words)
        tags.append(labels)
    if not tokens:
        raise FedSiloError(f"{path}: no sentences (an empty file, or only blank lines)")
    return Sentences(tokens, tags)


def to_iob2(tags: list[str]) -> list[str]:
    """IOB1 tags as IOB2: an I- that starts an entity becomes B-."""
    out, before = [], "O"
    for tag in tags:
        out.append("B-" + tag[2:] if tag.startswith("I-") and before[2:] != tag[2:] else tag)
        before = tag
    return out


def tag_set_of(sentences: Sentences) -> tuple[str, ...]:
    """The tags of a file: O first, then by entity type, B- before I-."""
    found = {t for tags in sentences.tags for t in tags} | {"O"}
    return ("O", *sorted(found - {"O"}, key=lambda t: (t[2:], t[0])))


def entity_spans(tags: list[str]) -> list[tuple[str, int, int]]:
    """(type, first token, one past the last token) of each entity in IOB2 tags."""
    spans, start, kind = [], None, None
    for i, tag in enumerate([*tags, "O"]):
        continues = tag.startswith("I-") and kind == tag[2:]
        if start is not None and not continues:
            spans.append((kind, start, i))
            start, kind = None, None
        if tag.startswith("B-") or (tag.startswith("I-") and not continues):
            start, kind = i, tag[2:]
    return spans


def redact_sentences(sentences: Sentences, types) -> tuple[Sentences, "Counter"]:
    """Personal data replaced token by token, so tags stay aligned: each sentence is joined with
    spaces, the site's redaction finds its spans (common/redaction.py), and every token a span
    touches becomes that span's placeholder ("[NAME]") and keeps its own tag. A name that is
    itself an entity to learn (B-PER) therefore trains as "[NAME]" tagged B-PER: a task whose
    entities are personal data should not redact that type (--redact-entities)."""
    from collections import Counter

    from common.redaction import find_pii_all

    texts, offsets = [], []
    for words in sentences.tokens:
        starts, pos = [], 0
        for w in words:
            starts.append(pos)
            pos += len(w) + 1
        texts.append(" ".join(words))
        offsets.append(starts)
    counts: Counter = Counter()
    out = []
    for words, starts, spans in zip(sentences.tokens, offsets, find_pii_all(texts, types)):
        redacted = list(words)
        for span in spans:
            counts[span.type] += 1
            for i, (word, start) in enumerate(zip(words, starts)):
                if start < span.end and span.start < start + len(word):  # the token overlaps the span
                    redacted[i] = f"[{span.type}]"
        out.append(redacted)
    return Sentences(out, [list(t) for t in sentences.tags]), counts
