"""How DP's cost in accuracy changes as each site holds more records.

The utility benchmark's target arm (SST-2, 4 sites, Dirichlet alpha = 0.5, DP-SGD at epsilon 8 per
site) trains on a 4,000-example subsample, about 900 records per site: a compute choice. DP-SGD's
price shrinks with the records it protects - for the same epsilon, epochs and expected batch, a
larger site samples a smaller share per step and needs a smaller noise multiplier - so the gap to
the centralised ceiling depends on how much data a site has. This benchmark measures that: for each
subsample size and partition, the centralised non-private ceiling, the federated non-private arm
(what federation and skew cost without DP) and the federated DP arm, with the utility benchmark's
own code, settings and test set (SST-2 dev; nothing is chosen from these scores). Under Dirichlet
skew each size draws its own partition (site sizes and label mixes change with n), so IID is the
partition that shows DP's cost against records per site alone.

    python bench/dp_data_size.py --profile quick|full [--out DIR] [--seeds 42] [--sizes 4000,16000]
                                 [--partitions iid] [--arms centralised,federated,dp]

With --seeds / --sizes / --partitions / --arms only those runs happen; the rows an earlier run of
the same profile left in DIR/dp_data_size.json are kept, each naming the commit and run that
measured it, so a gap between arms from different runs is marked as such.
"""

from __future__ import annotations

import statistics
import tempfile
from pathlib import Path

from harness import bench_args, bench_header, earlier_rows, log, out_dir, subset, use_device, write_result
from utility import (ALPHA, DATA, DATASETS, MAX_LENGTH, SITES, measure_arm, read_tsv, site_training_union,
                     stratified_subsample, write_tsv)

PARTITIONS = ["dirichlet", "iid"]  # the target's skew; IID shows DP's cost with equal, unskewed sites
ARMS = {"centralised": "centralised", "federated": "federated", "dp": "federated DP"}  # --arms name: row's arm
PROFILES = {
    "quick": {"sizes": [200, 400], "seeds": [42], "partitions": ["dirichlet"], "rounds": 1, "local_epochs": 1,
              "batch_size": 16, "epsilon": 8.0},
    # 4,000 is the utility benchmark's size; 16,000 gives each site about 3,600 records (x4 compute)
    "full": {"sizes": [4000, 8000, 16000], "seeds": [42, 43, 44], "partitions": PARTITIONS, "rounds": 5,
             "local_epochs": 1, "batch_size": 64, "epsilon": 8.0},
}


def summarise(rows: list[dict]) -> list[dict]:
    """Per (partition, size): mean ceiling, federated and DP accuracy, and DP's gap to the ceiling
    paired by seed."""
    out = []
    for part, size in sorted({(r["partition"], r["subsample"]) for r in rows}):
        ok = [r for r in rows if (r["partition"], r["subsample"]) == (part, size) and r.get("status") == "ok"]
        by_arm = {arm: {r["seed"]: r for r in ok if r["arm"] == arm} for arm in ARMS.values()}
        ceiling, fed, dp = by_arm["centralised"], by_arm["federated"], by_arm["federated DP"]
        paired = sorted(set(ceiling) & set(dp))
        if not paired:
            continue
        gaps = [100 * (ceiling[s]["accuracy"] - dp[s]["accuracy"]) for s in paired]
        fed_paired = [s for s in paired if s in fed]
        out.append({"partition": part, "subsample": size, "seeds": paired,
                    "records_per_site": round(statistics.fmean(dp[s]["train_examples"] / SITES for s in paired)),
                    "ceiling_accuracy": round(statistics.fmean(ceiling[s]["accuracy"] for s in paired), 4),
                    "dp_accuracy": round(statistics.fmean(dp[s]["accuracy"] for s in paired), 4),
                    "gap_points": round(statistics.fmean(gaps), 2),
                    "gap_points_std": round(statistics.stdev(gaps), 2) if len(gaps) > 1 else None,
                    # the same run for both arms, or not: then the gap compares two runs
                    "gap_one_run": all(ceiling[s]["run"] == dp[s]["run"] for s in paired),
                    "federated_accuracy": round(statistics.fmean(fed[s]["accuracy"] for s in fed_paired), 4)
                    if fed_paired and len(fed_paired) == len(paired) else None,
                    "federated_gap_one_run": all(ceiling[s]["run"] == fed[s]["run"] for s in fed_paired)
                    if fed_paired else None})
    return out


def main() -> int:
    parser = bench_args(__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="", help="comma-separated subset of the profile's seeds")
    parser.add_argument("--sizes", default="", help="comma-separated subset of the profile's subsample sizes")
    parser.add_argument("--partitions", default="", help="comma-separated subset of the profile's partitions")
    parser.add_argument("--arms", default="", help=f"comma-separated subset of {', '.join(ARMS)}")
    args = use_device(parser.parse_args())
    prof = PROFILES[args.profile]
    seeds = [int(s) for s in subset(args.seeds, prof["seeds"], "seeds", parser)]
    sizes = [int(s) for s in subset(args.sizes, [str(n) for n in prof["sizes"]], "sizes", parser)]
    parts = subset(args.partitions, prof["partitions"], "partitions", parser)
    arms = [ARMS[a] for a in subset(args.arms, list(ARMS), "arms", parser)]
    header = bench_header("dp_data_size", args.profile, seeds)
    run = {"commit": header["commit"], "started_utc": header["started_utc"]}
    texts, labels = read_tsv(DATA / DATASETS["sst2"][0])
    test = read_tsv(DATA / DATASETS["sst2"][1])
    label_set = tuple(sorted(set(labels)))
    rows, _ = earlier_rows(out_dir(args) / "dp_data_size.json", args.profile,
                           lambda r: (r["seed"], r["subsample"], r.get("partition", "dirichlet"), r["arm"]),
                           {(s, n, q, a) for s in seeds for n in sizes for q in parts for a in arms})
    rows = [{"partition": "dirichlet", **r} for r in rows]  # the first rows ran before IID was added
    epochs = prof["rounds"] * prof["local_epochs"]

    def save() -> Path:
        return write_result(out_dir(args), "dp_data_size", {
            "header": header,
            "setup": {"model": "all-MiniLM-L6-v2 (embedded), LoRA r=8 on query,value + classification head",
                      "dataset": "sst2", "test_file": str(DATA / DATASETS["sst2"][1]), "sites": SITES,
                      "partitions": prof["partitions"], "dirichlet_alpha": ALPHA, "epsilon_per_site": prof["epsilon"],
                      "rounds": prof["rounds"], "local_epochs": prof["local_epochs"], "centralised_epochs": epochs,
                      "batch_size": prof["batch_size"], "max_length": MAX_LENGTH,
                      "subsampling": "seeded stratified subsample of SST-2 train per (seed, size), as in the utility "
                                     "benchmark; the ceiling trains on exactly the union of the sites' training splits",
                      "dp": "DP-SGD at every site, epsilon per site over the whole run, delta = min(1e-5, 0.1/n), "
                            "clipping 1.0, PRV accountant (FedSilo defaults)"},
            "rows": rows, "summary": summarise(rows)})

    with tempfile.TemporaryDirectory(prefix="bench-dp-data-size-") as work:
        work = Path(work)
        for seed in seeds:
            for size in sizes:
                keep = stratified_subsample(labels, size, seed)
                sub_texts, sub_labels = [texts[i] for i in keep], [labels[i] for i in keep]
                data_file = write_tsv(work / f"sst2-{size}-seed{seed}.tsv", sub_texts, sub_labels)
                for part, arm in ((q, a) for q in parts for a in arms):
                    union = site_training_union(sub_labels, label_set, part, seed)
                    base = {"seed": seed, "subsample": size, "partition": part, "run": run}
                    eps = prof["epsilon"] if arm == "federated DP" else None
                    log(f"dp_data_size: seed {seed}, subsample {size}, {part}: {arm}"
                        + (f" epsilon {eps:g}" if eps else f", {len(union)} examples x {epochs} epochs"
                           if arm == "centralised" else ""))
                    row = {**base, "arm": arm, "epsilon": eps,
                           **measure_arm(arm, eps, sub_texts, sub_labels, union, data_file, label_set, part, seed,
                                         prof, work, test, name=f"{part}-{'dp' if eps else 'nodp'}-{size}-seed{seed}")}
                    log(f"dp_data_size:   -> {row.get('accuracy')} acc ({row['status']}"
                        + (f", noise multiplier {row.get('noise_multiplier')}" if eps else "") + ")")
                    rows.append(row)
                save()
    path = save()
    log(f"dp_data_size: wrote {path}")
    return 0 if all(r.get("status") == "ok" for r in rows if r["run"] == run) else 1


if __name__ == "__main__":
    raise SystemExit(main())
