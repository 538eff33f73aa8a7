"""The NER model pieces (common/token_model.py): word-to-sub-token alignment, a tag head that
learns, and per-sentence gradients under Opacus (DP-SGD's unit is one sentence). Issue 31, step 2."""

from __future__ import annotations

import random

import numpy as np
import torch

from common.config import RunConfig
from common.model import load_tokenizer
from common.token_model import (IGNORE, build_tagger, collate_sentences, encode_sentences, sentence_losses,
                                word_predictions)

TAGS = ("O", "B-Disease", "I-Disease")
DISEASES = [["colon", "cancer"], ["adenomatous", "polyposis", "coli"], ["cystic", "fibrosis"], ["asthma"],
            ["myotonic", "dystrophy"]]
FILLER = ["patients", "with", "the", "study", "of", "in", "families", "were", "treated", "for", "and", "found"]


def sentences(n: int, seed: int):
    rng = random.Random(seed)
    words, tags = [], []
    for _ in range(n):
        w, t = [], []
        for _ in range(rng.randint(1, 3)):
            w += rng.sample(FILLER, 3)
            t += [0, 0, 0]
            d = rng.choice(DISEASES)
            w += d
            t += [1] + [2] * (len(d) - 1)
        words.append(w)
        tags.append(t)
    return words, tags


def test_the_first_sub_token_of_each_word_carries_its_tag(tiny_model):
    tokenizer = load_tokenizer(str(tiny_model))
    words = [["adenomatous", "polyposis", "coli", "is", "rare"]]
    enc = encode_sentences(tokenizer, words, [[1, 2, 2, 0, 0]], 64)
    ids, labels, wid = enc.ids[0], enc.labels[0], enc.word_ids[0]
    assert len(ids) > len(words[0]) + 2  # "adenomatous" and "polyposis" split into several pieces
    assert labels[0] == labels[-1] == IGNORE and wid[0] is None and wid[-1] is None  # [CLS], [SEP]
    tagged = [(w, lab) for w, lab in zip(wid, labels) if lab != IGNORE]
    assert tagged == [(0, 1), (1, 2), (2, 2), (3, 0), (4, 0)]
    logits = np.zeros((len(ids), 3))
    for position, lab in enumerate(labels):
        if lab != IGNORE:
            logits[position, lab] = 1.0
    assert word_predictions(logits, wid, 5) == [1, 2, 2, 0, 0]
    assert word_predictions(logits[:3], wid, 5)[2:] == [0, 0, 0]  # cut off by max-length: O


def test_a_tiny_tagger_learns_disease_mentions(tiny_model):
    cfg = RunConfig.from_dict({"model": str(tiny_model), "labels": ",".join(TAGS), "trainable": "full"})
    model = build_tagger(cfg, TAGS)
    tokenizer = load_tokenizer(str(tiny_model))
    train = encode_sentences(tokenizer, *sentences(160, 1), 64)
    test_words, test_tags = sentences(40, 2)
    test = encode_sentences(tokenizer, test_words, test_tags, 64)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    order = list(range(len(train)))
    for epoch in range(4):
        random.Random(epoch).shuffle(order)
        for i in range(0, len(order), 16):
            loss = model(**collate_sentences(train, order[i:i + 16], tokenizer.pad_token_id)).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        batch = collate_sentences(test, list(range(len(test))), tokenizer.pad_token_id)
        batch.pop("labels")
        logits = model(**batch).logits.numpy()
    right = total = 0
    for i, tags in enumerate(test_tags):
        predicted = word_predictions(logits[i], test.word_ids[i], len(tags))
        right += sum(p == t for p, t in zip(predicted, tags))
        total += len(tags)
    majority = sum(t == 0 for tags in test_tags for t in tags) / total
    print(f"token accuracy {right / total:.3f} (all O: {majority:.3f})")
    assert right / total > majority + 0.1


def test_opacus_per_sentence_gradients_are_each_sentence_alone(tiny_model):
    from opacus import GradSampleModule

    cfg = RunConfig.from_dict({"model": str(tiny_model), "labels": ",".join(TAGS)})  # LoRA + head
    model = build_tagger(cfg, TAGS)  # train mode (Opacus records activations only then); the tiny BERT has no dropout
    tokenizer = load_tokenizer(str(tiny_model))
    words, tags = sentences(3, 5)
    enc = encode_sentences(tokenizer, words, tags, 64)
    params = [p for p in model.parameters() if p.requires_grad]
    alone = []
    for i in range(3):
        model.zero_grad()
        batch = collate_sentences(enc, [i], tokenizer.pad_token_id)
        labels = batch.pop("labels")
        sentence_losses(model(**batch).logits, labels).sum().backward()
        alone.append([p.grad.clone() for p in params])
    model.zero_grad()
    wrapped = GradSampleModule(model, batch_first=True, loss_reduction="sum")
    batch = collate_sentences(enc, [0, 1, 2], tokenizer.pad_token_id)  # padded to the longest
    labels = batch.pop("labels")
    sentence_losses(wrapped(**batch).logits, labels).sum().backward()
    for i in range(3):
        for p, g in zip(params, alone[i]):
            torch.testing.assert_close(p.grad_sample[i], g, atol=1e-6, rtol=1e-4)
    wrapped.remove_hooks()
