"""One poisoned site in a real simulated federation: FedAvg is wrecked, the median contains it.

The poisoned site is a modified copy of the FedSilo app (as a compromised institution would run):
its ClientApp sends its honest update flipped and scaled by -10.
"""

import json
import os
import shutil
import subprocess
import sys

import pytest

from tests.helpers import ROOT

pytestmark = pytest.mark.slow

POISONED_CLIENT = '''
from flwr.clientapp import ClientApp

from client.app import SiteClient, secure_aggregation_mod, site_errors_mod


class PoisonedClient(SiteClient):
    def fit(self, parameters, config):
        delta, n, metrics = super().fit(parameters, config)
        if metrics["site"] == "sim-0":
            delta = [-10.0 * d for d in delta]
        return delta, n, metrics


app = ClientApp(client_fn=lambda context: PoisonedClient(context).to_client(),
                mods=[site_errors_mod, secure_aggregation_mod])
'''


def poisoned_app(tmp_path):
    app = tmp_path / "poisoned-app"
    for package in ("server", "client", "common"):
        shutil.copytree(ROOT / package, app / package, ignore=shutil.ignore_patterns("__pycache__"))
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert 'clientapp = "client.app:app"' in pyproject
    (app / "pyproject.toml").write_text(pyproject.replace('clientapp = "client.app:app"',
                                                          'clientapp = "client.poisoned:app"'))
    (app / "client" / "poisoned.py").write_text(POISONED_CLIENT)
    return app


def run_poisoned(app, data, tiny_model, run_dir, aggregation):
    # `python -m server.sim` from the copy: its packages (and its app bundle) come first.
    args = ["--sites", 4, "--data", data, "--model", tiny_model, "--rounds", 3, "--trainable", "full",
            "--learning-rate", 3e-3, "--local-epochs", 4, "--batch-size", 16, "--no-dp",
            "--no-secure-aggregation", "--aggregation", aggregation, "--run-dir", run_dir,
            "--head-init", "none"]  # every round trains: the attack is on the training updates
    proc = subprocess.run(
        [sys.executable, "-c", "import sys; from server.sim import main; sys.exit(main())", *map(str, args)],
        cwd=app, env=dict(os.environ, PYTHONPATH=str(app)), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_median_contains_a_sign_flipping_site(tiny_model, demo_dir, tmp_path):
    app = poisoned_app(tmp_path)
    plain = run_poisoned(app, demo_dir / "all.tsv", tiny_model, tmp_path / "fedavg", "fedavg")
    robust = run_poisoned(app, demo_dir / "all.tsv", tiny_model, tmp_path / "median", "median")
    print("accuracy by round, fedavg:", [r["accuracy"] for r in plain],
          "median:", [r["accuracy"] for r in robust])
    assert robust[-1]["accuracy"] >= 0.8  # learns despite the poisoned site
    assert plain[-1]["accuracy"] <= robust[-1]["accuracy"] - 0.3  # the mean follows the attacker
