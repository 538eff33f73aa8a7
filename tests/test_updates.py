"""Update validation, robust aggregation and the resume checkpoint, on FedSilo's real strategy."""

import json
from types import SimpleNamespace

import numpy as np
import pytest
from flwr.common import Code, FitRes, Parameters, Status, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.server import SimpleClientManager
from flwr.server.compat.app_utils import start_update_client_manager_thread
from flwr.server.compat.grid_client_proxy import GridClientProxy

from common.audit import AuditLog, generate_key
from common.config import RunConfig
from common.errors import FedSiloError
from common.updates import pack, unpack, update_norm, update_problem
from server.run_dir import RunDir
from server.strategy import FedSiloStrategy

REFERENCE = [np.zeros((4, 3), np.float32), np.zeros(3, np.float32)]


def honest(seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [(0.01 + 0.001 * rng.standard_normal(w.shape)).astype(np.float32) for w in REFERENCE]


@pytest.mark.parametrize("update, max_norm, fragment", [
    ([np.zeros((4, 3), np.float32)], 0, "1 tensors instead of 2"),
    ([np.zeros((3, 4), np.float32), np.zeros(3, np.float32)], 0, "shape (3, 4) instead of (4, 3)"),
    ([np.zeros((4, 3), np.float64), np.zeros(3, np.float32)], 0, "dtype float64 instead of float32"),
    ([np.full((4, 3), np.nan, np.float32), np.zeros(3, np.float32)], 0, "non-finite"),
    ([np.zeros((4, 3), np.float32), np.array([0, np.inf, 0], np.float32)], 0, "non-finite values (NaN/Inf) in tensor 1"),
    ([np.ones((4, 3), np.float32), np.ones(3, np.float32)], 3.0, "norm 3.873 above max-update-norm 3"),
])
def test_invalid_updates_are_named(update, max_norm, fragment):
    assert fragment in update_problem(update, REFERENCE, max_norm)


def test_pack_and_unpack_round_trip():
    tensors = honest(3)
    packed = pack(tensors)
    assert len(packed) == 1 and packed[0].shape == (15,) and packed[0].dtype == np.float32
    for got, want in zip(unpack(packed, [w.shape for w in REFERENCE]), tensors):
        np.testing.assert_array_equal(got, want)
    with pytest.raises(FedSiloError, match="14 values instead of 15"):
        unpack([packed[0][:14]], [w.shape for w in REFERENCE])
    with pytest.raises(FedSiloError, match="not one packed vector"):
        unpack(tensors, [w.shape for w in REFERENCE])


def test_valid_update_and_norm():
    update = [np.ones((4, 3), np.float32), np.ones(3, np.float32)]
    assert update_problem(update, REFERENCE, max_norm=4.0) is None
    assert update_norm(update) == pytest.approx(15 ** 0.5)
    # float32 squares would overflow to inf here; the norm is computed in float64
    assert update_norm([np.full(4, 1e30, np.float32)]) == pytest.approx(2e30, rel=1e-6)


def make_strategy(tmp_path, **options) -> FedSiloStrategy:
    # round 1 trains (no head statistics): these tests are about model updates
    cfg = RunConfig.from_dict({"labels": "a,b", "secure-aggregation": False, "run-dir": str(tmp_path),
                               "head-init": "none", **options})
    tmp_path.mkdir(parents=True, exist_ok=True)
    generate_key(tmp_path / "audit.key")
    return FedSiloStrategy(cfg, RunDir(tmp_path / "run"), [w.copy() for w in REFERENCE],
                           AuditLog(tmp_path / "audit.jsonl", tmp_path / "audit.key", "server"))


def fit_result(node: int, update, site: str | None = None, examples: int = 100):
    """A site's reply: its update packed as FedSilo sends it (or Parameters as given)."""
    params = update if isinstance(update, Parameters) else ndarrays_to_parameters(pack(update))
    res = FitRes(Status(Code.OK, "ok"), params, examples, {"site": site or f"s{node}", "dp": False})
    return GridClientProxy(node, None, 1), res


def test_server_rejects_bad_updates_and_names_the_site(tmp_path):
    strategy = make_strategy(tmp_path, **{"max-update-norm": 1.0})
    strategy.round_record = {"round": 1}
    garbage = Parameters(tensors=[b"not a numpy array", b"\x93NUMPY"], tensor_type="numpy.ndarray")
    results = [fit_result(1, honest(1), "A"), fit_result(2, honest(2), "B"),
               fit_result(3, [np.full((4, 3), np.nan, np.float32), np.zeros(3, np.float32)], "C"),
               fit_result(4, [100 * w for w in honest(4)], "D"),
               fit_result(5, garbage, "E"),
               fit_result(6, [np.zeros((5, 3), np.float32), np.zeros(3, np.float32)], "F"),
               fit_result(7, ndarrays_to_parameters(honest(7)), "G")]  # unpacked tensors
    params, _ = strategy.aggregate_fit(1, results, [])
    assert params is not None and strategy.completed_rounds == [1]
    assert sorted(strategy.round_record["fit"]) == ["A", "B"]
    rejected = strategy.round_record["rejected"]
    assert sorted(rejected) == ["C", "D", "E", "F", "G"]
    assert "non-finite" in rejected["C"] and "above max-update-norm 1" in rejected["D"]
    assert rejected["E"].startswith("malformed") and "18 values instead of 15" in rejected["F"]
    assert "not one packed vector but 2 array(s)" in rejected["G"]
    assert "site D: update rejected: norm" in " ".join(strategy.round_record["fit_failures"])
    expected = [(a + b) / 2 for a, b in zip(honest(1), honest(2))]
    aggregate = unpack(parameters_to_ndarrays(params), [w.shape for w in REFERENCE])
    for got, want in zip(aggregate, expected):
        np.testing.assert_allclose(got, want, rtol=1e-5)


def test_a_round_with_only_bad_updates_fails_and_keeps_the_model(tmp_path):
    strategy = make_strategy(tmp_path)
    strategy.round_record = {"round": 1}
    params, _ = strategy.aggregate_fit(1, [fit_result(1, [np.full((4, 3), np.inf, np.float32),
                                                         np.zeros(3, np.float32)])], [])
    assert params is None and strategy.failed_rounds == {1: "no site returned a valid update"}
    assert all((w == 0).all() for w in strategy.global_weights)


@pytest.mark.parametrize("rule", ["median", "trimmed-mean", "krum"])
@pytest.mark.parametrize("attack", [-10.0, 50.0])  # sign flip and scaling
def test_robust_rules_contain_one_poisoned_site(tmp_path, rule, attack):
    clean_mean = [np.mean(ws, axis=0) for ws in zip(*(honest(i) for i in range(4)))]

    def aggregate(rule_name):
        strategy = make_strategy(tmp_path / rule_name, aggregation=rule_name, **{"trim-fraction": 0.2})
        strategy.round_record = {"round": 1}
        results = [fit_result(i, honest(i)) for i in range(4)]
        results.append(fit_result(4, [attack * w for w in honest(4)]))
        params, _ = strategy.aggregate_fit(1, results, [])
        return unpack(parameters_to_ndarrays(params), [w.shape for w in REFERENCE])

    def error(agg):
        return update_norm([a - c for a, c in zip(agg, clean_mean)]) / update_norm(clean_mean)

    assert error(aggregate("fedavg")) > 1.5  # the mean is dragged far off by one site
    assert error(aggregate(rule)) < 0.2  # the robust rule stays near the honest sites' mean


def test_a_round_starts_as_soon_as_the_sites_are_connected(tmp_path):
    # Flower's compat client manager hears of connected sites from a thread that asks the
    # SuperLink first after 5 s, then every 5 s (Flower's own code, here with a grid that knows
    # three sites). A strategy that waited for that thread would give up after the 2 s
    # round-timeout; one that asks when it needs the sites finds them at once.
    grid = SimpleNamespace(get_node_ids=lambda: [11, 12, 13], run=SimpleNamespace(run_id=1))
    manager = SimpleClientManager()
    _, stop_thread, wrapped = start_update_client_manager_thread(grid, manager)
    wrapped.wait()
    try:
        strategy = make_strategy(tmp_path, **{"min-sites": 3, "round-timeout": 2.0})
        instructions = strategy.configure_fit(1, ndarrays_to_parameters(pack(REFERENCE)), manager)
    finally:
        stop_thread.set()
    assert sorted(proxy.node_id for proxy, _ in instructions) == [11, 12, 13]
    assert strategy.failed_rounds == {}


def test_robust_rules_need_plain_aggregation():
    with pytest.raises(FedSiloError, match="add --no-secure-aggregation"):
        RunConfig.from_dict({"labels": "a,b", "aggregation": "median"})


def test_checkpoint_and_resume_point(tmp_path):
    strategy = make_strategy(tmp_path, rounds=3)
    run_dir = strategy.run_dir
    cfg = strategy.cfg
    assert run_dir.resume_point(cfg) is None  # a new run
    strategy.round_record = {"round": 1}
    strategy.aggregate_fit(1, [fit_result(1, honest(1))], [])
    strategy.checkpoint(1)
    for rnd in (1, 2):  # a kill after round 2's metrics line but before its checkpoint
        (run_dir.path / "metrics.jsonl").open("a").write(json.dumps({"round": rnd}) + "\n")
    (run_dir.path / "metrics.jsonl").open("a").write('{"round": 3, "accur')  # a torn line

    state = run_dir.resume_point(cfg)
    assert state["last_round"] == 1 and state["completed_rounds"] == [1]
    resumed = FedSiloStrategy(cfg, run_dir, run_dir.load_round_weights(1), strategy.audit, state)
    assert resumed.offset == 1 and resumed.completed_rounds == [1]
    np.testing.assert_array_equal(resumed.global_weights[0], strategy.global_weights[0])
    run_dir.trim_metrics(1)
    assert [json.loads(x)["round"] for x in (run_dir.path / "metrics.jsonl").read_text().splitlines()] == [1]

    other = RunConfig.from_dict({**cfg.to_flat(), "rounds": 5})
    with pytest.raises(FedSiloError, match=r"other options \(rounds: 3 -> 5\)"):
        run_dir.resume_point(other)
    patient = RunConfig.from_dict({**cfg.to_flat(), "round-timeout": 30.0})
    assert run_dir.resume_point(patient)["last_round"] == 1  # operational settings may change

    strategy.checkpoint(3)
    (run_dir.path / "summary.json").write_text("{}")
    with pytest.raises(FedSiloError, match="holds a finished run"):
        run_dir.resume_point(cfg)
    (run_dir.path / "state.json").write_text('{"last_round": ')
    with pytest.raises(FedSiloError, match="state.json is damaged"):
        run_dir.resume_point(cfg)


def test_server_momentum_steps_and_resumes(tmp_path):
    # FedAvgM: step_t = lr * (m * step_{t-1}/lr + mean delta_t); here both sites send the same
    # delta each round, so the mean is that delta.
    deltas = [honest(1), honest(2), honest(3)]
    strategy = make_strategy(tmp_path, rounds=3, **{"server-momentum": 0.5, "server-learning-rate": 2.0})
    for rnd, delta in enumerate(deltas[:2], 1):
        strategy.round_record = {"round": rnd}
        strategy.aggregate_fit(rnd, [fit_result(1, delta), fit_result(2, delta)], [])
        strategy.checkpoint(rnd)
    expected_buffer = [0.5 * a + b for a, b in zip(*deltas[:2])]
    expected = [2.0 * (a + m) for a, m in zip(deltas[0], expected_buffer)]
    for got, want in zip(strategy.global_weights, expected):
        np.testing.assert_allclose(got, want, rtol=1e-6)

    # A coordinator restarted after round 2 takes the buffer from the run directory and makes
    # the same third step as the uninterrupted strategy.
    state = strategy.run_dir.resume_point(strategy.cfg)
    resumed = FedSiloStrategy(strategy.cfg, strategy.run_dir, strategy.run_dir.load_round_weights(2),
                              strategy.audit, state)
    for s in (strategy, resumed):
        s.round_record = {"round": 3}
        s.aggregate_fit(1 if s is resumed else 3, [fit_result(1, deltas[2])], [])
    for got, want in zip(resumed.global_weights, strategy.global_weights):
        np.testing.assert_allclose(got, want, rtol=1e-6)
    strategy.run_dir.save_round_weights(3, [np.zeros((2, 2), np.float32)], kind="momentum")
    with pytest.raises(FedSiloError, match="momentum-0003.npz does not fit the model"):
        FedSiloStrategy(strategy.cfg, strategy.run_dir, strategy.global_weights, strategy.audit,
                        {**state, "last_round": 3, "completed_rounds": [1, 2, 3]})
    (strategy.run_dir.path / "rounds" / "momentum-0003.npz").unlink()
    with pytest.raises(FedSiloError, match="momentum-0003.npz is missing"):
        FedSiloStrategy(strategy.cfg, strategy.run_dir, strategy.global_weights, strategy.audit,
                        {**state, "last_round": 3, "completed_rounds": [1, 2, 3]})


def test_server_momentum_works_under_secure_aggregation(tmp_path):
    # Under SecAgg+ Flower's workflow hands aggregate_fit one already-averaged update (dequantised:
    # float64), set as every surviving site's parameters; FedAvgM reads only that, so it steps as
    # in a plain run: buffer_t = m * buffer_{t-1} + mean_t, weights += lr * buffer_t.
    strategy = make_strategy(tmp_path, rounds=2, **{"secure-aggregation": True, "server-momentum": 0.9,
                                                    "server-learning-rate": 2.0})
    assert strategy.cfg.secure_aggregation
    means = [[w.astype(np.float64) for w in honest(seed)] for seed in (1, 2)]
    for rnd, mean in enumerate(means, 1):
        strategy.round_record = {"round": rnd}
        summed = ndarrays_to_parameters(pack(mean))  # the one result SecAgg+ reveals
        results = [(GridClientProxy(node, None, 1),
                    FitRes(Status(Code.OK, "ok"), summed, examples, {"site": f"s{node}", "dp": True}))
                   for node, examples in ((1, 120), (2, 80), (3, 200))]
        params, _ = strategy.aggregate_fit(rnd, results, [])
        assert params is not None and strategy.completed_rounds == list(range(1, rnd + 1))
    buffer = [0.9 * a + b for a, b in zip(*means)]
    expected = [2.0 * a + 2.0 * m for a, m in zip(means[0], buffer)]
    for got, want, ref in zip(strategy.global_weights, expected, REFERENCE):
        assert got.dtype == ref.dtype  # the model keeps its float32 weights
        np.testing.assert_allclose(got, want, rtol=1e-6)
    # ...which differs from plain FedAvg of the same means (so momentum really acted):
    assert not np.allclose(strategy.global_weights[0], 2.0 * (means[0][0] + means[1][0]), rtol=1e-3)
    for got, want in zip(strategy.run_dir.load_round_weights(2, kind="momentum"), buffer):  # saved for a resume
        np.testing.assert_allclose(got, want, rtol=1e-6)
    with pytest.raises(FedSiloError, match="server-momentum"):
        RunConfig.from_dict({"labels": "a,b", "server-momentum": 1.0})


def test_head_statistics_round_solves_the_head_and_names_bad_releases(tmp_path):
    # head-init stats: round 1 replies are head statistics, not updates; the server checks them as
    # values (no norm bound: max-update-norm is for updates), leaves malformed ones out by name and
    # puts the head solved from the valid ones' mean into the global model.
    from common.head_stats import solve_head, stats_shapes, sufficient_stats

    strategy = make_strategy(tmp_path, **{"head-init": "stats", "max-update-norm": 1.0})
    head = [np.zeros((4, 3), np.float32), np.zeros(4, np.float32)]  # a classifier: 4 classes on 3 features
    strategy.global_weights = [w.copy() for w in head]
    strategy.round_record = {"round": 1}
    rng = np.random.default_rng(0)
    centres = 3 * np.eye(4, 3)  # 4 classes in 3 dimensions
    sites = []
    for _ in range(2):
        y = rng.integers(0, 4, 60)
        x = centres[y] + 0.3 * rng.standard_normal((60, 3)) + np.array([0.0, 0.0, 1.0])
        sites.append((x, y, [(s / 60).astype(np.float32) for s in sufficient_stats(x, y, 4)]))
    shapes = stats_shapes(3, 4)
    results = [fit_result(1, sites[0][2], "A", 60), fit_result(2, sites[1][2], "B", 60),
               fit_result(3, [np.zeros(9, np.float32), np.zeros((4, 4), np.float32)], "C", 60),
               fit_result(4, [np.full(shapes[0], np.inf, np.float32), np.zeros(shapes[1], np.float32)], "D", 60)]
    params, _ = strategy.aggregate_fit(1, results, [])
    assert params is not None and strategy.completed_rounds == [1]
    assert sorted(strategy.round_record["fit"]) == ["A", "B"] and sorted(strategy.round_record["rejected"]) == ["C", "D"]
    weight, bias = unpack(parameters_to_ndarrays(params), [w.shape for w in head])
    mean = [(a + b) / 2 for a, b in zip(sites[0][2], sites[1][2])]
    want_w, want_b = solve_head(*mean, strategy.round_record["head_from_statistics"]["ridge"])
    np.testing.assert_allclose(weight, want_w, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(bias, want_b, rtol=1e-4, atol=1e-5)
    x = np.vstack([s[0] for s in sites])
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    # a useful head (least squares on 4 classes: 0.84 here; chance is 0.25)
    assert ((unit @ weight.T + bias).argmax(1) == np.concatenate([s[1] for s in sites])).mean() > 0.75
