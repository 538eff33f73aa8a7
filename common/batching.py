"""Tokenise once, then pad each batch only to its own longest text.

Compute is the bottleneck on CPU: padding every batch to max-length would spend most of it
on pad tokens, so texts are tokenised without padding and batches are padded on the fly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Encoded:
    ids: list[list[int]]  # token ids per text, truncated, unpadded
    labels: np.ndarray | None
    weights: np.ndarray | None = None  # per-record loss weights in (0, 1] (fairness-reweight), or none

    def __len__(self) -> int:
        return len(self.ids)

    # What training asks of any task's data (common/token_model.py's EncodedSentences has the same).
    def batch(self, idx, pad_id: int, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
        return collate(self, idx, pad_id, device)

    @staticmethod
    def losses(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """One loss per record: the unit DP-SGD clips."""
        return F.cross_entropy(logits, labels, reduction="none")


def encode(tokenizer, texts: list[str], max_length: int, labels: np.ndarray | None = None) -> Encoded:
    if not texts:  # an empty split (eval-fraction 0); the fast tokenizer fails on []
        return Encoded([], labels)
    out = tokenizer(texts, truncation=True, max_length=max_length, padding=False)
    return Encoded(list(out["input_ids"]), labels)


def collate(enc: Encoded, idx, pad_id: int, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """One batch padded to its longest member, on `device`; position ids and token types are
    explicit (B, T) tensors, which per-example gradient hooks need."""
    seqs = [enc.ids[i] for i in idx]
    width = max(len(s) for s in seqs)
    input_ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, seq in enumerate(seqs):
        input_ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        attention[row, : len(seq)] = 1
    batch = {
        "input_ids": input_ids,
        "attention_mask": attention,
        "token_type_ids": torch.zeros_like(input_ids),
        "position_ids": torch.arange(width).repeat(len(seqs), 1),
    }
    if enc.labels is not None:
        batch["labels"] = torch.as_tensor(enc.labels[list(idx)], dtype=torch.long)
    if torch.device(device).type == "cpu":
        return batch
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def shuffled_batches(n: int, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Training order: a fresh permutation cut into batches."""
    order = rng.permutation(n)
    return [order[i : i + batch_size] for i in range(0, n, batch_size)]


def length_sorted_batches(enc: Encoded, batch_size: int) -> list[np.ndarray]:
    """Evaluation / prediction order: similar lengths together, so padding is near zero."""
    order = np.argsort([len(s) for s in enc.ids], kind="stable")
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
