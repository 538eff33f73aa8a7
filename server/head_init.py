"""The server's side of head-init stats: the global head solved from the sites' mean statistics.

Round 1 of such a run carries no model update: each site sends its (noisy) head statistics
(client/head_release.py), and what the server gets (the SecAgg+ sum, or FedAvg's weighted mean
without it) is the federation's mean statistics. The server solves the ridge least-squares head
once (common/head_stats.py) and puts it in place of the global model's classification head;
every other trainable tensor (the LoRA adapters) stays as it was. The ridge pulls the head toward
a zero-shot head from the label names, which are public. This reads only the aggregate and the
labels: post-processing, at no privacy cost.
"""

from __future__ import annotations

import math

import numpy as np

from common.errors import FedSiloError
from common.head_stats import SENSITIVITY, label_prior, ridge_for, solve_head, stats_shapes


def release_shapes(global_weights: list[np.ndarray]) -> list[tuple[int, ...]]:
    """What a round-1 reply is cut into; the head is the model's last two trainable tensors
    (classifier weight (C, d) and bias (C,): common/model.py registers it after the encoder)."""
    head = [w.shape for w in global_weights[-2:]]
    if len(head) != 2 or len(head[0]) != 2 or head[1] != head[0][:1]:
        raise FedSiloError(f"head-init stats: the model's last trainable tensors {head} are not a linear head")
    classes, dim = head[0]
    return stats_shapes(dim, classes)


def noise_std_of_mean(reports: list[dict]) -> float:
    """Std of the Gaussian noise on each value of the mean statistics, from what the sites
    reported: sqrt(sum over DP sites of (z sqrt(2))^2) / (their total training records)."""
    records = sum(int(r.get("records", 0)) for r in reports)
    variance = sum((float(r["noise_multiplier"]) * SENSITIVITY) ** 2 for r in reports
                   if r.get("dp") and "noise_multiplier" in r)
    return math.sqrt(variance) / records if records else 0.0


def label_names_prior(model, tokenizer, labels: tuple[str, ...], max_length: int) -> np.ndarray:
    """The zero-shot prior of common/head_stats.label_prior from the label names, as the base
    encoder embeds them ('card_arrival' is read as 'card arrival'). Public: no site's data."""
    import torch

    from common.batching import collate, encode

    texts = [label.replace("_", " ").replace("-", " ") for label in labels]
    data = encode(tokenizer, texts, max_length)
    batch = collate(data, list(range(len(texts))), tokenizer.pad_token_id or 0)
    batch.pop("labels", None)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        embedded = model.pooled(**batch).double().numpy()
    model.train(was_training)
    return label_prior(embedded)


def with_solved_head(global_weights: list[np.ndarray], mean_stats: list[np.ndarray],
                     reports: list[dict], prior: np.ndarray | None = None) -> tuple[list[np.ndarray], float]:
    """The global weights with the head solved from `mean_stats` (ridge toward `prior` when the
    statistics carry DP noise); also the ridge penalty used."""
    upper, cross = (np.asarray(s, dtype=np.float64) for s in mean_stats)
    noise = noise_std_of_mean(reports)
    ridge = ridge_for(noise, cross.shape[0])
    # Without noise the prior only costs (validation: bench/private_head.py); with it, it pays.
    weight, bias = solve_head(upper, cross, ridge, prior if noise > 0 else None)
    out = [w.copy() for w in global_weights]
    out[-2], out[-1] = weight.astype(out[-2].dtype), bias.astype(out[-1].dtype)
    return out, ridge
