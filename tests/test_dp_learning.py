"""DP-LoRA with the real embedded MiniLM learns under a real privacy budget (and catches a
silently broken Opacus + peft pair: loss falls and epsilon accrues, but the model stays useless)."""

import json

import pytest

from tests.helpers import run_cli

pytestmark = pytest.mark.slow


def test_federated_dp_lora_beats_chance_at_epsilon_8(demo_dir, tmp_path):
    run_dir = tmp_path / "run"
    proc = run_cli("fl-sim", "--sites", 3, "--data", demo_dir / "all.tsv", "--rounds", 2,
                   "--local-epochs", 3, "--target-epsilon", 8, "--privacy-budget", 8, "--run-dir", run_dir)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rounds = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    final = rounds[-1]
    assert all(site["dp"] and 0 < site["epsilon"] <= 8.0 for site in final["fit"].values()), final["fit"]
    assert all(site["accountant"] == "prv" and site["delta"] <= 1e-5 for site in final["fit"].values())
    assert "train_loss" not in json.dumps(final["fit"])  # not DP-protected: it stays at the site
    print("DP-LoRA accuracy by round:", [r["accuracy"] for r in rounds])
    assert final["accuracy"] > 0.7, rounds  # 4 balanced topics: chance is 0.25
    ledgers = sorted((run_dir / "sites").glob("*.privacy-ledger.json"))
    assert len(ledgers) == 3
    assert [e["round"] for e in json.loads(ledgers[0].read_text())["entries"]] == [1, 2]
