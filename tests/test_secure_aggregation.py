"""SecAgg+ changes what the server sees, not what it computes: the securely aggregated round
equals plain FedAvg of the same deltas up to SecAgg+'s quantisation (stated in the README), with
every site sharing keys with every other and with small neighbourhoods; and the server refuses to
unmask when dropouts split the surviving sites' neighbourhood graph."""

import json
from types import SimpleNamespace

import numpy as np
import pytest
from flwr.common import ndarrays_to_parameters
from flwr.server import SimpleClientManager
from flwr.server.compat.grid_client_proxy import GridClientProxy
from flwr.server.workflow.secure_aggregation.secaggplus_workflow import WorkflowState

from common.audit import AuditLog, generate_key
from common.config import RunConfig
from common.demo_data import write_demo
from server.run_dir import RunDir
from server.secure_aggregation import MAX_SITES_PER_ROUND, GuardedSecAggPlus, connected
from server.strategy import FedSiloStrategy
from tests.helpers import run_cli

TOLERANCE = 1e-3  # absolute, per weight; the measured error is about 2e-4 (SECAGG_CLIP=1, 2**22 levels)
# ...and not less: SecAgg+ rounds each site's weighted value stochastically to one of 2**22 levels
# over +-SECAGG_CLIP, after weighting it by examples / SECAGG_MAX_WEIGHT; on the mean of 480
# training examples one level is 2 / (480 / 1e5 * 2**22) = 1e-4, and the largest error over
# 2,180 weights is about 2 levels. Plain FedAvg of the same (no-DP, seeded) deltas is exact: an
# error below a tenth of a level means the deltas were never quantised, i.e. SecAgg+ did not run.
MIN_QUANTISATION_ERROR = 1e-5


def aggregated_delta(run_dir):
    before, after = np.load(run_dir / "rounds" / "round-0000.npz"), np.load(run_dir / "rounds" / "round-0001.npz")
    return [after[k] - before[k] for k in before.files]


def test_secure_aggregate_equals_plain_fedavg(tiny_model, tmp_path):
    """5 sites, one plain FedAvg round, and the same round under SecAgg+ twice: with the default
    neighbourhood (21: every site shares keys with every other) and with rings of 3 (each site
    with its two neighbours only)."""
    sites = 5
    data = tmp_path / "data"
    write_demo(data, sites=1, per_site=600, seed=11)  # all.tsv: 600 rows, partitioned over the sites
    rounds = {}
    for mode, neighbours in (("--no-secure-aggregation", 21), ("--secure-aggregation", 21), ("--secure-aggregation", 3)):
        run_dir = tmp_path / f"{mode.strip('-')}-{neighbours}"
        proc = run_cli("fl-sim", "--sites", sites, "--data", data / "all.tsv", "--model", tiny_model, "--rounds", 1,
                       "--no-dp", "--batch-size", 16, "--learning-rate", 5e-3, "--secagg-neighbours", neighbours,
                       "--head-init", "none", "--run-dir", run_dir, mode)  # round 1 trains: updates are compared
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        rounds[mode, neighbours] = aggregated_delta(run_dir)
        summary = json.loads((run_dir / "summary.json").read_text())
        server_log = (run_dir / "logs" / "serverapp.log").read_text(errors="replace")
        secure = mode == "--secure-aggregation"
        assert summary["secure_aggregation"] is secure and summary["rounds_completed"] == [1]
        # Flower's SecAggPlusWorkflow logs these (and only it): it ran, to the end, in this run only.
        assert ("Secure aggregation commencing." in server_log) is secure, server_log[-3000:]
        assert ("Secure aggregation completed." in server_log) is secure, server_log[-3000:]
        assert f"aggregate_fit: received {sites} results and 0 failures" in server_log
    plain = rounds["--no-secure-aggregation", 21]
    largest = max(float(np.abs(p).max()) for p in plain)
    assert largest > 10 * TOLERANCE  # the sites really moved the model
    for neighbours in (21, 3):
        secure = rounds["--secure-aggregation", neighbours]
        error = max(float(np.abs(s - p).max()) for s, p in zip(secure, plain))
        print(f"{sites} sites, neighbourhood {neighbours}: SecAgg+ vs plain FedAvg: max abs error "
              f"{error:.2e}, largest delta {largest:.2e}")
        assert MIN_QUANTISATION_ERROR < error <= TOLERANCE


def ring(n: int, half: int) -> dict[int, set[int]]:
    """Flower's SecAgg+ neighbourhoods: each node and `half` nodes on each side of it."""
    return {i: {(i + d) % n for d in range(-half, half + 1)} for i in range(n)}


def test_connected_survivors_on_a_ring():
    graph = ring(8, 1)  # neighbourhoods of 3
    assert connected(set(range(8)), graph)
    assert connected({0, 1, 2, 3}, graph)
    assert not connected({0, 1, 4, 5}, graph)  # 2-3 and 6-7 dropped: two pieces
    assert connected({0, 2, 4, 6}, ring(8, 2))  # neighbourhoods of 5 bridge single gaps
    assert connected(set(range(5)), {i: set(range(5)) for i in range(5)})  # every site with every other


def make_strategy(tmp_path, **options) -> FedSiloStrategy:
    tmp_path.mkdir(exist_ok=True)
    generate_key(tmp_path / "audit.key")
    cfg = RunConfig.from_dict({"labels": "a,b", "head-init": "none", **options})  # updates, not statistics
    return FedSiloStrategy(cfg, RunDir(tmp_path / "run"), [np.zeros(2)],
                           AuditLog(tmp_path / "audit.jsonl", tmp_path / "audit.key", "server"))


def test_unmask_refused_when_the_survivors_split(tmp_path):
    strategy = make_strategy(tmp_path, **{"secagg-neighbours": 3})
    strategy._fit_started.append(1)  # round 1 is under way (configure_fit would record it)
    state = WorkflowState()
    state.nid_to_neighbours = ring(8, 1)
    state.sampled_node_ids = set(range(8))
    state.active_node_ids = {0, 1, 4, 5}
    workflow = GuardedSecAggPlus(num_shares=3, reconstruction_threshold=2)
    # grid=None: a refused round must not send a single message (asking for key shares would unmask)
    assert workflow.unmask_stage(None, SimpleNamespace(strategy=strategy), state) is False
    assert "no longer form one connected neighbourhood graph" in strategy.failed_rounds[1]
    assert "global model is unchanged" in strategy.failed_rounds[1]


def test_more_sites_than_the_modulus_can_sum_are_refused(tmp_path):
    # 1,025 connected sites: their quantised updates (up to 2**22 each) could wrap 2**32.
    manager = SimpleClientManager()
    for node_id in range(1, MAX_SITES_PER_ROUND + 2):
        manager.register(GridClientProxy(node_id, grid=None, run_id=1))
    strategy = make_strategy(tmp_path, **{"min-sites": 2})
    assert strategy.configure_fit(1, ndarrays_to_parameters([np.zeros(2)]), manager) == []
    assert "1025 sites in one round, more than the 1024" in strategy.failed_rounds[1]
    plain = make_strategy(tmp_path / "plain", **{"secure-aggregation": False})
    assert len(plain.configure_fit(1, ndarrays_to_parameters([np.zeros(2)]), manager)) == 1025
