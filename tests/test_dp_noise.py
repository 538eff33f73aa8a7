"""DP-SGD's noise is the calibrated size, and it is the site's own: nothing the server sends
(the run's seed) and no global seed can reproduce it.

A curious coordinator that could replay a site's noise would subtract it from the update and
undo DP; these tests play that coordinator.
"""

import numpy as np
import pytest
import torch
from scipy import stats

from client.dp_random import SiteRandom
from client.private_train import DPStepPlan, backward_private, make_private, train_dp
from client.train import train_local
from common.batching import encode
from common.config import RunConfig
from common.model import build_model, get_weights, load_tokenizer, set_weights

TEXTS = ["my card was declined", "open a savings account please", "the loan rate went up again",
         "send money to my sister", "card stolen at the station", "how do I close this account"] * 4
LABELS = np.array([1, 0, 2, 3, 1, 0] * 4)


@pytest.fixture()
def setup(tiny_model):
    cfg = RunConfig.from_dict({"model": str(tiny_model), "labels": "account,card,loan,transfer", "seed": 42})
    model, tok = build_model(cfg), load_tokenizer(cfg.model)
    return cfg, model.train(), encode(tok, TEXTS, 32, LABELS), tok.pad_token_id


def noise_of_one_step(model, data, pad_id, sigma, clip, expected_batch):
    """The gradient one DP step applies when no record is sampled: pure noise / expected batch."""
    module, optimizer = make_private(model, 0.0, DPStepPlan(sigma, 0.5, 1, clip), expected_batch, ghost=False)
    backward_private(module, optimizer, data, np.array([], dtype=int), pad_id, ghost=False)
    optimizer.pre_step()  # Opacus: clip, add noise (ours), divide by the expected batch size
    noise = torch.cat([p.grad.reshape(-1) for p in optimizer.params]).double().numpy().copy()
    optimizer.zero_grad(set_to_none=True)
    module.remove_hooks()
    module.cleanup()
    return noise


@pytest.mark.parametrize("sigma, clip, batch", [(1.1, 1.0, 8), (0.6, 0.25, 32)])
def test_added_noise_is_gaussian_with_the_calibrated_scale(setup, sigma, clip, batch):
    _, model, data, pad_id = setup
    noise = np.concatenate([noise_of_one_step(model, data, pad_id, sigma, clip, batch) for _ in range(5)])
    expected_std = sigma * clip / batch
    assert noise.size > 10_000  # enough draws for the checks below to be tight
    # sample std within 5% (its standard error here is under 0.7%), mean within 5 standard errors of 0
    assert noise.std() == pytest.approx(expected_std, rel=0.05)
    assert abs(noise.mean()) < 5 * expected_std / np.sqrt(noise.size)
    # and Gaussian: Kolmogorov-Smirnov against N(0, expected_std^2)
    assert stats.kstest(noise / expected_std, "norm").pvalue > 1e-4


def test_no_noise_would_fail_the_scale_check(setup):
    """The check above has power: a step without noise (sigma 0) is nowhere near the scale."""
    _, model, data, pad_id = setup
    assert noise_of_one_step(model, data, pad_id, 0.0, 1.0, 8).std() < 0.05 * 1.1 / 8


def test_same_run_seed_and_global_seeds_still_draw_different_noise(setup):
    """What a coordinator controls (the run's seed) and the process's global RNG seeds fixed:
    two DP rounds from the same weights on the same records still differ, so the server cannot
    replay the noise. Plain training under the same seeds is identical, so the difference is the
    site's own randomness and nothing else."""
    cfg, model, data, pad_id = setup
    start = [w.copy() for w in get_weights(model)]

    def one_round(private: bool) -> np.ndarray:
        set_weights(model, start)
        torch.manual_seed(cfg.seed)
        np.random.seed(cfg.seed)
        if private:
            train_dp(model, data, 1e-2, DPStepPlan(1.0, 0.5, 3, 1.0), pad_id)
        else:
            train_local(model, data, cfg, pad_id, seed=cfg.seed)
        return np.concatenate([(w - s).ravel() for w, s in zip(get_weights(model), start)])

    plain = one_round(False), one_round(False)
    np.testing.assert_array_equal(plain[0], plain[1])
    dp = one_round(True), one_round(True)
    assert np.abs(dp[0]).max() > 0
    assert not np.allclose(dp[0], dp[1])
    # not merely different: uncorrelated beyond what the shared records explain
    assert abs(np.corrcoef(dp[0], dp[1])[0, 1]) < 0.9


def test_site_random_streams_are_independent_and_uniform():
    a, b = SiteRandom(), SiteRandom()
    ua, ub = a.uniform(20_000), b.uniform(20_000)
    assert not np.array_equal(ua, ub)
    assert 0 <= ua.min() and ua.max() < 1
    assert stats.kstest(ua, "uniform").pvalue > 1e-4
    assert abs(np.corrcoef(ua, ub)[0, 1]) < 0.05
    mask = a.poisson_mask(100_000, 0.1)
    assert len(mask) == pytest.approx(10_000, abs=5 * np.sqrt(100_000 * 0.1 * 0.9))
