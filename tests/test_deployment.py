"""fl-server + fl-client on Flower's deployment engine: a real SuperLink and SuperNodes on 127.0.0.1."""

import json

import pytest

from client.ledger import PrivacyLedger, default_ledger_path, fingerprint
from common.data import read_records
from common.launch import free_port
from tests.helpers import LABELS, site_file, start, stop_all, wait_for_text

pytestmark = pytest.mark.slow


def run_federation(tmp_path, server_args, sites: dict[str, list]):
    """Start fl-server, then one fl-client per site; wait for the server; stop everything."""
    port, run_dir = free_port(), tmp_path / "run"
    logs = {name: open(tmp_path / f"{name}.log", "w") for name in ("server", *sites)}
    server = start("fl-server", "--insecure", "--port", port, "--run-dir", run_dir, *server_args,
                   log=logs["server"])
    clients = []
    try:
        wait_for_text(tmp_path / "server.log", "waiting for", server, timeout=60)
        for name, args in sites.items():
            clients.append(start("fl-client", "--site", name, "--server", f"127.0.0.1:{port}", "--insecure",
                                 *args, log=logs[name]))
        code = server.wait(timeout=600)
    finally:
        stop_all(server, *clients)
        for fh in logs.values():
            fh.close()
    return code, (tmp_path / "server.log").read_text(), run_dir


def test_server_and_two_sites_run_two_rounds(tiny_model, demo_dir, tmp_path):
    from common.model import load_classifier

    code, out, run_dir = run_federation(
        tmp_path, ["--labels", LABELS, "--model", tiny_model, "--rounds", 2, "--trainable", "full",
                   "--learning-rate", 3e-3, "--local-epochs", 4, "--batch-size", 16],
        {name: ["--data", site_file(demo_dir, name, tmp_path), "--no-dp", "--allow-model", tiny_model,
                *(["--device", "cpu"] if name == "A" else [])]  # B: the default, auto
         for name in ("A", "B")})
    assert code == 0, out[-4000:]
    assert "round 2/2 | accuracy" in out and "sites A=" in out and "== site B ==" in out
    rounds = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rounds] == [1, 2] and sorted(rounds[-1]["fit"]) == ["A", "B"]
    assert rounds[-1]["accuracy"] > 0.6, rounds
    # Each site says where it computed and its peak memory, next to its timings (auto: CPU here).
    for site in ("A", "B"):
        assert rounds[-1]["fit"][site]["device"] == "cpu" and rounds[-1]["fit"][site]["peak_rss_mib"] > 100
        assert "ray_node" not in rounds[-1]["fit"][site]  # a real site runs no Ray
    hardware = json.loads((run_dir / "summary.json").read_text())["hardware"]
    assert hardware["ray_nodes"] == {} and hardware["sites"]["A"]["device"] == "cpu"
    assert (run_dir / "report.txt").read_text().startswith("Classification report after round 2")
    assert (run_dir / "superlink.db").is_file()  # SuperLink state persisted in the run dir
    model = load_classifier(run_dir / "final-model")
    assert model.config.id2label[1] == "card"
    # Each site saw its own data only; the server's log names the sites and never their text.
    assert "declined at the shop" not in out


def test_site_out_of_budget_is_refused_and_the_federation_goes_on(tiny_model, demo_dir, tmp_path):
    # Site B already spent most of its budget on this dataset in an earlier run.
    data_b = tmp_path / "site-B.tsv"
    data_b.write_bytes((demo_dir / "site-B.tsv").read_bytes())
    records = read_records(data_b)
    PrivacyLedger(default_ledger_path(data_b), fingerprint(records), len(records), 1e-5, "prv").charge(
        site="B", run_id="earlier", server_round=1, noise_multiplier=1.0, sample_rate=0.2, steps=20, budget=7.0)
    ledger_before = default_ledger_path(data_b).read_text()

    code, out, run_dir = run_federation(
        # Plain aggregation: with one site left, SecAgg+ would (rightly) refuse to unmask a lone update.
        tmp_path, ["--labels", LABELS, "--model", tiny_model, "--rounds", 2, "--batch-size", 32,
                   "--no-secure-aggregation"],
        {"A": ["--data", site_file(demo_dir, "A", tmp_path), "--ledger", tmp_path / "a-ledger.json",
               "--allow-unmasked-updates", "--allow-model", tiny_model],
         "B": ["--data", data_b, "--privacy-budget", 7.0, "--target-epsilon", 7.0, "--allow-unmasked-updates",
               "--allow-model", tiny_model]})
    assert code == 0, out[-4000:]
    assert "site B: privacy budget exhausted, 6.63 of 7.00 spent" in out
    rounds = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [sorted(r["fit"]) for r in rounds] == [["A"], ["A"]]  # B never trained, A carried on
    assert all(r["status"] == "ok" for r in rounds)
    eps_a = [r["fit"]["A"]["epsilon"] for r in rounds]
    assert 0 < eps_a[0] < eps_a[1] <= 8.0
    assert f"epsilon A={eps_a[1]:.2f}" in out
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["privacy"]["A"].startswith("site A: record-level (")
    assert "accounted with the Opacus PRV accountant" in summary["privacy"]["A"]
    # B's ledger is unchanged by the refusal; A's records both rounds.
    assert default_ledger_path(data_b).read_text() == ledger_before
    assert [e["round"] for e in json.loads((tmp_path / "a-ledger.json").read_text())["entries"]] == [1, 2]
