"""Small sites: three sites of 180 records each on a real 3-class task, with FedSilo's defaults.

Many real sites hold a few hundred labelled records. Before head-init stats, three sites of 160
training reviews each ended every round answering the majority class (macro-F1 0.25) with DP
and without. This benchmark keeps that situation and measures it end to end:

  * data: a seeded random sample of 540 rows of Financial PhraseBank's training file (negative /
    neutral / positive), over 3 IID virtual sites (each holds out 20%, FedSilo's default, so 144
    records a site train);
  * arms, each one `fl-sim` run at epsilon 8 per site: FedSilo's defaults (3 rounds, head from
    statistics in round 1, DP-SGD in rounds 2-3) and the recipe before it (`--head-init none`:
    DP-SGD from a random head in every round); seeds 42, 43, 44 (`quick`: 42, defaults only);
  * scored on the dataset's test file (911 sentences no arm trains on): accuracy and macro-F1,
    next to what always answering the majority class scores.

    python bench/small_sites.py --profile quick|full [--out DIR]
"""

from __future__ import annotations

import random
import statistics
import tempfile
from pathlib import Path

import numpy as np

from harness import bench_args, bench_header, device_flags, log, out_dir, use_device, write_result
from utility import BIN, DATA, FL_SIM_TIMEOUT, read_tsv, scores, write_tsv

LABELS = ("negative", "neutral", "positive")
SITES, RECORDS = 3, 540
PROFILES = {"quick": {"seeds": [42], "arms": ["defaults"]},
            "full": {"seeds": [42, 43, 44], "arms": ["defaults", "random head (--head-init none)"]}}
FLAGS = {"defaults": (), "random head (--head-init none)": ("--head-init", "none")}


def run_arm(arm: str, data: Path, seed: int, work: Path, test) -> dict:
    from harness import run_measured, tail
    from server.predict import load_final_model

    run_dir = work / f"run-{seed}-{len(FLAGS[arm])}"
    cmd = [str(BIN / "fl-sim"), "--sites", str(SITES), "--data", str(data), "--labels", ",".join(LABELS),
           "--seed", str(seed), "--target-epsilon", "8", "--privacy-budget", "8", "--run-dir", str(run_dir),
           *FLAGS[arm], *device_flags()]
    log_path = work / f"{run_dir.name}.log"
    measured = run_measured(cmd, FL_SIM_TIMEOUT, log_path, every=2.0)
    if measured["returncode"] != 0:
        return {"status": "failed", "wall_seconds": measured["wall_seconds"], "log_tail": tail(log_path)}
    tokenizer, model = load_final_model(run_dir)
    return {"status": "ok", "wall_seconds": measured["wall_seconds"], "rounds": 3, "flags": " ".join(FLAGS[arm]),
            **scores(model, tokenizer, *test, LABELS)}


def main() -> int:
    args = use_device(bench_args(__doc__.splitlines()[0]).parse_args())
    prof = PROFILES[args.profile]
    header = bench_header("small_sites", args.profile, prof["seeds"])
    texts, labels = read_tsv(DATA / "financial_phrasebank" / "train.tsv")
    test = read_tsv(DATA / "financial_phrasebank" / "test.tsv")
    y = np.array([LABELS.index(x) for x in test[1]])
    p = np.bincount(y).max() / len(y)
    majority = {"accuracy": round(p, 4), "macro_f1": round(2 * p / (1 + p) / len(LABELS), 4)}
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-small-sites-") as work:
        work = Path(work)
        for seed in prof["seeds"]:
            keep = random.Random(seed).sample(range(len(texts)), RECORDS)
            data = write_tsv(work / f"fpb-{seed}.tsv", [texts[i] for i in keep], [labels[i] for i in keep])
            for arm in prof["arms"]:
                log(f"small_sites: seed {seed}: {arm}")
                row = {"seed": seed, "arm": arm, "epsilon": 8.0, **run_arm(arm, data, seed, work, test)}
                log(f"small_sites:   -> {row.get('accuracy')} acc, {row.get('macro_f1')} macro-F1 ({row['status']})")
                rows.append(row)
    summary = [{"arm": arm, "epsilon": 8.0, "seeds": [r["seed"] for r in ok],
                **{m: {"mean": round(statistics.fmean(r[m] for r in ok), 4),
                       "std": round(statistics.stdev(r[m] for r in ok), 4) if len(ok) > 1 else None}
                   for m in ("accuracy", "macro_f1")}}
               for arm in prof["arms"] if (ok := [r for r in rows if r["arm"] == arm and r["status"] == "ok"])]
    path = write_result(out_dir(args), "small_sites", {
        "header": header, "setup": {"dataset": "financial_phrasebank", "records": RECORDS, "sites": SITES,
                                    "training_records_per_site": 144, "test_rows": len(y),
                                    "majority_class": majority},
        "rows": rows, "summary": summary})
    log(f"small_sites: wrote {path}")
    return 0 if all(r["status"] == "ok" for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
