"""Fairness on HateCheck: per-group accuracy and gaps without DP, with DP at epsilon 8, and with
the site's mitigation (group-balanced reweighting), 4 virtual sites.

HateCheck's training file is split over 4 sites (`fl-sim`, IID, each site holding out 20% for the
federation's own per-round evaluation); every arm is FedSilo's default recipe (head from released
statistics, then LoRA; bench/utility.py) with `--group-column group`, so the sites also report
counts by group every round. The final model of each run is then scored on HateCheck's test file
(split by template: no test sentence was trained on), per target group, with the same code the
coordinator uses (common/fairness.py: fairlearn's MetricFrame). Arms:
  * federated, no DP                      * federated, no DP, reweighted
  * federated DP (epsilon 8 per site)     * federated DP (epsilon 8), reweighted
so the cost of DP by group (DP against no DP) and the mitigation's effect (reweighted against
not) are both measured side by side, seed by seed, in one run.

    python bench/fairness.py --profile quick|full [--out DIR] [--seeds 42,43]
"""

from __future__ import annotations

import json
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np

from harness import (bench_args, bench_header, device_flags, earlier_rows, log, out_dir, run_measured, subset, tail,
                     use_device, write_result)

BIN = Path(sys.executable).parent
DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "hatecheck"
# Each site holds out 20% (about 150 records in the full profile, some 19 per group): with 10%
# most groups would fall under the sites' min-group-size and only "other" would be reported.
SITES, MAX_LENGTH, EVAL_FRACTION, EPSILON = 4, 64, 0.2, 8.0
ARMS = {  # name: (epsilon or None, reweighted)
    "no DP": (None, False), "no DP, reweighted": (None, True),
    "DP": (EPSILON, False), "DP, reweighted": (EPSILON, True),
}
PROFILES = {
    "quick": {"train_examples": 600, "seeds": [42], "rounds": 2, "local_epochs": 1, "batch_size": 16,
              "arms": ["no DP", "DP, reweighted"]},
    "full": {"train_examples": None, "seeds": [42, 43, 44], "rounds": 4, "local_epochs": 1, "batch_size": 64,
             "arms": list(ARMS)},
}
FL_SIM_TIMEOUT = 3 * 3600.0


def read(path: Path):
    from common.data import read_records

    return read_records(path, group_column="group")


def subsample(records, n: int | None, seed: int):
    if n is None or n >= len(records):
        return records
    return records.subset(np.sort(np.random.default_rng(seed).permutation(len(records))[:n]))


def write(path: Path, records) -> Path:
    path.write_text("text\tlabel\tgroup\n" + "".join(f"{t}\t{lab}\t{g}\n" for t, lab, g in
                                                      zip(records.texts, records.labels, records.groups)),
                    encoding="utf-8")
    return path


def test_scores(run_dir: Path, test, label_set: tuple[str, ...]) -> dict:
    """The final model on the test file: overall accuracy and macro-F1, and per group (every
    group of the test file is reported: it is the benchmark's own data, no site's)."""
    from client.train import predict_logits
    from common.batching import encode
    from common.fairness import group_confusions, group_report
    from server.predict import load_final_model
    from server.report import report_dict

    tokenizer, model = load_final_model(run_dir)
    y = np.array([label_set.index(x) for x in test.labels])
    pred = predict_logits(model, encode(tokenizer, test.texts, MAX_LENGTH, y), tokenizer.pad_token_id or 0).argmax(1)
    confusion = np.zeros((len(label_set),) * 2, dtype=np.int64)
    np.add.at(confusion, (y, pred), 1)
    overall = report_dict(confusion, label_set)
    groups = group_report(group_confusions(y, pred, test.groups, len(label_set), min_size=1), label_set)
    return {"accuracy": round(float(overall["accuracy"]), 4),
            "macro_f1": round(float(overall["macro avg"]["f1-score"]), 4),
            "group_accuracy": {g: round(m["accuracy"], 4) for g, m in groups["groups"].items()},
            "gaps": {k: (round(v, 4) if isinstance(v, float) else v) for k, v in groups["gaps"].items()}}


def run_arm(arm: str, data_file: Path, label_set, seed: int, prof: dict, work: Path, test) -> dict:
    epsilon, reweighted = ARMS[arm]
    name = f"{arm.replace(' ', '_').replace(',', '')}-seed{seed}"
    run_dir = work / f"run-{name}"
    cmd = [str(BIN / "fl-sim"), "--sites", str(SITES), "--data", str(data_file), "--labels", ",".join(label_set),
           "--rounds", str(prof["rounds"]), "--local-epochs", str(prof["local_epochs"]),
           "--batch-size", str(prof["batch_size"]), "--max-length", str(MAX_LENGTH), "--seed", str(seed),
           "--eval-fraction", str(EVAL_FRACTION), "--no-redact", "--group-column", "group",
           "--run-dir", str(run_dir), *device_flags()]
    cmd += ["--no-dp"] if epsilon is None else ["--target-epsilon", str(epsilon), "--privacy-budget", str(epsilon)]
    cmd += ["--fairness-reweight"] if reweighted else []
    measured = run_measured(cmd, FL_SIM_TIMEOUT, work / f"fl-sim-{name}.log", every=2.0)
    if measured["returncode"] != 0 or not (run_dir / "summary.json").exists():
        return {"status": "timed out" if measured["timed_out"] else "failed", "log_tail": tail(work / f"fl-sim-{name}.log")}
    rounds = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    site_gaps = ((rounds[-1].get("fairness") or {}).get("federated") or {}).get("gaps")
    result = {"status": "ok", "wall_seconds": measured["wall_seconds"],
              # what the coordinator saw in the last round, from the sites' counts by group
              "site_eval_gaps": site_gaps,
              **test_scores(run_dir, test, label_set)}
    fits = [f for r in rounds for f in r.get("fit", {}).values() if f.get("dp")]
    if fits:
        result["epsilon_spent_max"] = round(max(f["epsilon"] for f in fits), 3)
    shutil.rmtree(run_dir)
    return result


def summarise(rows: list[dict]) -> list[dict]:
    """Mean over seeds, by arm: accuracy, the gaps, and each group's accuracy."""
    out = []
    for arm in ARMS:
        ok = [r for r in rows if r["arm"] == arm and r["status"] == "ok"]
        if not ok:
            continue
        mean = lambda xs: round(statistics.fmean(xs), 4)  # noqa: E731
        groups = sorted({g for r in ok for g in r["group_accuracy"]})
        out.append({"arm": arm, "seeds": len(ok), "accuracy": mean([r["accuracy"] for r in ok]),
                    "macro_f1": mean([r["macro_f1"] for r in ok]),
                    **{k: mean([r["gaps"][k] for r in ok]) for k in
                       ("equalized_odds_difference", "demographic_parity_difference", "worst_group_accuracy",
                        "accuracy_difference")},
                    "group_accuracy": {g: mean([r["group_accuracy"][g] for r in ok if g in r["group_accuracy"]])
                                       for g in groups}})
    return out


def main() -> int:
    parser = bench_args(__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="", help="comma-separated subset of the profile's seeds")
    args = use_device(parser.parse_args())
    prof = PROFILES[args.profile]
    seeds = [int(s) for s in subset(args.seeds, prof["seeds"], "seeds", parser)]
    header = bench_header("fairness", args.profile, seeds)
    rows, _ = earlier_rows(out_dir(args) / "fairness.json", args.profile, lambda r: r["seed"], set(seeds))
    train, test = read(DATA / "train.tsv"), read(DATA / "test.tsv")
    label_set = tuple(sorted(set(train.labels)))

    def save() -> Path:
        return write_result(out_dir(args), "fairness", {
            "header": header, "setup": {"data": "hatecheck (train.tsv split over the sites, test.tsv scored)",
                                        "sites": SITES, "epsilon": EPSILON, "profile": prof,
                                        "test_groups": {g: test.groups.count(g) for g in sorted(set(test.groups))}},
            "rows": rows, "summary": summarise(rows)})

    with tempfile.TemporaryDirectory(prefix="fairness-") as tmp:
        work = Path(tmp)
        for seed in seeds:
            data_file = write(work / f"train-{seed}.tsv", subsample(train, prof["train_examples"], seed))
            for arm in prof["arms"]:
                log(f"fairness: seed {seed}, {arm} ...")
                row = {"arm": arm, "seed": seed, **run_arm(arm, data_file, label_set, seed, prof, work, test)}
                rows.append(row)
                log(f"fairness: seed {seed}, {arm}: " + (
                    f"accuracy {row['accuracy']:.3f}, worst group {row['gaps']['worst_group']} "
                    f"{row['gaps']['worst_group_accuracy']:.3f}, EO gap {row['gaps']['equalized_odds_difference']:.3f}"
                    if row["status"] == "ok" else row["status"]))
                save()
    path = save()
    log(f"fairness: wrote {path}")
    return 0 if all(r["status"] == "ok" for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
