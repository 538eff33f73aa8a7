"""What the site decides, not the server: masking, its held-out share, and who it is.

Each test plays a coordinator that asks for more than a site allows (a plain round, a larger
evaluation share, another seed) or a site that lies about its name, against the real ClientApp
and the real strategy.
"""

import json

import numpy as np
import pytest
import flwr.compat.common.recorddict_compat as compat
from flwr.app import Context, Message, RecordDict
from flwr.app.message_type import MessageType
from flwr.common import Code, EvaluateRes, FitIns, FitRes, Status, ndarrays_to_parameters
from flwr.server.compat.grid_client_proxy import GridClientProxy
from flwr.supercore.task_identity import TaskIdentity

from client.app import app
from client.site import site_data
from common.audit import AuditLog, generate_key
from common.config import RunConfig
from common.launch import is_loopback, require_loopback
from common.errors import FedSiloError
from common.model import build_model, get_weights
from common.privacy import guarantee_sentence
from common.updates import pack
from server.run_dir import RunDir
from server.strategy import FedSiloStrategy
from tests.helpers import LABELS

ROWS = "".join(f"my card number {i} was declined\tcard\nopen an account for me {i}\taccount\n" for i in range(50))


def site_file(tmp_path):
    data = tmp_path / "site.tsv"
    data.write_text("text\tlabel\n" + ROWS)
    return data


def node_config(tmp_path, data, model="", **extra):
    """fl-client's node config; `model`: the one base model it allows (--allow-model), besides the embedded one."""
    return {"site": "A", "data-path": str(data), "dp": False, "ledger": str(tmp_path / "ledger.json"),
            "audit-log": str(tmp_path / "audit.jsonl"), "audit-key": str(tmp_path / "audit.key"),
            "allow-model": str(model), **extra}


def plain_fit(cfg, node_cfg):
    """What a coordinator running without secure aggregation sends: a fit with no SecAgg+ stage."""
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 7, 1
    ctx = Context(run_id=1, node_id=7, state=RecordDict(), run_config=cfg.to_flat(), node_config=node_cfg)
    weights = get_weights(build_model(cfg))
    content = compat.fitins_to_recorddict(FitIns(ndarrays_to_parameters(pack(weights)), {"server-round": 1}),
                                          keep_input=True)
    return app(Message(content=content, dst_node_id=7, message_type=MessageType.TRAIN), ctx)


def test_site_refuses_an_unmasked_round_unless_its_operator_allowed_it(tiny_model, tmp_path):
    data = site_file(tmp_path)
    # The server turned secure aggregation off: the run config says so, but it is not the site's say.
    cfg = RunConfig.from_dict({"model": str(tiny_model), "labels": LABELS, "secure-aggregation": False,
                               "min-sites": 1, "rounds": 1})
    refused = plain_fit(cfg, node_config(tmp_path, data, tiny_model))
    assert refused.has_error()
    assert "refuses to send an unmasked update" in refused.error.reason
    assert not refused.has_content()  # nothing of the update left
    # a node config value that is not exactly True (e.g. a string) does not count as consent
    assert plain_fit(cfg, node_config(tmp_path, data, tiny_model, **{"allow-unmasked-updates": "true"})).has_error()
    allowed = plain_fit(cfg, node_config(tmp_path, data, tiny_model, **{"allow-unmasked-updates": True}))
    assert not allowed.has_error(), allowed.error
    assert allowed.content.array_records


def test_site_holds_out_at_most_its_own_share_whatever_the_server_asks(tiny_model, tmp_path):
    data = site_file(tmp_path)
    ask = lambda fraction, seed, **site: site_data(  # noqa: E731
        RunConfig.from_dict({"model": str(tiny_model), "labels": LABELS, "eval-fraction": fraction, "seed": seed}),
        node_config(tmp_path, data, **site))
    greedy = ask(0.9, 42)  # the server asks for 90% of the records in the clear
    assert len(greedy.eval.texts) == 20 and len(greedy.train.texts) == 80  # the site's default cap, 0.2
    assert len(ask(0.9, 42, **{"eval-fraction": 0.05}).eval.texts) == 5  # a stricter site
    assert len(ask(0.1, 42).eval.texts) == 10  # less than the cap: granted
    # the held-out records follow the data, not the server's seed: another seed picks the same ones
    assert ask(0.2, 1).eval.texts == ask(0.2, 99).eval.texts == greedy.eval.texts
    assert set(ask(0.1, 7).eval.texts) <= set(greedy.eval.texts)  # a smaller share is a subset


def test_guarantee_counts_the_training_records_and_names_what_evaluation_sends():
    text = guarantee_sentence("A", 3.001, 1e-5, "prv", 80, 20)
    assert "(3.01, 1e-05)-differential privacy for its 80 training records" in text
    assert "20 held-out evaluation records are not covered" in text and "confusion counts" in text
    assert "holds out no evaluation records" in guarantee_sentence("A", 3.0, 1e-5, "prv", 100, 0)
    # each mechanism the site ran, with the epsilon it would cost alone (rounded up)
    both = guarantee_sentence("A", 8.0, 1e-5, "prv", 80, 20, {"head-statistics": 7.191, "dp-sgd": 3.42})
    assert "head statistics (Gaussian mechanism, sensitivity sqrt(2), q=1, one release): 7.20" in both
    assert "DP-SGD (Poisson-subsampled Gaussian, per-example clipping): 3.42" in both
    assert "composed exactly, not added" in both


def strategy_with_enrolment(tmp_path, enrolled):
    run = RunDir(tmp_path / "run")
    if enrolled is not None:
        (run.path / "sites.json").write_text(json.dumps(enrolled))
    generate_key(tmp_path / "audit.key")
    cfg = RunConfig.from_dict({"labels": "a,b", "secure-aggregation": False, "min-sites": 1, "head-init": "none"})
    return FedSiloStrategy(cfg, run, [np.zeros(2, dtype=np.float32)],
                           AuditLog(tmp_path / "audit.jsonl", tmp_path / "audit.key", "server"))


def fit_result(node_id, claimed, epsilon):
    proxy = GridClientProxy(node_id, grid=None, run_id=1)
    metrics = {"site": claimed, "dp": True, "epsilon": epsilon, "delta": 1e-5, "accountant": "prv",
               "records": 80, "eval_records": 20}
    return proxy, FitRes(Status(Code.OK, ""), ndarrays_to_parameters(pack([np.full(2, 0.1, np.float32)])), 80,
                         metrics)


def test_names_come_from_enrolment_not_from_what_a_site_says(tmp_path):
    strategy = strategy_with_enrolment(tmp_path, {"7": "A", "8": "B"})
    strategy._fit_started.append(1)
    strategy.round_record = {"round": 1}
    # node 8 (enrolled as B) claims to be A, to overwrite A's privacy report; node 9 is not enrolled
    results = [fit_result(7, "A", 2.0), fit_result(8, "A", 99.0), fit_result(9, "hospital-X", 1.0)]
    strategy.aggregate_fit(1, results, [])
    assert sorted(strategy.round_record["fit"]) == ["A", "B", "node 9 (not enrolled)"]
    assert strategy.site_privacy["A"]["epsilon"] == 2.0 and strategy.site_privacy["B"]["epsilon"] == 99.0
    evaluation = [(GridClientProxy(8, grid=None, run_id=1),
                   EvaluateRes(Status(Code.OK, ""), 0.5, 4, {"site": "A", "confusion": "[[2, 0], [0, 2]]"}))]
    strategy.aggregate_evaluate(1, evaluation, [])
    line = (tmp_path / "run" / "metrics.jsonl").read_text()
    assert '"B": 1.0' in line and '"A": 1.0' not in line  # B's accuracy, under B's name


def test_without_enrolment_names_are_the_sites_own_word_and_the_summary_says_so(tmp_path):
    strategy = strategy_with_enrolment(tmp_path, None)
    assert strategy.site_name(GridClientProxy(7, grid=None, run_id=1), {"site": "A\x1b[2J"}) == "A\\x1b[2J"
    assert "nothing authenticated" in strategy.names_source


@pytest.mark.parametrize("host, loopback", [
    ("127.0.0.1", True), ("127.1.2.3", True), ("::1", True), ("[::1]", True), ("localhost", True),
    ("127.evil.example", False), ("127.0.0.1.evil.example", False), ("10.0.0.1", False),
    ("0.0.0.0", False), ("example.org", False), ("127", False), ("", False)])
def test_loopback_is_parsed_exactly(host, loopback):
    assert is_loopback(host) is loopback
    if not loopback:
        with pytest.raises(FedSiloError, match="127.0.0.1 only"):
            require_loopback(host, "--insecure")


def test_the_superlink_never_gets_the_switches_for_its_legacy_grpc_servers(monkeypatch):
    """They would open Fleet and Control on 0.0.0.0, beside the gateway instead of behind it."""
    from common.launch import coordinator_env, flower_env

    monkeypatch.setenv("FLWR_INTERNAL_GRPC_CONTROL_API", "1")
    monkeypatch.setenv("FLWR_INTERNAL_GRPC_FLEET_API", "1")
    env = coordinator_env(flower_env())
    assert "FLWR_INTERNAL_GRPC_CONTROL_API" not in env and "FLWR_INTERNAL_GRPC_FLEET_API" not in env
