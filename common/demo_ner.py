"""A small synthetic NER dataset for the demo and the tests: clinical sentences tagged with
Disease and Drug entities (IOB2), written as CoNLL files (token<TAB>tag, blank line between
sentences).

Generated, not downloaded: each sentence is a template whose slots take one or more words of a
disease or a drug, so a tagger learns the entity words and where an entity starts and ends.
"""

from __future__ import annotations

import random
from pathlib import Path

DISEASES = ["diabetes", "breast cancer", "asthma", "chronic kidney disease", "hepatitis B", "migraine",
            "heart failure", "cystic fibrosis", "lung cancer", "hypertension", "Crohn disease", "psoriasis"]
DRUGS = ["metformin", "insulin glargine", "salbutamol", "ibuprofen", "tamoxifen", "warfarin", "lisinopril",
         "methotrexate", "adalimumab", "sumatriptan"]
TEMPLATES = [
    "The patient was diagnosed with {D} last year .",
    "{D} was treated with {R} .",
    "No history of {D} in the family .",
    "She started {R} for her {D} in March .",
    "Symptoms of {D} improved after two weeks of {R} .",
    "He reports that {R} did not help .",
    "Screening for {D} is recommended at this age .",
    "The dose of {R} was reduced because of side effects .",
    "Follow-up visit planned ; no signs of {D} .",
    "Blood tests were normal today .",
]


def _tagged(phrase: str, kind: str) -> list[tuple[str, str]]:
    words = phrase.split()
    return [(w, ("B-" if i == 0 else "I-") + kind) for i, w in enumerate(words)]


def make_sentences(n: int, seed: int) -> list[list[tuple[str, str]]]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        sentence: list[tuple[str, str]] = []
        for word in rng.choice(TEMPLATES).split():
            if word == "{D}":
                sentence += _tagged(rng.choice(DISEASES), "Disease")
            elif word == "{R}":
                sentence += _tagged(rng.choice(DRUGS), "Drug")
            else:
                sentence.append((word, "O"))
        out.append(sentence)
    return out


def write_conll(path: Path, sentences: list[list[tuple[str, str]]]) -> Path:
    path.write_text("".join("".join(f"{w}\t{t}\n" for w, t in s) + "\n" for s in sentences), encoding="utf-8")
    return path


def write_demo_conll(out: Path, sites: int = 3, per_site: int = 200, seed: int = 7) -> list[Path]:
    """One CoNLL file per site (site-A.conll, ...) and all.conll with every sentence."""
    out.mkdir(parents=True, exist_ok=True)
    sentences = make_sentences(sites * per_site, seed)
    paths = [write_conll(out / f"site-{chr(65 + s)}.conll", sentences[s * per_site:(s + 1) * per_site])
             for s in range(sites)]
    write_conll(out / "all.conll", sentences)
    return paths
