"""FedSilo's person-name tagger: the statistical half of NAME redaction (the rules are the other).

Pattern rules find a name only after a context word or among known first names: on CoNLL-2003's
test news they catch 10% of the person names, spaCy's small English pipeline 65%, this tagger
97% (bench/redaction.py). This tagger is a token classifier on the embedded MiniLM encoder: LoRA
adapters on every linear layer, plus the shape of each word (capitalised, ALL CAPS, ...; the
encoder's vocabulary is lower-cased, so it would not see case otherwise), and a two-class head on
the first sub-token of each word. It was trained on CoNLL-2003 English train by
`python bench/train_name_tagger.py`; its decision threshold was chosen on CoNLL-2003 valid for
recall; bench/redaction.py measures it on CoNLL-2003 test. The trained weights (LoRA, shape
embedding and head, float16) ship in common/assets/name_tagger.json (safetensors bytes in base64,
with the threshold: a Flower app bundle carries text files only, and a site runs the bundle);
the encoder is the one the model package installs, so it works offline.
"""

from __future__ import annotations

import base64
import json
import re
import threading
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

ASSET = Path(__file__).resolve().parent / "assets" / "name_tagger.json"
WORD = re.compile(r"[^\W_]+(?:['\u2019.-][^\W_]+)*|\S", re.UNICODE)  # words and single punctuation marks
SHAPES = 5
MAX_WORDS = 96  # a longer text is tagged in windows of this many words
# Edited text capitalises names, and nearly every name the tagger learnt from was: a lower-case
# word ("thank", "codon") must be far likelier a name before it is redacted as one.
LOWER_CASE_THRESHOLD = 0.5
_lock = threading.Lock()


def word_shape(word: str) -> int:
    """0 lower-case, 1 Capitalised, 2 ALL CAPS, 3 digits or punctuation, 4 mixed (McDonald, iPhone)."""
    letters = [c for c in word if c.isalpha()]
    if not letters:
        return 3
    if all(c.islower() for c in letters):
        return 0
    if all(c.isupper() for c in letters):
        return 2 if len(letters) > 1 else 1
    if letters[0].isupper() and all(c.islower() for c in letters[1:]):
        return 1
    return 4


class NameTagger(torch.nn.Module):
    """Encoder (with LoRA) + word-shape embedding -> P(person) for each sub-token."""

    def __init__(self, encoder, shape_dim: int = 16):
        super().__init__()
        self.encoder = encoder
        self.shape = torch.nn.Embedding(SHAPES, shape_dim)
        self.head = torch.nn.Linear(encoder.config.hidden_size + shape_dim, 2)

    def forward(self, input_ids, attention_mask, shapes):
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return self.head(torch.cat([hidden, self.shape(shapes)], dim=-1))


def build_tagger(rank: int = 16) -> NameTagger:
    """The untrained tagger on the embedded MiniLM: LoRA on every linear layer of the encoder."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModel

    from common.model import quiet_transformers, resolve_model

    quiet_transformers()
    encoder = AutoModel.from_pretrained(resolve_model(""), add_pooling_layer=False)
    lora = LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0,
                      target_modules=["query", "key", "value", "dense"])
    return NameTagger(get_peft_model(encoder, lora))


def trained_state(tagger: NameTagger) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in tagger.state_dict().items()
            if "lora_" in k or k.startswith(("shape.", "head."))}


def encode_words(tokenizer, sentences: list[list[str]], max_length: int = 160):
    """Tokenise pre-split words; each sub-token carries its word's index (or -1) and shape."""
    enc = tokenizer(sentences, is_split_into_words=True, truncation=True, max_length=max_length,
                    padding=True, return_tensors="pt")
    word_ids = [[-1 if w is None else w for w in enc.word_ids(i)] for i in range(len(sentences))]
    shapes = [[3 if w < 0 else word_shape(words[w]) for w in ids] for ids, words in zip(word_ids, sentences)]
    return enc, torch.tensor(word_ids), torch.tensor(shapes)


def save_asset(tagger: NameTagger, meta: dict, path: Path = ASSET) -> None:
    from safetensors.torch import save

    from common.files import atomic_write_bytes

    blob = save({k: v.to(torch.float16).contiguous() for k, v in trained_state(tagger).items()})
    text = json.dumps({**meta, "weights": base64.b64encode(blob).decode("ascii")}, indent=1)
    atomic_write_bytes(path, (text + "\n").encode())


@lru_cache(maxsize=1)
def _loaded():
    from safetensors.torch import load

    from common.errors import FedSiloError
    from common.model import load_tokenizer

    tagger = build_tagger()
    try:
        asset = json.loads(ASSET.read_text(encoding="utf-8"))
        state = {k: v.float() for k, v in load(base64.b64decode(asset["weights"])).items()}
        threshold = float(asset["threshold"])
    except Exception as err:  # noqa: BLE001 - json, base64 and safetensors each raise their own kind
        raise FedSiloError(f"{ASSET}: the name tagger's weights cannot be read ({type(err).__name__}); "
                           "reinstall FedSilo") from None
    if set(state) != set(trained_state(tagger)):
        raise FedSiloError(f"{ASSET}: not this tagger's weights; reinstall FedSilo")
    tagger.load_state_dict(state, strict=False)
    tagger.encoder = tagger.encoder.merge_and_unload()  # inference only: adapters folded into the weights
    return tagger.eval(), load_tokenizer(""), threshold


@torch.no_grad()
def word_probabilities(sentences: list[list[str]], batch_size: int = 32) -> list[np.ndarray]:
    """P(person) for every word of every pre-split sentence (first sub-token's probability)."""
    with _lock:  # one model per process; torch modules are not meant for concurrent calls
        tagger, tokenizer, _ = _loaded()
        out: list[np.ndarray] = [np.zeros(0, dtype=np.float32)] * len(sentences)
        order = sorted(range(len(sentences)), key=lambda i: len(sentences[i]))  # little padding per batch
        for k in range(0, len(order), batch_size):
            idx = order[k:k + batch_size]
            chunk = [sentences[i] for i in idx]
            enc, word_ids, shapes = encode_words(tokenizer, chunk)
            probs = torch.softmax(tagger(enc["input_ids"], enc["attention_mask"], shapes), dim=-1)[..., 1]
            for j, (i, words) in enumerate(zip(idx, chunk)):
                p = np.zeros(len(words), dtype=np.float32)
                seen = set()
                for pos, w in enumerate(word_ids[j].tolist()):
                    if w >= 0 and w not in seen:
                        seen.add(w)
                        p[w] = float(probs[j, pos])
                out[i] = p
        return out


def name_spans(words: list[tuple[int, int, str]], probs, threshold: float) -> list[tuple[int, int]]:
    """Runs of words called names (start, end, word -> character spans), trimmed of words that are
    never a name alone at either end (common.pii_patterns.NOT_NAMES: "Dr", "Dear", "DOB"; a run
    made only of them is dropped): "Dr Smith" gives "Smith", as the rules do."""
    from common.pii_patterns import NOT_NAMES

    def name_like(word: str) -> bool:
        return word.strip(".,") not in NOT_NAMES and any(c.isalpha() for c in word)

    runs, run = [], []
    for (start, end, word), p in zip(words, probs):
        if p >= (max(threshold, LOWER_CASE_THRESHOLD) if word_shape(word) == 0 else threshold):
            run.append((start, end, word))
        else:
            runs.append(run)
            run = []
    runs.append(run)
    spans = []
    for run in runs:
        keep = [i for i, (_, _, w) in enumerate(run) if name_like(w)]
        if keep:
            spans.append((run[keep[0]][0], run[keep[-1]][1]))
    return spans


def find_names(texts: list[str]) -> list[list[tuple[int, int]]]:
    """Character spans of person names in each text: runs of words the tagger calls a name."""
    if not texts:
        return []
    threshold = _loaded()[2]
    words = [[(m.start(), m.end(), m.group()) for m in WORD.finditer(t)] for t in texts]
    windows, owners = [], []
    for i, ws in enumerate(words):
        for k in range(0, max(len(ws), 1), MAX_WORDS):
            windows.append(ws[k:k + MAX_WORDS])
            owners.append(i)
    probs = word_probabilities([[w for _, _, w in ws] or [""] for ws in windows])
    spans: list[list[tuple[int, int]]] = [[] for _ in texts]
    for i, ws, p in zip(owners, windows, probs):
        spans[i] += name_spans(ws, p, threshold)
    return spans
