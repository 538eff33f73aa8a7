"""A site's evaluation of a tagger on its held-out sentences: counts only leave the site.

Two reports, both sums over sentences: a word-level confusion matrix over the run's tags (the
token-level report per tag; its total is the number of words evaluated, the reply's
num_examples) and seqeval's entity counts per type (common/ner_report.py), from which the
coordinator computes entity-level precision, recall and F1 over all sites at once.
"""

from __future__ import annotations

import numpy as np
import torch

from common import device as devices
from common.ner_report import entity_counts
from common.token_model import EncodedSentences, IGNORE, collate_sentences, sentence_losses, word_predictions


@torch.no_grad()
def tag_sentences(model, data: EncodedSentences, pad_id: int, n_words: list[int],
                  batch_size: int = 32) -> tuple[list[list[int]], float]:
    """Each sentence's predicted tag id per word, and the mean sentence loss (nan without labels)."""
    model.eval()
    device = devices.of(model)
    out: list[list[int]] = [[] for _ in range(len(data))]
    order = np.argsort([len(ids) for ids in data.ids], kind="stable")
    losses = []
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        batch = collate_sentences(data, idx, pad_id, device)
        labels = batch.pop("labels")
        logits = model(**batch).logits
        if (labels != IGNORE).any():
            losses.append(sentence_losses(logits, labels).cpu())
        logits = logits.float().cpu().numpy()
        for row, i in enumerate(idx):
            out[i] = word_predictions(logits[row, : len(data.ids[i])], data.word_ids[i], n_words[i])
    loss = float(torch.cat(losses).mean()) if losses else float("nan")
    return out, loss


def evaluate_tagger(model, data: EncodedSentences, tag_ids: list[list[int]], tags: tuple[str, ...],
                    pad_id: int) -> tuple[float, np.ndarray, dict]:
    """(mean sentence loss, word-level confusion k x k, entity counts by type)."""
    predicted, loss = tag_sentences(model, data, pad_id, [len(t) for t in tag_ids])
    k = len(tags)
    confusion = np.zeros((k, k), dtype=np.int64)
    for true, guess in zip(tag_ids, predicted):
        np.add.at(confusion, (np.asarray(true, dtype=np.int64), np.asarray(guess, dtype=np.int64)), 1)
    named = lambda ids: [tags[i] for i in ids]  # noqa: E731
    counts = entity_counts([named(t) for t in tag_ids], [named(p) for p in predicted])
    return loss, confusion, counts
