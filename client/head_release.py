"""Round 1 of a run with head-init stats: the site releases its head statistics, once.

The site encodes its training records with the frozen encoder it received (no training, no
gradient), sums the bounded terms of common/head_stats.py and, under DP, adds Gaussian noise of
std z * sqrt(2) to every value from its own CSPRNG (client/dp_random.py): one Gaussian
mechanism, charged to the site's ledger before anything is computed (client/site_round.py).
What leaves is the noisy sums divided by the site's training-record count (a count every report
already carries), so that SecAgg+'s weighted mean of them is the federation's mean statistics.
"""

from __future__ import annotations

import numpy as np
import torch

from client.dp_random import SiteRandom
from common import device as devices
from common.batching import Encoded, collate, length_sorted_batches
from common.head_stats import SENSITIVITY, sufficient_stats


@torch.no_grad()
def embeddings(model, data: Encoded, pad_id: int, batch_size: int = 64) -> np.ndarray:
    """What the model's head reads for each record (its pooled embedding), in eval mode."""
    was_training = model.training
    model.eval()
    out = np.zeros((len(data), model.classifier.in_features), dtype=np.float64)
    device = devices.of(model)
    try:
        for idx in length_sorted_batches(data, batch_size):
            batch = collate(data, idx, pad_id, device)
            batch.pop("labels", None)
            out[idx] = model.pooled(**batch).double().cpu().numpy()
    finally:
        model.train(was_training)
    return out


def release(model, data: Encoded, classes: int, pad_id: int, noise_multiplier: float | None) -> list[np.ndarray]:
    """The site's statistics as they travel: (sums + noise) / n, float32, in
    common/head_stats.stats_shapes order. noise_multiplier None: exact sums (a site without DP)."""
    stats = sufficient_stats(embeddings(model, data, pad_id), data.labels, classes)
    if noise_multiplier is not None:
        rng = SiteRandom()  # never seeded from the run: the server must not be able to replay it
        std = noise_multiplier * SENSITIVITY
        stats = [s + rng.gaussian_like(torch.from_numpy(s), std).numpy() for s in stats]
    n = max(1, len(data))
    return [(s / n).astype(np.float32) for s in stats]
