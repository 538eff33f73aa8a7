"""FedAdam and FedYogi on the server (server/server_optimizer.py): the same steps as Flower's own
FedAdam / FedYogi strategies, through FedSiloStrategy, across a coordinator restart."""

import numpy as np
import pytest
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.server.strategy import FedAdam, FedYogi

from common.config import RunConfig
from common.errors import FedSiloError
from server.model_card import server_step
from server.server_optimizer import ServerOptimizer
from server.strategy import FedSiloStrategy
from tests.test_updates import REFERENCE, fit_result, make_strategy


def deltas(seed: int, rounds: int = 4) -> list[list[np.ndarray]]:
    rng = np.random.default_rng(seed)  # sign changes and scales that differ by coordinate
    return [[(rng.standard_normal(w.shape) * rng.uniform(1e-4, 1e-1, w.shape)).astype(np.float32) for w in REFERENCE]
            for _ in range(rounds)]


@pytest.mark.parametrize("kind, flower", [("adam", FedAdam), ("yogi", FedYogi)])
def test_steps_match_flowers_own_strategy(kind, flower):
    ours = ServerOptimizer(kind, lr=0.05, tau=1e-3)
    weights = [w.astype(np.float64) for w in REFERENCE]
    theirs = flower(initial_parameters=ndarrays_to_parameters(weights), eta=0.05, tau=1e-3, beta_1=0.9, beta_2=0.99)
    for t, delta in enumerate(deltas(3), 1):
        weights = [w + s for w, s in zip(weights, ours.step(delta))]
        # one site whose new weights are Flower's current ones plus the delta: FedAvg's mean is that
        sent = [c + d for c, d in zip(theirs.current_weights, delta)]
        res = FitRes(Status(Code.OK, "ok"), ndarrays_to_parameters(sent), 10, {})
        # Flower's FedAdam corrects its bias with exponent server_round + 1: its round t - 1 is our step t
        params, _ = theirs.aggregate_fit(t - 1 if kind == "adam" else t, [(None, res)], [])
        for got, want in zip(weights, parameters_to_ndarrays(params)):
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-7)
    assert not np.allclose(weights[0], sum(d[0] for d in deltas(3)), atol=1e-3)  # not plain FedAvg


def test_fedadam_through_the_strategy_resumes_with_its_moments(tmp_path):
    steps = deltas(5, rounds=3)
    strategy = make_strategy(tmp_path, rounds=3, **{"server-optimizer": "adam", "server-learning-rate": 0.01})
    reference = ServerOptimizer("adam", 0.01)
    expected = [w.copy() for w in REFERENCE]
    for rnd, delta in enumerate(steps[:2], 1):
        strategy.round_record = {"round": rnd}
        strategy.aggregate_fit(rnd, [fit_result(1, delta), fit_result(2, delta)], [])
        strategy.checkpoint(rnd)
        expected = [w + s for w, s in zip(expected, reference.step(delta))]
    for got, want in zip(strategy.global_weights, expected):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-8)
    assert (strategy.run_dir.path / "rounds" / "adam-moments-0002.npz").exists()

    # restarted after round 2: m, v and the step count come from the run directory
    state = strategy.run_dir.resume_point(strategy.cfg)
    resumed = FedSiloStrategy(strategy.cfg, strategy.run_dir, strategy.run_dir.load_round_weights(2),
                              strategy.audit, state)
    assert resumed.optimizer.t == 2
    for s in (strategy, resumed):
        s.round_record = {"round": 3}
        s.aggregate_fit(1 if s is resumed else 3, [fit_result(1, steps[2])], [])
    for got, want in zip(resumed.global_weights, strategy.global_weights):
        np.testing.assert_allclose(got, want, rtol=1e-6)
    # a moments file of another model is refused by name
    strategy.run_dir.save_round_weights(3, [np.zeros((2, 2), np.float32)], kind="adam-moments")
    with pytest.raises(FedSiloError, match="adam-moments-0003.npz does not fit the model"):
        FedSiloStrategy(strategy.cfg, strategy.run_dir, strategy.global_weights, strategy.audit,
                        {**state, "last_round": 3, "completed_rounds": [1, 2, 3]})


def test_the_options_say_what_runs():
    with pytest.raises(FedSiloError, match="server-momentum is for server-optimizer sgd"):
        RunConfig.from_dict({"labels": "a,b", "server-optimizer": "yogi", "server-momentum": 0.9})
    with pytest.raises(FedSiloError, match="server-optimizer"):
        RunConfig.from_dict({"labels": "a,b", "server-optimizer": "adagrad"})
    cfg = RunConfig.from_dict({"labels": "a,b", "server-optimizer": "yogi", "server-learning-rate": 0.01})
    assert server_step(cfg) == "FedAvg (weighted mean), then a FedYogi server step (learning rate 0.01, tau 0.001)"
