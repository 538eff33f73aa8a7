"""fl-sim end to end: Flower's simulation engine, the real ClientApp/ServerApp, a tiny BERT."""

import json

from common.audit import load_public_key, trust, verify_log
from tests.helpers import LABELS, assert_clean_error, run_cli


def test_three_virtual_sites_learn_the_task(tiny_model, demo_dir, tmp_path):
    # A random tiny BERT learns only without DP noise; DP learning is tested on MiniLM.
    run_dir = tmp_path / "run"
    proc = run_cli("fl-sim", "--sites", 3, "--data", demo_dir / "all.tsv", "--model", tiny_model,
                   "--rounds", 2, "--trainable", "full", "--learning-rate", 3e-3, "--local-epochs", 4,
                   "--batch-size", 16, "--no-dp", "--run-dir", run_dir)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # One line per round on the coordinator's screen, then the report.
    assert "round 1/2 | accuracy" in proc.stdout and "round 2/2 | accuracy" in proc.stdout
    assert "== federation" in proc.stdout and "macro avg" in proc.stdout

    rounds = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rounds] == [1, 2]
    assert sorted(rounds[-1]["site_accuracy"]) == ["sim-0", "sim-1", "sim-2"]
    assert rounds[-1]["eval_examples"] == 120  # 20% of 600, split at the sites
    # Four balanced classes: chance is 0.25.
    assert rounds[-1]["accuracy"] > 0.7, rounds
    print("simulation accuracy by round:", [r["accuracy"] for r in rounds])

    assert json.loads((run_dir / "labels.json").read_text()) == dict(
        (str(i), name) for i, name in enumerate(LABELS.split(",")))
    assert (run_dir / "rounds" / "round-0002.npz").is_file()
    report = json.loads((run_dir / "reports" / "round-0002.json").read_text())
    assert set(report["sites"]) == {"sim-0", "sim-1", "sim-2"}
    assert report["federation"]["report"]["accuracy"] == rounds[-1]["accuracy"]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "ok" and summary["rounds_completed"] == [1, 2]
    # Turning DP off is explicit and shows in every report.
    assert all(f["dp"] is False for f in rounds[-1]["fit"].values())
    assert "NO DP at sim-0,sim-1,sim-2" in proc.stdout
    assert summary["privacy"]["sim-0"].startswith("site sim-0: NO differential privacy")

    # The coordinator's signed audit trail, and each site's, verify; a tampered copy does not.
    trusted = trust(load_public_key(run_dir / "server-audit.key.pub"))
    result = verify_log(run_dir / "audit.jsonl", trusted)
    assert result.ok and result.head == summary["audit_head"]
    kinds = [json.loads(line)["kind"] for line in (run_dir / "audit.jsonl").read_text().splitlines()]
    assert kinds == ["log_start", "run_start", "round", "round", "final_model"]
    for site in ("sim-0", "sim-1", "sim-2"):
        log = run_dir / "sites" / f"{site}.audit.jsonl"
        assert verify_log(log, trust(load_public_key(run_dir / "sites" / f"{site}.audit-key.pub"))).ok
        assert [json.loads(line)["kind"] for line in log.read_text().splitlines()] == ["log_start", "round", "round"]
    assert run_cli("fl-audit", "verify", run_dir / "audit.jsonl", "--key", run_dir / "server-audit.key.pub").returncode == 0
    tampered = tmp_path / "tampered.jsonl"
    tampered.write_text((run_dir / "audit.jsonl").read_text().replace('"round":1', '"round":7', 1))
    assert_clean_error(run_cli("fl-audit", "verify", tampered), "record 2")

    card = (run_dir / "MODEL_CARD.md").read_text()
    for heading in ("## Task", "## Base model", "## Sites", "## Differential privacy, per site",
                    "## Secure aggregation", "## Per-class metrics", "## Per-site metrics", "## Audit",
                    "## Known limitations"):
        assert heading in card
    assert "server step: FedAvg (weighted mean)." in card
    assert summary["audit_head"] in card and (run_dir / "model_card.html").read_text().startswith("<!doctype html>")

    pred = run_cli("fl-predict", run_dir, "--text", "my debit card was declined at the shop",
                   "--text", "my mortgage application was rejected without a reason")
    assert pred.returncode == 0, pred.stderr
    assert [json.loads(line)["label"] for line in pred.stdout.splitlines()] == ["card", "loan"]
