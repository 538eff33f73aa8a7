"""fl-server + fl-client on Flower's deployment engine: a real SuperLink and SuperNodes on 127.0.0.1."""

import json
import subprocess
import time

import pytest

from common.launch import free_port
from tests.helpers import BIN, LABELS

pytestmark = pytest.mark.slow


def start(name, *args, log):
    return subprocess.Popen([str(BIN / name), *map(str, args)], stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)


def test_server_and_two_sites_run_two_rounds(tiny_model, demo_dir, tmp_path):
    from transformers import AutoModelForSequenceClassification

    port, run_dir = free_port(), tmp_path / "run"
    logs = {name: open(tmp_path / f"{name}.log", "w") for name in ("server", "A", "B")}
    server = start("fl-server", "--insecure", "--port", port, "--labels", LABELS, "--model", tiny_model,
                   "--rounds", 2, "--trainable", "full", "--learning-rate", 3e-3, "--local-epochs", 4,
                   "--batch-size", 16, "--run-dir", run_dir, log=logs["server"])
    sites = []
    try:
        deadline = time.monotonic() + 60
        while "waiting for" not in (tmp_path / "server.log").read_text() and time.monotonic() < deadline:
            assert server.poll() is None, (tmp_path / "server.log").read_text()
            time.sleep(0.5)
        for name in ("A", "B"):
            sites.append(start("fl-client", "--site", name, "--data", demo_dir / f"site-{name}.tsv",
                               "--server", f"127.0.0.1:{port}", "--insecure", "--no-dp", log=logs[name]))
        assert server.wait(timeout=600) == 0, (tmp_path / "server.log").read_text()[-4000:]
    finally:
        for proc in [server, *sites]:
            if proc.poll() is None:
                proc.terminate()
        for proc in [server, *sites]:
            proc.wait(timeout=30)
        for fh in logs.values():
            fh.close()

    out = (tmp_path / "server.log").read_text()
    assert "round 2/2 | accuracy" in out and "sites A=" in out and "== site B ==" in out
    rounds = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rounds] == [1, 2] and sorted(rounds[-1]["fit"]) == ["A", "B"]
    assert rounds[-1]["accuracy"] > 0.6, rounds
    assert (run_dir / "report.txt").read_text().startswith("Classification report after round 2")
    assert (run_dir / "superlink.db").is_file()  # SuperLink state persisted in the run dir
    model = AutoModelForSequenceClassification.from_pretrained(run_dir / "final-model")
    assert model.config.id2label[1] == "card"
    # Each site saw its own data only; the server's log names the sites and never their text.
    assert "declined at the shop" not in out
