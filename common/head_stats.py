"""A classification head from sufficient statistics: the least-squares head the sites' sums give.

Why: DP-SGD moves a fresh head slowly (each clipped, noisy step carries little signal), and with
many classes or few records per site it never leaves the majority class. A linear least-squares
head needs only two sums over the records, each a sum of one bounded term per record:

    G = sum x~ x~^T  ((d+1) x (d+1))      X = sum x~ onehot(y)^T  ((d+1) x C)

where x~ = (x / |x|, 1) / sqrt(2) is the frozen encoder's mean-pooled embedding, L2-normalised,
with a constant feature for the bias, so |x~| = 1 exactly. Adding or removing one record then
changes the upper triangle of G by at most 1 and X by exactly 1 (Frobenius norm): the pair has
L2 sensitivity sqrt(2), and one Gaussian release of both (noise multiplier z, std z*sqrt(2) on
every value) is the Gaussian mechanism, an accountant entry (z, q=1, steps=1).

The sums add up across sites, which is exactly what SecAgg+ reveals: each site sends its noisy
sums divided by its training-record count n_k (values within +-1, SecAgg+'s clipping range),
weighted by n_k, so the aggregate is (sum of the noisy sums) / (total records). The server solves
the ridge system (G + lambda I) W = X once (post-processing: no further privacy cost).
This module is the arithmetic shared by sites (client/head_release.py) and the server
(server/strategy.py); it draws no randomness.
"""

from __future__ import annotations

import math

import numpy as np

SENSITIVITY = math.sqrt(2.0)  # of (upper triangle of G, X) for one added or removed record
# Ridge penalty on the mean statistics: RIDGE_FLOOR, plus RIDGE_NOISE times the spectral norm the
# noise on the mean Gram matrix has (about 2 std sqrt(d+1) for a symmetric Gaussian matrix).
# Both chosen on validation rows (bench/private_head.py), never on a test file.
RIDGE_FLOOR = 1e-3
RIDGE_NOISE = 0.1
# Label names are public (the coordinator sets them): the ridge pulls the head toward a zero-shot
# head that scores a record by its embedding's cosine with each label name's, times PRIOR_SCALE
# (centred over the labels), instead of toward zero. With few or very noisy statistics the head
# stays near the zero-shot one; with many, the data decide. Chosen on validation rows.
PRIOR_SCALE = 3.0
# The least-squares head predicts one-hot targets (values near 0 and 1); as logits for softmax
# cross-entropy they are multiplied by LOGIT_SCALE so that DP-SGD starts from confident,
# not uniform, predictions (bench/private_head.py).
LOGIT_SCALE = 8.0


def augmented(features: np.ndarray) -> np.ndarray:
    """x~ = (x / |x|, 1) / sqrt(2) for each row: norm exactly 1 (a zero row gives (0, 1/sqrt(2)))."""
    x = np.asarray(features, dtype=np.float64)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    x = np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)
    return np.hstack([x, np.ones((len(x), 1))]) / math.sqrt(2.0)


def stats_shapes(dim: int, classes: int) -> list[tuple[int, ...]]:
    """What a statistics release is cut into: G's upper triangle (row-major, diagonal included),
    then X. `dim` is the encoder's hidden size (the bias feature is added here)."""
    m = dim + 1
    return [(m * (m + 1) // 2,), (m, classes)]


def sufficient_stats(features: np.ndarray, labels: np.ndarray, classes: int) -> list[np.ndarray]:
    """[upper triangle of G, X] over the records (float64, before any noise)."""
    xa = augmented(features)
    gram = xa.T @ xa
    onehot = np.zeros((len(xa), classes))
    onehot[np.arange(len(xa)), np.asarray(labels, dtype=np.int64)] = 1.0
    return [gram[np.triu_indices(len(gram))], xa.T @ onehot]


def full_gram(upper: np.ndarray, m: int) -> np.ndarray:
    """The symmetric matrix whose upper triangle (diagonal included) is `upper`."""
    gram = np.zeros((m, m))
    gram[np.triu_indices(m)] = upper
    return gram + np.triu(gram, 1).T


def ridge_for(noise_std_of_mean: float, m: int) -> float:
    """The ridge penalty for mean statistics whose every value carries Gaussian noise of this std."""
    return RIDGE_FLOOR + RIDGE_NOISE * 2.0 * noise_std_of_mean * math.sqrt(m)


def label_prior(label_embeddings: np.ndarray) -> np.ndarray:
    """The zero-shot head as coefficients on x~ ((d+1) x C): it predicts 1/C plus PRIOR_SCALE times
    (the cosine of x with label c's embedding minus the mean cosine over the labels)."""
    e = np.asarray(label_embeddings, dtype=np.float64)
    e = e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)
    beta = np.zeros((e.shape[1] + 1, len(e)))
    beta[:-1] = math.sqrt(2.0) * PRIOR_SCALE * (e - e.mean(axis=0)).T  # x_unit = sqrt(2) x~[:d]
    beta[-1] = math.sqrt(2.0) / len(e)  # the constant 1 = sqrt(2) x~[d]
    return beta


def solve_head(upper_mean: np.ndarray, cross_mean: np.ndarray, ridge: float, prior: np.ndarray | None = None,
               logit_scale: float = LOGIT_SCALE) -> tuple[np.ndarray, np.ndarray]:
    """(weight (C, d), bias (C,)) of a linear layer on the pooled embedding that, after the model
    normalises it (common/model.py), gives logit_scale times the ridge least-squares prediction.
    The noisy Gram matrix may have negative eigenvalues: they are raised to zero before the
    ridge, so the system is always well posed."""
    m = cross_mean.shape[0]
    vals, vecs = np.linalg.eigh(full_gram(np.asarray(upper_mean, dtype=np.float64), m))
    vals = np.maximum(vals, 0.0) + ridge
    target = np.asarray(cross_mean, dtype=np.float64) + (0.0 if prior is None else ridge * prior)
    beta = vecs @ ((vecs.T @ target) / vals[:, None])  # (m, C): argmin |x~ beta - y|^2 + ridge |beta - prior|^2
    # logits = x~ @ beta with x~ = (x_unit, 1)/sqrt(2): weight on x_unit and bias, scaled
    weight = logit_scale * beta[:-1].T / math.sqrt(2.0)
    bias = logit_scale * beta[-1] / math.sqrt(2.0)
    return weight.astype(np.float32), bias.astype(np.float32)
