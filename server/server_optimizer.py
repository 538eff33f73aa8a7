"""The server's step: how the global model moves from one round's aggregate delta.

The sites' mean delta is the round's pseudo-gradient (its negative); the server treats it as
Reddi et al. ("Adaptive Federated Optimization", ICLR 2021) do, with Flower's formulas
(flwr.server.strategy.FedAdam / FedYogi, which tests/test_server_optimizer.py checks it against):

    sgd   step = lr * delta, or with momentum b (FedAvgM, Hsu et al. 2019): m = b*m + delta, step = lr * m
    adam  m = b1*m + (1-b1)*delta;  v = b2*v + (1-b2)*delta^2;
          step = lr * sqrt(1-b2^t)/(1-b1^t) * m / (sqrt(v) + tau)      (t: the server's t-th step)
    yogi  m as adam;  v = v - (1-b2)*delta^2*sign(v - delta^2);  step = lr * m / (sqrt(v) + tau)

with m and v starting at 0. Every rule reads only the aggregate (the one sum SecAgg+ reveals), so
it is post-processing: the sites' DP guarantees and secure aggregation hold as they are. Adam and
Yogi step each coordinate by about lr whatever the update's scale, so their lr is far below sgd's
1 (the paper tunes it over 10^-3 .. 1).
"""

from __future__ import annotations

import numpy as np

from common.errors import FedSiloError

KINDS = ("sgd", "adam", "yogi")
BETA1, BETA2 = 0.9, 0.99  # the paper's defaults


class ServerOptimizer:
    """One run's server step and the buffers it keeps between rounds (saved after each round)."""

    def __init__(self, kind: str, lr: float, momentum: float = 0.0, tau: float = 1e-3):
        if kind not in KINDS:
            raise FedSiloError(f"server-optimizer: {kind!r} is not one of {', '.join(KINDS)}")
        self.kind, self.lr, self.momentum, self.tau = kind, lr, momentum, tau
        self.buffers: list[list[np.ndarray]] = []  # sgd with momentum: [m]; adam, yogi: [m, v]
        self.t = 0  # adam, yogi: steps taken

    @property
    def stateful(self) -> bool:
        return self.kind != "sgd" or self.momentum > 0

    @property
    def file_kind(self) -> str:
        """The name of the rounds/ file that holds the buffers (momentum-NNNN.npz for FedAvgM, as before)."""
        return "momentum" if self.kind == "sgd" else f"{self.kind}-moments"

    def step(self, delta: list[np.ndarray]) -> list[np.ndarray]:
        delta = [d.astype(np.float32) for d in delta]
        if self.kind == "sgd":
            if not self.momentum:
                return delta if self.lr == 1.0 else [self.lr * d for d in delta]
            m = delta if not self.buffers else [self.momentum * b + d for b, d in zip(self.buffers[0], delta)]
            self.buffers = [m]
            return [self.lr * x for x in m]
        if not self.buffers:
            self.buffers = [[np.zeros_like(d) for d in delta], [np.zeros_like(d) for d in delta]]
        self.t += 1
        m = [BETA1 * a + (1 - BETA1) * d for a, d in zip(self.buffers[0], delta)]
        sq = [d * d for d in delta]
        if self.kind == "adam":
            v = [BETA2 * b + (1 - BETA2) * s for b, s in zip(self.buffers[1], sq)]
            lr = self.lr * np.sqrt(1 - BETA2 ** self.t) / (1 - BETA1 ** self.t)  # Kingma & Ba's bias correction
        else:  # yogi: v moves towards delta^2 by at most (1-b2)*delta^2 a round, so it grows slower than Adam's
            v = [b - (1 - BETA2) * s * np.sign(b - s) for b, s in zip(self.buffers[1], sq)]
            lr = self.lr
        self.buffers = [m, v]
        return [(lr * a / (np.sqrt(b) + self.tau)).astype(np.float32) for a, b in zip(m, v)]

    def state(self) -> list[np.ndarray]:
        """The buffers as one flat list of arrays, adam's and yogi's step count last (empty before
        the first step or when stateless)."""
        flat = [a for buffer in self.buffers for a in buffer]
        return flat + [np.array([self.t], dtype=np.int64)] if flat and self.kind != "sgd" else flat

    def load(self, arrays: list[np.ndarray], shapes: list[tuple], where: str) -> None:
        """Restore state() of a completed round; `where` names the file in the error."""
        parts, n = (1, 0) if self.kind == "sgd" else (2, 1)
        if len(arrays) != parts * len(shapes) + n or [a.shape for a in arrays[:parts * len(shapes)]] != \
                list(shapes) * parts or (n and arrays[-1].shape != (1,)):
            raise FedSiloError(f"cannot resume: {where} does not fit the model")
        self.buffers = [[a.astype(np.float32) for a in arrays[i * len(shapes):(i + 1) * len(shapes)]]
                        for i in range(parts)]
        self.t = int(arrays[-1][0]) if n else 0
