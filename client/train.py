"""Local training and evaluation at a site: what happens to the site's data inside one round."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from common import device as devices
from common.batching import Encoded, collate, length_sorted_batches, shuffled_batches
from common.config import RunConfig
from common.model import optimizer_groups


def train_local(model, data: Encoded, cfg: RunConfig, pad_id: int, seed: int,
                desc: str = "train") -> dict[str, float]:
    """Plain (non-private) local training with AdamW, only when the site turned DP off."""
    model.train()
    groups = optimizer_groups(model, cfg.lr_for(dp=False), cfg.head_lr_for(dp=False))
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr_for(dp=False), weight_decay=0.0)
    rng = np.random.default_rng(seed)
    device = devices.of(model)
    losses: list[float] = []
    for epoch in range(cfg.local_epochs):
        batches = shuffled_batches(len(data), cfg.batch_size, rng)
        bar = tqdm(batches, desc=f"{desc} epoch {epoch + 1}/{cfg.local_epochs}", unit="batch",
                   leave=False, mininterval=1.0, disable=None)  # None: only on a terminal
        for idx in bar:
            batch = data.batch(idx, pad_id, device)
            labels = batch.pop("labels")
            each = data.losses(model(**batch).logits, labels)  # one per record (per sentence for NER)
            if data.weights is None:
                loss = each.mean()
            else:  # --fairness-reweight: each record's (group, label) weight (common/fairness.py)
                loss = (each * torch.as_tensor(data.weights[idx], dtype=each.dtype, device=each.device)).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}")
        bar.close()
    return {"train_loss": float(np.mean(losses)) if losses else float("nan")}


@torch.no_grad()
def predict_logits(model, data: Encoded, pad_id: int, batch_size: int = 64) -> np.ndarray:
    model.eval()
    out = np.zeros((len(data), model.config.num_labels), dtype=np.float32)
    device = devices.of(model)
    for idx in length_sorted_batches(data, batch_size):
        batch = collate(data, idx, pad_id, device)
        batch.pop("labels", None)
        out[idx] = model(**batch).logits.float().cpu().numpy()
    return out


def evaluate_local(model, data: Encoded, pad_id: int, num_labels: int,
                   predictions: bool = False) -> tuple:
    """Mean cross-entropy and the confusion matrix (rows: true class, columns: predicted); with
    `predictions`, each record's predicted class too (for the counts by group, kept at the site)."""
    logits = predict_logits(model, data, pad_id)
    labels = data.labels
    loss = float(F.cross_entropy(torch.from_numpy(logits), torch.from_numpy(labels)).item())
    confusion = np.zeros((num_labels, num_labels), dtype=np.int64)
    predicted = logits.argmax(axis=1)
    np.add.at(confusion, (labels, predicted), 1)
    return (loss, confusion, predicted) if predictions else (loss, confusion)
