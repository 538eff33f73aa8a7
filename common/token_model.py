"""Token classification (NER) on the same encoder: a linear tag head on every token's last hidden
state, and the word-to-sub-token alignment that feeds it.

The first sub-token of each word carries the word's tag; the other sub-tokens, [CLS] and [SEP]
carry IGNORE and count in no loss. The loss of one sentence is the mean over its tagged tokens:
under DP-SGD the protected unit is one sentence, and its per-example gradient is the gradient of
that one number (tests/test_token_model.py checks it against the sentence trained alone).

The site's round (client/site_round.py) trains it through the same code as the classifier:
both data classes offer `batch()` and per-record `losses()`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from common.config import RunConfig
from common.model import (TOKEN_HEAD, ClassifierOutput, _add_lora, _load_encoder, linear_head, load_classifier,
                          quiet_transformers, resolve_model)

IGNORE = -100  # torch's cross-entropy ignore_index


@dataclass(frozen=True)
class EncodedSentences:
    ids: list[list[int]]  # sub-token ids per sentence, truncated, unpadded
    labels: list[list[int]]  # a tag id on each word's first sub-token, IGNORE elsewhere
    word_ids: list[list[int | None]]  # the word each sub-token belongs to (None: [CLS], [SEP])

    weights = None  # no per-record weights (fairness-reweight is for text classification)

    def __len__(self) -> int:
        return len(self.ids)

    def batch(self, idx, pad_id: int, device="cpu") -> dict[str, torch.Tensor]:
        return collate_sentences(self, idx, pad_id, device)

    @staticmethod
    def losses(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """One loss per sentence: the unit DP-SGD clips."""
        return sentence_losses(logits, labels)


def encode_sentences(tokenizer, words: list[list[str]], tags: list[list[int]] | None, max_length: int) -> EncodedSentences:
    """Sub-tokenise sentences given as words; `tags` (class ids per word) or None (prediction)."""
    if not words:
        return EncodedSentences([], [], [])
    out = tokenizer(words, is_split_into_words=True, truncation=True, max_length=max_length, padding=False)
    ids, labels, word_ids = [], [], []
    for i in range(len(words)):
        wid = out.word_ids(i)
        first = [w is not None and (j == 0 or wid[j - 1] != w) for j, w in enumerate(wid)]
        labels.append([tags[i][w] if tags is not None and f else IGNORE for w, f in zip(wid, first)])
        ids.append(list(out["input_ids"][i]))
        word_ids.append(list(wid))
    return EncodedSentences(ids, labels, word_ids)


def collate_sentences(enc: EncodedSentences, idx, pad_id: int, device="cpu") -> dict[str, torch.Tensor]:
    """A batch padded to its longest sentence; labels padded with IGNORE."""
    width = max(len(enc.ids[i]) for i in idx)
    input_ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(idx), width), dtype=torch.long)
    labels = torch.full((len(idx), width), IGNORE, dtype=torch.long)
    for row, i in enumerate(idx):
        n = len(enc.ids[i])
        input_ids[row, :n] = torch.tensor(enc.ids[i])
        attention[row, :n] = 1
        labels[row, :n] = torch.tensor(enc.labels[i])
    batch = {"input_ids": input_ids, "attention_mask": attention, "token_type_ids": torch.zeros_like(input_ids),
             "position_ids": torch.arange(width).repeat(len(idx), 1), "labels": labels}
    return {k: v.to(device) for k, v in batch.items()}


def sentence_losses(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Each sentence's mean cross-entropy over its tagged tokens (0 for a sentence with none)."""
    per_token = F.cross_entropy(logits.transpose(1, 2), labels, ignore_index=IGNORE, reduction="none")
    counted = (labels != IGNORE).sum(dim=1)
    return per_token.sum(dim=1) / counted.clamp(min=1)


class TokenTagger(torch.nn.Module):
    """A linear tag head on each token's last hidden state (BERT's token-classification head,
    on an encoder that may carry LoRA adapters)."""

    head_reads = TOKEN_HEAD  # saved with the head (common/model.save_classifier_atomic)

    def __init__(self, encoder: torch.nn.Module, num_tags: int):
        super().__init__()
        self.encoder = encoder
        self.dropout, self.classifier = linear_head(encoder.config, num_tags)

    @property
    def config(self):
        return self.encoder.config

    def forward(self, input_ids, attention_mask, labels=None, **inputs):
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask, **inputs).last_hidden_state
        logits = self.classifier(self.dropout(hidden))
        loss = None if labels is None else sentence_losses(logits, labels).mean()
        return ClassifierOutput(logits=logits, loss=loss)


def build_tagger(cfg: RunConfig, tags: tuple[str, ...], seed: int | None = None) -> TokenTagger:
    """Base encoder + a new tag head; what trains follows cfg.trainable as for the classifier."""
    quiet_transformers()
    path = resolve_model(cfg.model)
    torch.manual_seed(cfg.seed if seed is None else seed)
    encoder = _load_encoder(path, cfg.model or path, tags)
    if cfg.trainable == "lora":
        encoder = _add_lora(encoder, cfg)
    elif cfg.trainable == "head":
        encoder.requires_grad_(False)
    model = TokenTagger(encoder, len(tags))
    model.train()
    return model


def word_predictions(logits: np.ndarray, word_ids: list[int | None], n_words: int) -> list[int]:
    """Each word's predicted tag: its first sub-token's; a word cut off by max-length gets tag 0 (O)."""
    out = [0] * n_words
    seen = set()
    for position, word in enumerate(word_ids):
        if word is not None and word not in seen and position < len(logits):
            out[word] = int(np.argmax(logits[position]))
            seen.add(word)
    return out


def load_tagger(model_dir) -> TokenTagger:
    """A final model of task ner, as save_classifier_atomic wrote it, in eval mode."""
    return load_classifier(model_dir, make=TokenTagger)
