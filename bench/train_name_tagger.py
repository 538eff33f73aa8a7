"""Train the person-name tagger that NAME redaction uses (common/name_tagger.py), on CoNLL-2003.

Recipe: CoNLL-2003 English train (14,041 sentences; a word is a name when its tag is B-PER or
I-PER), the embedded MiniLM with LoRA rank 16 on every linear layer, a word-shape embedding and a
two-class head on each word's first sub-token; AdamW, learning rate 1e-3 with linear decay,
batch 32, 2 epochs, seed 0. The decision threshold is then chosen on CoNLL-2003 valid (never
on test): the highest threshold at which the rules and the tagger together fully cover TARGET_RECALL of
valid's person names, so that redaction errs on the side of removing. `--choose-only` keeps the
shipped weights and chooses the threshold again. Writes common/assets/name_tagger.json (LoRA, shape
embedding and head in float16, the threshold and how it was chosen). About 35 min on 2 cores.

    python bench/train_name_tagger.py [--epochs 2] [--limit N]
"""

from __future__ import annotations

import argparse
import json
import random
import time

import numpy as np
import torch
import torch.nn.functional as F

from harness import log
from public_ner import as_text, conll2003

import common.name_tagger as name_tagger
from common.name_tagger import ASSET, WORD, build_tagger, encode_words, name_spans, save_asset, word_probabilities

# Share of valid's person names the rules and the tagger must cover together. Above the 0.95 asked
# for on test: CoNLL-2003 test is known to be harder than valid (taggers lose 2-4 F1 points there).
TARGET_RECALL = 0.975


def batches(sentences, size: int, rng: random.Random):
    order = sorted(range(len(sentences)), key=lambda i: len(sentences[i][0]))  # similar lengths together
    chunks = [order[i:i + size] for i in range(0, len(order), size)]
    rng.shuffle(chunks)
    return chunks


def train(tagger, tokenizer, sentences, epochs: int, lr: float = 1e-3, batch: int = 32, seed: int = 0) -> None:
    torch.manual_seed(seed)
    rng = random.Random(seed)
    params = [p for p in tagger.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    total = epochs * len(batches(sentences, batch, random.Random(0)))
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: max(0.0, 1 - step / total))
    tagger.train()
    step, started = 0, time.monotonic()
    for epoch in range(epochs):
        for idx in batches(sentences, batch, rng):
            words = [sentences[i][0] for i in idx]
            enc, word_ids, shapes = encode_words(tokenizer, words)
            target = torch.full(word_ids.shape, -100)
            for j, i in enumerate(idx):
                seen = set()
                for pos, w in enumerate(word_ids[j].tolist()):
                    if w >= 0 and w not in seen:  # the first sub-token of each word carries its label
                        seen.add(w)
                        target[j, pos] = int(sentences[i][1][w].endswith("-PER"))
            logits = tagger(enc["input_ids"], enc["attention_mask"], shapes)
            loss = F.cross_entropy(logits.reshape(-1, 2), target.reshape(-1), ignore_index=-100)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            step += 1
            if step % 50 == 0:
                log(f"epoch {epoch + 1}/{epochs} step {step}/{total} loss {loss.item():.4f} "
                    f"({(time.monotonic() - started) / step:.2f} s/step)")
    tagger.eval()


def choose_threshold(sentences) -> dict:
    """The highest threshold at which the rules and the tagger together fully cover TARGET_RECALL of
    the person names of `sentences` (CoNLL-2003 valid), with the tagger's span precision there."""
    from redaction import covered

    from common.pii_patterns import FINDERS

    gold = [as_text(tokens, tags) for tokens, tags in sentences]
    words = [[(m.start(), m.end(), m.group()) for m in WORD.finditer(t)] for t, _ in gold]
    probs = word_probabilities([[w for _, _, w in ws] or [""] for ws in words])
    rules = [[s for find in FINDERS["NAME"] for s in find(t)] for t, _ in gold]
    for threshold in np.round(np.arange(0.95, 0.0, -0.01), 2):
        caught = total = flagged = right = 0
        for (text, names), ws, p, r in zip(gold, words, probs, rules):
            spans = name_spans(ws, p, threshold)
            total += len(names)
            caught += sum(covered(text, n, spans + r) for n in names)
            flagged += len(spans)
            right += sum(any(max(a, s) < min(b, e) for s, e in names) for a, b in spans)
        if caught / total >= TARGET_RECALL:
            return {"threshold": float(threshold), "valid_name_recall": round(caught / total, 4),
                    "valid_tagger_span_precision": round(right / max(flagged, 1), 4)}
    raise SystemExit(f"no threshold reaches name recall {TARGET_RECALL} on valid")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--limit", type=int, default=0, help="train on the first N sentences only (a smoke run)")
    ap.add_argument("--choose-only", action="store_true", help="keep the shipped weights; choose the threshold again")
    args = ap.parse_args()
    from common.model import load_tokenizer

    train_set, valid = conll2003("train"), conll2003("valid")
    if args.limit:
        train_set = train_set[: args.limit]
    if args.choose_only:
        tagger, meta = name_tagger._loaded()[0], json.loads(ASSET.read_text())
        meta.pop("weights")
    else:
        tagger, tokenizer = build_tagger(), load_tokenizer("")
        log(f"training on {len(train_set)} sentences, {args.epochs} epochs")
        train(tagger, tokenizer, train_set, args.epochs)
        meta = {"trained_on": "CoNLL-2003 English train", "sentences": len(train_set), "epochs": args.epochs,
                "lora_rank": 16, "seed": 0}
        ASSET.parent.mkdir(exist_ok=True)
        save_asset(tagger, {"threshold": 0.5})  # the threshold is chosen with the saved (float16) weights
        name_tagger._loaded.cache_clear()
    meta = {**meta, **choose_threshold(valid), "target_valid_name_recall": TARGET_RECALL}
    save_asset(tagger, meta)
    name_tagger._loaded.cache_clear()
    log(f"wrote {ASSET} ({ASSET.stat().st_size / 1e6:.1f} MB); {meta}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
