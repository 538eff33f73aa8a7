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
    if all(q == 1.0 for _, q, _ in merged_history):  # Gaussian releases only: exact, in closed form
        return gaussian_epsilon(sum(steps / sigma**2 for sigma, _, steps in merged_history) ** -0.5, delta)
    return float(make_accountant(accountant, list(merged_history)).get_epsilon(delta=delta))


def gaussian_epsilon(z: float, delta: float) -> float:
    """Exact epsilon of one Gaussian mechanism with noise multiplier z (std / sensitivity) at
    delta: the analytic Gaussian mechanism of Balle & Wang (2018), whose
    delta(eps) = Phi(1/(2z) - eps z) - e^eps Phi(-1/(2z) - eps z). k releases with z compose to
    one with z / sqrt(k). Opacus's PRV accountant gives the same value, some seconds later."""
    from scipy.special import log_ndtr, ndtr

    def delta_at(eps: float) -> float:
        return float(ndtr(0.5 / z - eps * z) - math.exp(eps + log_ndtr(-0.5 / z - eps * z)))

    low, high = 0.0, 1.0
    if delta_at(low) <= delta:
        return 0.0
    while delta_at(high) > delta:
        low, high = high, high * 2.0
    for _ in range(100):
        mid = (low + high) / 2.0
        low, high = (mid, high) if delta_at(mid) > delta else (low, mid)
    return high  # rounded up: never less than the exact value


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


@functools.lru_cache(maxsize=256)
def gaussian_noise_for(epsilon: float, delta: float, accountant: str) -> float:
    """The noise multiplier z of one Gaussian release (q = 1, one step) that costs `epsilon`."""
    return _bisect_noise(lambda z: epsilon_of([(z, 1.0, 1)], delta, accountant), epsilon)


@functools.lru_cache(maxsize=256)
def sgd_noise_after(release: tuple[float, float, int], epsilon: float, delta: float, q: float,
                    total_steps: int, accountant: str) -> float:
    """The DP-SGD noise multiplier whose (q, total_steps) composed with `release` costs `epsilon`
    in all: the accountant composes both exactly, no epsilon is simply added."""
    # Alone, DP-SGD could spend all of epsilon: its noise then is a lower bound (and keeps the
    # PRV accountant away from tiny multipliers, where it is slow).
    alone = calibrate_noise(epsilon, delta, q, total_steps, accountant)
    return _bisect_noise(lambda s: epsilon_of([release, (s, q, total_steps)], delta, accountant), epsilon,
                         low=alone, high=alone * 1.25)


def _bisect_noise(cost, epsilon: float, tolerance: float = 0.005, low: float = 0.05, high: float = 1.0) -> float:
    """The smallest noise multiplier (to `tolerance` relative in epsilon) whose cost is at most
    epsilon: cost() falls as the noise grows. Regula falsi (Illinois) on a bracket, since each
    PRV evaluation takes about a second; errs on the side of more noise."""
    f_low = cost(low) - epsilon
    if f_low <= 0:
        return low
    f_high = cost(high) - epsilon
    while f_high > 0:
        low, f_low, high = high, f_high, high * 1.5
        if high > 1e4:
            raise FedSiloError(f"cannot calibrate noise for epsilon={epsilon}")
        f_high = cost(high) - epsilon
    side = 0
    for _ in range(60):
        if f_high >= -tolerance * epsilon:
            break
        mid = (low * f_high - high * f_low) / (f_high - f_low)
        f_mid = cost(mid) - epsilon
        if f_mid > 0:
            low, f_low = mid, f_mid
            f_high, side = (f_high / 2, -1) if side == -1 else (f_high, -1)
        else:
            high, f_high = mid, f_mid
            f_low, side = (f_low / 2, 1) if side == 1 else (f_low, 1)
    return float(high)


# The mechanisms a site runs, as they appear in its ledger, reports and the model card.
RELEASE = "head statistics (Gaussian mechanism, sensitivity sqrt(2), q=1, one release)"
DP_SGD = "DP-SGD (Poisson-subsampled Gaussian, per-example clipping)"
MECHANISM_KEYS = {RELEASE: "head-statistics", DP_SGD: "dp-sgd"}  # as reports carry them
MECHANISM_NAMES = {key: name for name, key in MECHANISM_KEYS.items()}


@dataclass(frozen=True)
class RunPlan:
    """A site's privacy plan for one run: what each round releases, with which noise."""
    release_noise: float | None  # noise multiplier z of the round-1 statistics release, if any
    sgd_noise: float | None  # DP-SGD noise multiplier of the training rounds, if any
    sample_rate: float
    steps: int  # DP-SGD steps per training round
    sgd_rounds: int

    def history(self) -> list[tuple[float, float, int]]:
        """The whole run's accountant entries, in the order they are charged."""
        out = [(self.release_noise, 1.0, 1)] if self.release_noise is not None else []
        return out + ([(self.sgd_noise, self.sample_rate, self.steps * self.sgd_rounds)] if self.sgd_rounds else [])

    def shares(self, delta: float, accountant: str) -> list[dict]:
        """Each mechanism with its parameters and the epsilon it would cost alone (the composed
        total is less than their sum: the accountant composes them exactly)."""
        out = []
        if self.release_noise is not None:
            out.append({"mechanism": RELEASE, "noise_multiplier": self.release_noise, "releases": 1,
                        "epsilon_alone": epsilon_of([(self.release_noise, 1.0, 1)], delta, accountant)})
        if self.sgd_rounds:
            out.append({"mechanism": DP_SGD, "noise_multiplier": self.sgd_noise, "sample_rate": self.sample_rate,
                        "steps": self.steps * self.sgd_rounds,
                        "epsilon_alone": epsilon_of(self.history()[-1:], delta, accountant)})
        return out


@functools.lru_cache(maxsize=256)
def plan_run(target_epsilon: float, delta: float, accountant: str, n: int, batch_size: int, local_epochs: int,
             rounds: int, head_stats: bool, release_share: float) -> RunPlan:
    """Noise for every mechanism of the run so that their exact composition costs target_epsilon.
    With head statistics, round 1 is the release: it alone would cost release_share x target
    (all of it in a one-round run); DP-SGD over the other rounds gets the noise that brings the
    composition to the target."""
    q = sample_rate(batch_size, n)
    steps = steps_per_round(q, local_epochs)
    if not head_stats:
        return RunPlan(None, calibrate_noise(target_epsilon, delta, q, steps * rounds, accountant), q, steps, rounds)
    if rounds == 1:
        return RunPlan(gaussian_noise_for(target_epsilon, delta, accountant), None, q, steps, 0)
    z = gaussian_noise_for(target_epsilon * release_share, delta, accountant)
    sigma = sgd_noise_after((z, 1.0, 1), target_epsilon, delta, q, steps * (rounds - 1), accountant)
    return RunPlan(z, sigma, q, steps, rounds - 1)


def guarantee_sentence(site: str, epsilon: float, delta: float, accountant: str, n: int,
                       n_eval: int | None = None, mechanisms: dict[str, float] | None = None,
                       task: str = "classify") -> str:
    """The one exact sentence every report carries for a DP site (epsilon rounded up, never down):
    what DP covers (the n training records; task ner: sentences, the unit DP-SGD clips) and what
    it does not (the held-out ones, whose counts the site sends in the clear)."""
    unit, counts = (("sentence", "word-level confusion counts (true tag x predicted tag) and entity counts by type")
                    if task == "ner" else ("record", "confusion counts (true class x predicted class)"))
    held_out = ("" if n_eval is None else
                f" Its {n_eval} held-out evaluation {unit}s are not covered: the server receives their "
                f"{counts} every round." if n_eval else
                f" It holds out no evaluation {unit}s.")
    ran = ""
    if mechanisms:  # each mechanism's epsilon alone: the total is their exact composition, not their sum
        ran = (" Its last run's mechanisms, with the epsilon each would cost alone (composed exactly, not added): "
               + "; ".join(f"{MECHANISM_NAMES.get(k, k)}: {math.ceil(v * 100) / 100:.2f}"
                           for k, v in sorted(mechanisms.items())) + ".")
    return (f"site {site}: {unit}-level ({math.ceil(epsilon * 100) / 100:.2f}, {delta:.2g})-differential privacy "
            f"for its {n} training {unit}s, composed over every round it has trained on this dataset, "
            f"accounted with the {ACCOUNTANT_NAMES[accountant]}.{ran}{held_out}")
