"""A site's differential-privacy settings and the accounting behind them.

The guarantee FedSilo gives is record-level (epsilon, delta)-DP for each site's own dataset,
composed over every round the site ever trains on that dataset, computed with Opacus's
accountant (PRV by default, RDP on request) for the Poisson-subsampled Gaussian mechanism of
DP-SGD. The settings here belong to the site: in deployment they come from fl-client's own
options (node config) and the server cannot change them; only in simulation, where the
coordinator plays every site, do they come from the run configuration (sim-* keys).
"""

from __future__ import annotations

import argparse
import functools
import math
import warnings
from dataclasses import dataclass

from common.config import SITE_PRIVACY_OPTIONS, check_option
from common.errors import FedSiloError

# Opacus's RDP analysis (also used to bound the PRV domain) warns when the best order is the
# largest one tried; the bound it returns is still a valid upper bound.
warnings.filterwarnings("ignore", message="Optimal order is the largest alpha", category=UserWarning)
ACCOUNTANT_NAMES = {"prv": "Opacus PRV accountant (Gopi et al. 2021)", "rdp": "Opacus RDP accountant"}

@dataclass(frozen=True)
class SitePrivacy:
    dp: bool = True
    target_epsilon: float = 8.0
    privacy_budget: float = 8.0
    delta: float = 0.0
    max_grad_norm: float = 1.0
    accountant: str = "prv"
    redact: bool = True
    redact_entities: str = ""

    @classmethod
    def from_mapping(cls, raw: dict, prefix: str = "") -> "SitePrivacy":
        values = {}
        for opt in SITE_PRIVACY_OPTIONS:
            value = raw.get(prefix + opt.key, opt.default)
            values[opt.key.replace("-", "_")] = check_option(opt, value)
        settings = cls(**values)
        if settings.dp and settings.target_epsilon > settings.privacy_budget:
            raise FedSiloError(f"target-epsilon {settings.target_epsilon} is larger than the "
                               f"privacy-budget {settings.privacy_budget}")
        return settings

    def delta_for(self, n: int) -> float:
        """delta must stay below 1/n, or releasing one whole record would fit inside delta."""
        if self.delta == 0.0:
            return min(1e-5, 0.1 / max(n, 1))
        if self.delta >= 1.0 / max(n, 1):
            raise FedSiloError(f"delta {self.delta} is not below 1/n = {1.0 / n:.3g} for this "
                               f"site's {n} records; choose a smaller --delta")
        return self.delta

    def to_node_config(self) -> dict:
        return {opt.key: getattr(self, opt.key.replace("-", "_")) for opt in SITE_PRIVACY_OPTIONS}


def add_privacy_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("privacy (the site's own settings; the server cannot change them)")
    for opt in SITE_PRIVACY_OPTIONS:
        if opt.type is bool:  # on by default: only an explicit --no-KEY turns it off
            group.add_argument(f"--no-{opt.key}", dest=opt.key.replace("-", "_"), action="store_false",
                               default=opt.default, help=f"turn off: {opt.help}")
            continue
        group.add_argument(f"--{opt.key}", dest=opt.key.replace("-", "_"), type=opt.type,
                           default=opt.default, choices=opt.choices or None,
                           help=f"{opt.help} [default: {opt.default}]")


def privacy_from_args(args: argparse.Namespace) -> SitePrivacy:
    return SitePrivacy.from_mapping({opt.key: getattr(args, opt.key.replace("-", "_"))
                                     for opt in SITE_PRIVACY_OPTIONS})


# ------------------------------------------------------------------------------ accounting
def sample_rate(batch_size: int, n: int) -> float:
    """Poisson sampling rate q: each record joins each step's batch with probability q."""
    return min(1.0, batch_size / max(n, 1))


def steps_per_round(q: float, local_epochs: int) -> int:
    """One epoch is 1/q Poisson steps (the expected number of visits per record is then 1)."""
    return max(1, int(round(local_epochs / q)))


def make_accountant(name: str, history: list[tuple[float, float, int]] = ()):
    from opacus.accountants import create_accountant

    accountant = create_accountant(mechanism=name)
    accountant.history = [tuple(h) for h in history]
    return accountant


def epsilon_of(history: list[tuple[float, float, int]], delta: float, accountant: str) -> float:
    """Epsilon of the composition of (noise multiplier, sample rate, steps) entries."""
    if not history:
        return 0.0
    return _epsilon(tuple(merge_history(history)), float(delta), accountant)


# Accounting is a pure function of its inputs and costs about 0.25 s per call with PRV, so it is
# kept per process: a site recomputes the same values every round (this round's "cost with" is
# the next round's "spent"), and a simulation process serves many virtual sites of equal size.
@functools.lru_cache(maxsize=1024)
def _epsilon(merged_history: tuple, delta: float, accountant: str) -> float:
    return float(make_accountant(accountant, list(merged_history)).get_epsilon(delta=delta))


def merge_history(history) -> list[tuple[float, float, int]]:
    """Merge consecutive entries with the same (sigma, q): the same composition, a faster PRV."""
    merged: list[list] = []
    for sigma, q, steps in history:
        if merged and merged[-1][0] == sigma and merged[-1][1] == q:
            merged[-1][2] += int(steps)
        else:
            merged.append([float(sigma), float(q), int(steps)])
    return [tuple(m) for m in merged]


@functools.lru_cache(maxsize=256)  # pure, and as costly as _epsilon (errors are not cached)
def calibrate_noise(target_epsilon: float, delta: float, q: float, total_steps: int, accountant: str) -> float:
    """The noise multiplier that spends target_epsilon over total_steps (Opacus's helper)."""
    from opacus.accountants.utils import get_noise_multiplier

    try:
        sigma = get_noise_multiplier(target_epsilon=target_epsilon, target_delta=delta, sample_rate=q,
                                     steps=total_steps, accountant=accountant, epsilon_tolerance=0.01)
    except ValueError as err:
        raise FedSiloError(f"cannot calibrate noise for epsilon={target_epsilon}: {err}") from None
    if not math.isfinite(sigma) or sigma <= 0:
        raise FedSiloError(f"cannot calibrate noise for epsilon={target_epsilon}")
    return float(sigma)


def guarantee_sentence(site: str, epsilon: float, delta: float, accountant: str, n: int,
                       n_eval: int | None = None) -> str:
    """The one exact sentence every report carries for a DP site (epsilon rounded up, never down):
    what DP covers (the n training records) and what it does not (the held-out records, whose
    confusion counts the site sends in the clear)."""
    held_out = ("" if n_eval is None else
                f" Its {n_eval} held-out evaluation records are not covered: the server receives their "
                "confusion counts (true class x predicted class) every round." if n_eval else
                " It holds out no evaluation records.")
    return (f"site {site}: record-level ({math.ceil(epsilon * 100) / 100:.2f}, {delta:.2g})-differential privacy "
            f"for its {n} training records, composed over every round it has trained on this dataset, "
            f"accounted with the {ACCOUNTANT_NAMES[accountant]}.{held_out}")
