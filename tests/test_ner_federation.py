"""Task ner end to end: a site's round in-process (DP-SGD per sentence, its ledger, what leaves),
fl-sim on Flower's simulation engine, and fl-server + fl-client over TLS with SecAgg+ and DP."""

from __future__ import annotations

import json
import os
import signal

import numpy as np
import pytest

import client.site_round as site_round
from client.ledger import PrivacyLedger, default_ledger_path
from client.site_limits import SiteRefusal
from common.audit import verify_log
from common.config import RunConfig
from common.demo_ner import write_demo_conll
from common.launch import free_port
from common.model import build_model, get_weights
from common.privacy import SitePrivacy
from common.token_model import build_tagger
from common.updates import pack
from tests.helpers import run_cli, start, stop_all, wait_for_text

TAGS = "O,B-Disease,I-Disease,B-Drug,I-Drug"


@pytest.fixture(scope="module")
def ner_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("ner-data")
    write_demo_conll(out, sites=2, per_site=120, seed=5)
    return out


def request(op, cfg, node, weights, server_round=1):
    return {"op": op, "run_id": "run-ner", "run_config": cfg.to_flat(), "node_config": node,
            "parameters": pack(weights), "config": {"server-round": server_round}}


def test_a_site_round_trains_sentences_under_dp_and_sends_only_counts(tiny_model, ner_dir, tmp_path):
    data = tmp_path / "site-A.conll"
    data.write_bytes((ner_dir / "site-A.conll").read_bytes())
    cfg = RunConfig.from_dict({"task": "ner", "labels": TAGS, "model": str(tiny_model), "head-init": "none",
                               "rounds": 2, "batch-size": 16})
    node = {"site": "A", "data-path": str(data), "task": "ner", "allow-model": str(tiny_model),
            "allow-unmasked-updates": True, **SitePrivacy.from_mapping({}).to_node_config()}
    start_weights = [w for w in get_weights(build_tagger(cfg, cfg.labels))]
    site_round._run = site_round._current = None
    packed, n, report = site_round.serve(request("fit", cfg, node, start_weights))
    assert report["dp"] and 0 < report["epsilon"] <= 8.0 and n == report["records"] == 96  # 120 sentences, 24 held out
    ledger = PrivacyLedger(default_ledger_path(data), None, 120, None, "prv")
    assert len(ledger.entries) == 1 and ledger.entries[0]["run_id"] == "run-ner"
    loss, words, metrics = site_round.serve(request("evaluate", cfg, node, start_weights))
    # What leaves: counts over words and entities, never a word or a tag sequence.
    assert set(metrics) <= {"site", "confusion", "entity_counts", "time_load", "time_tokenise", "time_evaluate"}
    confusion = np.asarray(json.loads(metrics["confusion"]))
    assert confusion.shape == (5, 5) and confusion.sum() == words > 24
    counts = json.loads(metrics["entity_counts"])
    assert set(counts) <= {"Disease", "Drug"} and all(set(c) == {"tp", "pred", "true"} for c in counts.values())
    vocabulary = {w for line in data.read_text().splitlines() if line for w in [line.split("\t")[0]] if len(w) > 3}
    sent = json.dumps(metrics) + json.dumps({k: v for k, v in report.items() if isinstance(v, str)})
    assert not [w for w in vocabulary if w in sent]
    # The site's audit trail records the round, signed.
    assert verify_log(data.with_name(data.name + ".audit.jsonl")).ok


def test_a_classification_site_refuses_a_ner_run(tiny_model, demo_dir, tmp_path):
    cfg = RunConfig.from_dict({"task": "ner", "labels": TAGS, "model": str(tiny_model), "head-init": "none"})
    node = {"site": "B", "data-path": str(demo_dir / "site-B.tsv"), "allow-model": str(tiny_model)}
    site_round._run = site_round._current = None
    plain = RunConfig.from_dict({"labels": "account,card,loan,transfer", "model": str(tiny_model)})
    with pytest.raises(SiteRefusal, match="task ner, and this site's data is for task classify"):
        site_round.serve(request("fit", cfg, node, get_weights(build_model(plain))))


@pytest.mark.slow
def test_fl_sim_learns_to_tag_resumes_after_a_kill_and_fl_predict_finds_the_entities(tiny_model, ner_dir, tmp_path):
    run_dir = tmp_path / "run"
    args = ("--task", "ner", "--sites", 2, "--data", ner_dir / "all.conll", "--model", tiny_model,
            "--rounds", 3, "--trainable", "full", "--no-dp", "--local-epochs", 4, "--batch-size", 16,
            "--learning-rate", 1e-3, "--device", "cpu", "--run-dir", run_dir)
    # kill -9 the whole simulation (Ray too) once round 1 is reported, then run the same command again
    with open(tmp_path / "killed.log", "w") as log:
        killed = start("fl-sim", *args, log=log)
        try:
            first = wait_for_text(tmp_path / "killed.log", "round 1/3 |", killed, timeout=600)
            assert "fl-sim: 240 sentences, 5 tags, 2 virtual sites" in first
        finally:
            os.killpg(killed.pid, signal.SIGKILL)
            killed.wait()
    done = json.loads((run_dir / "state.json").read_text())["last_round"]
    assert 1 <= done < 3 and not (run_dir / "summary.json").exists()
    proc = run_cli("fl-sim", *args)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert f"resuming the run in {run_dir} after round {done} of 3" in proc.stdout
    assert json.loads((run_dir / "summary.json").read_text())["rounds_completed"] == [1, 2, 3]
    assert verify_log(run_dir / "audit.jsonl").ok
    rounds = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rounds] == [1, 2, 3] and rounds[-1]["entity_f1"] > 0.8, rounds[-1].get("entities")
    assert "round 3/3 | entity-F1" in proc.stdout + proc.stderr
    card = (run_dir / "MODEL_CARD.md").read_text()
    assert "Named-entity recognition" in card and "## Entities (seqeval" in card and "training sentences" in card
    report = (run_dir / "report.txt").read_text()
    assert "== entities (seqeval" in report and "B-Disease" in report
    tagged = run_cli("fl-predict", run_dir, "--text", "She was given metformin for diabetes today .")
    assert tagged.returncode == 0, tagged.stderr[-2000:]
    entities = json.loads(tagged.stdout.splitlines()[0])["entities"]
    assert {(e["type"], e["text"], e["start"], e["end"]) for e in entities} >= {("Drug", "metformin", 14, 23),
                                                                              ("Disease", "diabetes", 28, 36)}
    text = run_cli("fl-predict", run_dir, "--format", "text", "--text", "She was given metformin for diabetes today .")
    assert "[metformin](Drug)" in text.stdout and "[diabetes](Disease)" in text.stdout, text.stdout + text.stderr
    refused = run_cli("fl-predict", run_dir, "--text", "x", "--explain")
    assert refused.returncode != 0 and "task ner" in refused.stderr and "Traceback" not in refused.stderr


@pytest.mark.slow
def test_ner_over_tls_with_secagg_and_dp(tiny_model, ner_dir, tmp_path):
    from tests.test_secure_federation import provision

    port = free_port()
    fed = provision(tmp_path, ["A", "B"], port)
    run_dir = tmp_path / "run"
    logs = {n: open(tmp_path / f"{n}.log", "w") for n in ("server", "A", "B")}
    server = start("fl-server", "--federation", fed, "--task", "ner", "--labels", TAGS, "--rounds", 1,
                   "--min-sites", 2, "--model", tiny_model, "--batch-size", 16, "--run-dir", run_dir,
                   log=logs["server"])
    sites = []
    try:
        wait_for_text(tmp_path / "server.log", "waiting for", server, timeout=90)
        for name in ("A", "B"):
            data = tmp_path / f"site-{name}.conll"
            data.write_bytes((ner_dir / f"site-{name}.conll").read_bytes())
            sites.append(start("fl-client", "--kit", fed / "kits" / name, "--task", "ner", "--data", data,
                               "--allow-model", tiny_model, log=logs[name]))
        code = server.wait(timeout=600)
    finally:
        stop_all(server, *sites)
        for fh in logs.values():
            fh.close()
    out = (tmp_path / "server.log").read_text()
    assert code == 0, out[-4000:]
    assert "round 1/1 | entity-F1" in out and "epsilon A=" in out
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["secure_aggregation"] and summary["rounds_completed"] == [1]
    assert all("sentence-level" in summary["privacy"][n] and "96 training sentences" in summary["privacy"][n]
               for n in ("A", "B"))
    for name in ("A", "B"):
        ledger = json.loads(default_ledger_path(tmp_path / f"site-{name}.conll").read_text())
        assert len(ledger["entries"]) == 1  # the round charged, at the site
        assert "sentences (CoNLL, task ner)" in (tmp_path / f"{name}.log").read_text()
    assert verify_log(run_dir / "audit.jsonl").ok
    assert "metformin" not in out and "diabetes" not in out  # no word of a site's data reaches the server
