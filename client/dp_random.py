"""The site's own randomness for DP-SGD: Gaussian noise and Poisson sampling from a CSPRNG.

DP-SGD's guarantee holds only if nobody who sees the update can predict its noise or which
records each step sampled. Anything seeded from the run configuration fails that: the
coordinator sets the run's seed, and could then recompute the noise and subtract it. So every
draw here comes from AES in counter mode (randomgen's AESCounter, AES-NI where the CPU has it)
under a fresh 128-bit key from the operating system's CSPRNG (`os.urandom`): nothing the server
sends can seed it, two runs never share a stream, and the stream cannot be recomputed from
anything that leaves the site.

Opacus would do this with `secure_mode=True`, but that needs `torchcsprng`, which is not
published for current torch; this module is the equivalent, plugged into Opacus's optimizers by
overriding `add_noise` (client/private_train.py). Like Opacus's secure mode it sums four
Gaussian draws and halves the sum (still N(0, std^2)), the defence of Holohan & Braghin (2021)
against attacks on the floating-point representation of single Gaussian samples. Cost: about
0.02 s a step for LoRA's 75,000 values; about 1-2 s a step for full fine-tuning's 22.6 million.
"""

from __future__ import annotations

import os

import numpy as np
import torch
from randomgen import AESCounter


class SiteRandom:
    """Uniforms, Gaussians and Poisson masks from AES-CTR keyed by os.urandom."""

    def __init__(self) -> None:
        self._gen = np.random.Generator(AESCounter(key=int.from_bytes(os.urandom(16), "little")))

    def uniform(self, n: int) -> np.ndarray:
        """n floats uniform on [0, 1)."""
        return self._gen.random(n)

    def gaussian_like(self, reference: torch.Tensor, std: float) -> torch.Tensor:
        """Noise N(0, std^2) shaped, typed and placed like `reference`: the sum of four draws,
        halved, computed in float64 before the cast."""
        n = reference.numel()
        if std == 0 or n == 0:
            return torch.zeros_like(reference)
        total = self._gen.standard_normal((4, n)).sum(axis=0)
        noise = torch.from_numpy(total * (std / 2.0)).view(reference.shape)
        return noise.to(dtype=reference.dtype, device=reference.device)

    def poisson_mask(self, n: int, q: float) -> np.ndarray:
        """Indices of the records that join one Poisson-sampled batch (each with probability q)."""
        return np.flatnonzero(self.uniform(n) < q)
