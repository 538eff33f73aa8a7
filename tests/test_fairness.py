"""Fairness by group: the counts a site sends, the metrics the coordinator computes from them
(checked against fairlearn and a direct computation on the same predictions), the small groups
that never leave a site on their own, a hostile site's counts, and the site's mitigation."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
from fairlearn.metrics import MetricFrame, demographic_parity_difference, equalized_odds_difference
from sklearn.metrics import accuracy_score

from client.private_train import _weight_after_clipping
from client.site_round import RunModel, SiteRound
from client.train import predict_logits
from common.demo_data import make_messages
from common.fairness import (MAX_GROUPS, OTHER, balancing_weights, group_confusions, group_report,
                             merged_groups)
from server.fairness_round import GroupCounts
from server.site_reports import Malformed, evaluate_report
from tests.helpers import LABELS, assert_clean_error, run_cli


def random_predictions(k: int, groups: dict[str, int], seed: int):
    rng = np.random.default_rng(seed)
    names = [g for g, size in groups.items() for _ in range(size)]
    rng.shuffle(names)
    y = rng.integers(0, k, len(names))
    # Each group errs at its own rate, so the gaps are not zero.
    rate = {g: 0.1 + 0.15 * i for i, g in enumerate(groups)}
    err = np.array([rate[g] for g in names])
    p = np.where(rng.random(len(names)) < err, rng.integers(0, k, len(names)), y)
    return y, p, names


def test_binary_group_metrics_are_fairlearns_on_the_same_predictions():
    y, p, g = random_predictions(2, {"women": 60, "immigrants": 45, "none": 80}, seed=1)
    report = group_report(group_confusions(y, p, g, 2), ("0", "1"))
    sens = np.array(g, dtype=object)
    direct = MetricFrame(metrics=accuracy_score, y_true=y, y_pred=p, sensitive_features=sens).by_group
    for group, acc in direct.items():
        assert report["groups"][group]["accuracy"] == pytest.approx(acc)
        assert report["groups"][group]["records"] == g.count(group)
    gaps = report["gaps"]
    assert gaps["equalized_odds_difference"] == pytest.approx(equalized_odds_difference(y, p, sensitive_features=sens))
    assert gaps["demographic_parity_difference"] == pytest.approx(
        demographic_parity_difference(y, p, sensitive_features=sens))
    assert gaps["worst_group_accuracy"] == pytest.approx(direct.min()) and gaps["worst_group"] == direct.idxmin()
    assert gaps["equalized_odds_difference"] > 0


def test_multiclass_rates_match_a_direct_count_per_group():
    y, p, g = random_predictions(3, {"north": 70, "south": 50}, seed=2)
    report = group_report(group_confusions(y, p, g, 3), ("a", "b", "c"))
    g = np.array(g)
    tpr_gap = fpr_gap = sel_gap = 0.0
    for c, name in enumerate("abc"):
        rates = {}
        for group in ("north", "south"):
            m = g == group
            tpr = np.mean(p[m][y[m] == c] == c)
            fpr = np.mean(p[m][y[m] != c] == c)
            sel = np.mean(p[m] == c)
            got = report["groups"][group]
            assert (got[f"tpr/{name}"], got[f"fpr/{name}"], got[f"selection_rate/{name}"]) == pytest.approx((tpr, fpr, sel))
            rates[group] = (tpr, fpr, sel)
        tpr_gap = max(tpr_gap, abs(rates["north"][0] - rates["south"][0]))
        fpr_gap = max(fpr_gap, abs(rates["north"][1] - rates["south"][1]))
        sel_gap = max(sel_gap, abs(rates["north"][2] - rates["south"][2]))
    assert report["gaps"]["equalized_odds_difference"] == pytest.approx(max(tpr_gap, fpr_gap))
    assert report["gaps"]["demographic_parity_difference"] == pytest.approx(sel_gap)


def test_small_groups_are_merged_and_a_small_other_never_leaves():
    sizes = lambda groups: {k: int(v.sum()) for k, v in group_confusions(  # noqa: E731
        np.zeros(len(groups), int), np.zeros(len(groups), int), groups, 2, 10).items()}
    # Two small groups of 4 and 3: merged, 7 records are still too few, so neither is sent.
    assert sizes(["a"] * 30 + ["b"] * 12 + ["c"] * 4 + ["d"] * 3) == {"a": 30, "b": 12}
    assert sizes(["a"] * 30 + ["c"] * 6 + ["d"] * 5) == {"a": 30, OTHER: 11}
    # A bounded report: the largest groups keep their names, the rest go to "other".
    many = [f"g{i:02d}" for i in range(40) for _ in range(10 + i)]
    reported = sizes(many)
    assert len(reported) == MAX_GROUPS and reported[OTHER] == sum(10 + i for i in range(40 - MAX_GROUPS + 1))
    assert all(v >= 10 for v in reported.values()) and merged_groups(["x"] * 9, 10) == [None] * 9


def reply(confusion, groups, k: int = 2):
    metrics = {"site": "A", "confusion": json.dumps(np.asarray(confusion).tolist())}
    if groups is not None:
        metrics["group_confusion"] = groups if isinstance(groups, str) else json.dumps(groups)
    return metrics, int(np.asarray(confusion).sum()), 0.5, k


def test_a_hostile_sites_group_counts_are_refused():
    whole = [[20, 5], [4, 21]]
    clean, _ = evaluate_report(*reply(whole, {"a": [[10, 2], [2, 10]], "b": [[10, 3], [2, 11]]}))
    assert set(clean["group_confusion"]) == {"a", "b"}
    bad = {
        "more than the site's matrix": {"a": [[15, 2], [2, 10]], "b": [[10, 3], [2, 11]]},
        "markup in a name": {"<script>alert(1)</script>": [[1, 0], [0, 1]]},
        "a terminal escape": {"\x1b]8;;http://x\x07a": [[1, 0], [0, 1]]},
        "negative counts": {"a": [[-1, 0], [0, 1]]},
        "a wrong shape": {"a": [[1, 0, 0], [0, 1, 0]]},
        "too many groups": {f"g{i}": [[0, 0], [0, 0]] for i in range(MAX_GROUPS + 1)},
        "not an object": [[1, 0], [0, 1]],
        "deep nesting": "{\"a\": " + "[" * 5000 + "]" * 5000 + "}",
        "huge": json.dumps({"a": [[1, 0], [0, 1]], "pad": "x" * 10**6}),
    }
    for what, groups in bad.items():
        with pytest.raises(Malformed):
            evaluate_report(*reply(whole, groups))
            pytest.fail(f"accepted {what}")
    with pytest.raises(Malformed):  # counts by group without the site's whole matrix
        evaluate_report({"site": "A", "group_confusion": "{}"}, 0, 0.5, 2)


def test_counts_from_sites_are_summed_by_group_with_an_alert_above_the_threshold():
    counts = GroupCounts()
    a = {"x": np.array([[8, 2], [1, 9]]), "y": np.array([[5, 5], [5, 5]])}
    b = {"x": np.array([[9, 1], [1, 9]])}
    counts.add("A", {"group_confusion": a})
    counts.add("B", {"group_confusion": b})
    record = counts.record(("0", "1"), max_gap=0.1)["fairness"]
    assert record["counts"] == {"x": [[17, 3], [2, 18]], "y": [[5, 5], [5, 5]]}
    assert record["federated"]["groups"]["x"]["accuracy"] == pytest.approx(35 / 40)
    assert record["sites"]["B"]["groups"] == {"x": record["sites"]["B"]["groups"]["x"]}
    assert record["alert"].startswith("equalized-odds difference 0.4") and "max-fairness-gap 0.1" in record["alert"]
    assert GroupCounts().record(("0", "1"), 0.1) == {}
    assert counts.record(("0", "1"), max_gap=0.0)["fairness"]["alert"] is None


def test_reweighting_scales_clipped_gradients_by_at_most_one():
    labels = np.array([0] * 40 + [1] * 10 + [0] * 10 + [1] * 10)
    groups = ["big"] * 50 + ["small"] * 20
    w = balancing_weights(labels, groups)
    assert w.max() == 1.0 and w.min() == pytest.approx(10 / 40)  # median cell 10, the big cell 40
    assert (w[:40] == w[0]).all() and (w[40:] == 1.0).all()
    # Per-example gradients of norms 5 and 0.5, C = 1: clipped, then weighted. A weight above 1
    # (a bug, or a crafted weights file) still leaves no record above C: the bound DP needs.
    p = torch.nn.Parameter(torch.zeros(3))
    p.grad_sample = torch.tensor([[3.0, 4.0, 0.0], [0.3, 0.4, 0.0]])
    _weight_after_clipping([p], np.array([0.5, 7.0]), max_grad_norm=1.0)
    norms = p.grad_sample.norm(dim=1)
    assert norms.tolist() == pytest.approx([0.5, 0.5], abs=1e-5)


def grouped_file(path, n: int = 400, seed: int = 3, rare: int = 4):
    """Demo messages with a group column: 'north' and 'south', and `rare` records of 'rare_ward'."""
    rows = make_messages(n, seed)
    rng = random.Random(seed)
    lines = ["text\tlabel\tward"]
    for i, (text, label) in enumerate(rows):
        group = "rare_ward" if i < rare else rng.choice(["north", "south"])
        lines.append(f"{text}\t{label}\t{group}")
    path.write_text("\n".join(lines) + "\n")
    return path


def test_site_counts_by_group_match_its_own_predictions(tiny_model, tmp_path):
    """A virtual site's evaluate reply, checked and summed by the coordinator's code, gives the
    metrics fairlearn computes on the site's own per-record predictions."""
    data = grouped_file(tmp_path / "grouped.tsv", rare=12)
    run_config = {"model": str(tiny_model), "labels": LABELS, "sim-data": str(data), "run-dir": str(tmp_path / "run"),
                  "sim-group-column": "ward", "eval-fraction": 0.5}
    model = RunModel(run_config)
    counts, true, pred, groups = GroupCounts(), [], [], []
    for pid in range(2):
        site = SiteRound("1", {"partition-id": pid, "num-partitions": 2}, model)
        loss, n, metrics = site.evaluate([np.concatenate([p.detach().numpy().ravel() for p in site.model.parameters()
                                                          if p.requires_grad])], {})
        clean, _ = evaluate_report(metrics, n, loss, 4)
        counts.add(f"sim-{pid}", clean)
        logits = predict_logits(site.model, site.eval_data, site.pad_id)
        reported = merged_groups(site.site.eval.groups, 10)
        keep = [i for i, g in enumerate(reported) if g is not None]
        true += site.eval_data.labels[keep].tolist()
        pred += logits.argmax(axis=1)[keep].tolist()
        groups += [reported[i] for i in keep]
    fed = counts.record(tuple(LABELS.split(",")), 0.0)["fairness"]["federated"]
    direct = MetricFrame(metrics=accuracy_score, y_true=np.array(true), y_pred=np.array(pred),
                         sensitive_features=np.array(groups, dtype=object)).by_group
    assert set(fed["groups"]) == set(direct.index)
    for group, acc in direct.items():
        assert fed["groups"][group]["accuracy"] == pytest.approx(acc)


def test_fl_sim_reports_groups_alerts_and_never_names_a_small_group(tiny_model, tmp_path):
    data = grouped_file(tmp_path / "grouped.tsv")
    run_dir = tmp_path / "run"
    proc = run_cli("fl-sim", "--sites", 2, "--data", data, "--model", tiny_model, "--rounds", 1, "--no-dp",
                   "--head-init", "none",  # round 1 trains, reweighted
                   "--group-column", "ward", "--fairness-reweight", "--max-fairness-gap", 0.001,
                   "--batch-size", 16, "--eval-fraction", 0.3, "--run-dir", run_dir)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "worst group" in proc.stdout and "FAIRNESS ALERT: " in proc.stdout
    last = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()][-1]
    fed = last["fairness"]["federated"]
    assert set(fed["groups"]) <= {"north", "south"} and set(last["fairness"]["sites"]) == {"sim-0", "sim-1"}
    assert sum(g["records"] for g in fed["groups"].values()) <= last["eval_examples"]
    card = (run_dir / "MODEL_CARD.md").read_text()
    assert "## Fairness by group" in card and "ALERT: " in card and "docs/explanations.md" in card
    assert "== fairness by group (federation" in (run_dir / "report.txt").read_text()
    assert "<h2>Fairness by group (latest round)</h2>" in (run_dir / "report.html").read_text()
    status = run_cli("fl-server", "status", run_dir)
    assert "fairness in round 1: worst group " in status.stdout and "FAIRNESS ALERT" in status.stdout
    # The 4 records of the rare ward are nowhere in what the coordinator keeps or shows.
    for path in [p for p in run_dir.rglob("*") if p.is_file() and p.suffix in (".json", ".jsonl", ".txt", ".md",
                                                                               ".html", ".log")]:
        assert "rare_ward" not in path.read_text(errors="ignore"), path
    assert "rare_ward" not in proc.stdout + proc.stderr

    # DP's cost by group: the same sites with DP, then each group's accuracy in both runs side by side.
    dp_dir = tmp_path / "run-dp"
    proc = run_cli("fl-sim", "--sites", 2, "--data", data, "--model", tiny_model, "--rounds", 1, "--group-column", "ward",
                   "--eval-fraction", 0.3, "--run-dir", dp_dir)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    proc = run_cli("fl-server", "report", dp_dir, "--compare", run_dir)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    card = (dp_dir / "MODEL_CARD.md").read_text()
    assert "## Accuracy by group against run" in card and "this run (DP at every site)" in card
    assert "run (no DP)" in card and "| north |" in card and "## Differential privacy, per site" in card
    assert '<table id="compare">' in (dp_dir / "report.html").read_text()
    assert_clean_error(run_cli("fl-server", "report", dp_dir, "--compare", tmp_path), "not a FedSilo run directory")


def test_a_bad_group_column_is_one_clear_line(tmp_path, tiny_model):
    data = grouped_file(tmp_path / "grouped.tsv")
    assert_clean_error(run_cli("fl-sim", "--sites", 2, "--data", data, "--model", tiny_model, "--group-column", "region"),
                       "missing column 'region'")
    assert_clean_error(run_cli("fl-sim", "--sites", 2, "--data", data, "--model", tiny_model, "--fairness-reweight"),
                       "needs group-column")
    data.write_text(data.read_text().replace("\tnorth\n", "\t\n", 1))
    assert_clean_error(run_cli("fl-sim", "--sites", 2, "--data", data, "--model", tiny_model, "--group-column", "ward"),
                       "is empty or not a plain name")
