"""The server's optimiser for a non-private federation that is under-trained: BANKING77, on validation rows.

The utility benchmark's non-private federation of BANKING77 (77 classes, 4 IID sites, 5 rounds)
ends far under its ceiling. The server's step reads only the aggregate, so a better one costs the
sites nothing: this benchmark runs `fl-sim` once per server optimiser (FedAvg, FedAvgM, FedAdam,
FedYogi: `--server-optimizer`, `--server-learning-rate`, `--server-momentum`) on the utility
benchmark's subsample and scores each final model on a **validation set**, a seeded stratified sample
of BANKING77 training rows outside the subsample. BANKING77's test file is never read here.

    python bench/server_optimizer.py --profile quick|full [--out DIR] [--seeds 42] [--configs adam:0.01,...]

Every configuration keeps FedSilo's defaults otherwise (head from statistics in round 1, LoRA after).
"""

from __future__ import annotations

import statistics
import tempfile
from pathlib import Path

from dp_tuning import validation_indices
from harness import bench_args, bench_header, earlier_rows, log, out_dir, subset, use_device, write_result
from utility import DATA, DATASETS, MAX_LENGTH, SITES, federated, read_tsv, stratified_subsample, write_tsv

# name: fl-sim options of the server's step
CONFIGS = {
    "sgd:1": ("--server-optimizer", "sgd"),
    "sgd:1:m0.9": ("--server-optimizer", "sgd", "--server-momentum", "0.9"),
    "adam:0.01": ("--server-optimizer", "adam", "--server-learning-rate", "0.01"),
    "adam:0.003": ("--server-optimizer", "adam", "--server-learning-rate", "0.003"),
    "yogi:0.01": ("--server-optimizer", "yogi", "--server-learning-rate", "0.01"),
}
PROFILES = {
    "quick": {"train_examples": 1000, "validation_examples": 500, "seeds": [42], "rounds": 5, "local_epochs": 1,
              "batch_size": 64, "configs": list(CONFIGS)},
    "full": {"train_examples": 2000, "validation_examples": 1000, "seeds": [42, 43, 44], "rounds": 5,
             "local_epochs": 1, "batch_size": 64, "configs": list(CONFIGS)},
}
DATASET, PARTITION = "banking77", "iid"


def summarise(rows: list[dict]) -> list[dict]:
    out = []
    for name in dict.fromkeys(r["config"] for r in rows):
        ok = [r for r in rows if r["config"] == name and r.get("status") == "ok"]
        if ok:
            accs = [r["accuracy"] for r in ok]
            out.append({"config": name, "flags": " ".join(CONFIGS.get(name, ())), "seeds": len(ok),
                        "accuracy_mean": round(statistics.fmean(accs), 4),
                        "accuracy_std": round(statistics.stdev(accs), 4) if len(accs) > 1 else None,
                        "round_accuracy": ok[0].get("round_accuracy")})
    return out


def main() -> int:
    parser = bench_args(__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="", help="comma-separated subset of the profile's seeds")
    parser.add_argument("--configs", default="", help=f"comma-separated subset of {', '.join(CONFIGS)}")
    args = use_device(parser.parse_args())
    prof = PROFILES[args.profile]
    seeds = [int(s) for s in subset(args.seeds, prof["seeds"], "seeds", parser)]
    configs = subset(args.configs, prof["configs"], "configs", parser)
    header = bench_header("server_optimizer", args.profile, seeds)
    run = {"commit": header["commit"], "started_utc": header["started_utc"]}
    texts, labels = read_tsv(DATA / DATASETS[DATASET][0])
    label_set = tuple(sorted(set(labels)))
    rows, _ = earlier_rows(out_dir(args) / "server_optimizer.json", args.profile, lambda r: (r["seed"], r["config"]),
                           {(s, c) for s in seeds for c in configs})

    def save() -> Path:
        return write_result(out_dir(args), "server_optimizer", {
            "header": header,
            "setup": {"dataset": DATASET, "sites": SITES, "partition": PARTITION, "dp": "none",
                      "rounds": prof["rounds"], "local_epochs": prof["local_epochs"], "batch_size": prof["batch_size"],
                      "train_examples": prof["train_examples"], "max_length": MAX_LENGTH,
                      "scored_on": f"validation: {prof['validation_examples']} BANKING77 training rows outside the "
                                   "subsample (seeded, stratified); the test file is not read"},
            "rows": rows, "summary": summarise(rows)})

    with tempfile.TemporaryDirectory(prefix="bench-server-opt-") as work:
        work = Path(work)
        for seed in seeds:
            keep = stratified_subsample(labels, prof["train_examples"], seed)
            val = validation_indices(labels, keep, prof["validation_examples"], seed)
            validation = ([texts[i] for i in val], [labels[i] for i in val])
            data_file = write_tsv(work / f"{DATASET}-seed{seed}.tsv", [texts[i] for i in keep],
                                  [labels[i] for i in keep])
            for name in configs:
                log(f"server_optimizer: seed {seed}, {name} ...")
                row = {"seed": seed, "config": name, "run": run}
                try:
                    row.update(federated(data_file, label_set, PARTITION, None, seed, prof, work, validation,
                                         extra=CONFIGS[name], name=f"{name.replace(':', '_')}-seed{seed}"))
                except Exception as err:  # noqa: BLE001 - record it, go on with the other configurations
                    row.update(status="failed", error=f"{type(err).__name__}: {err}")
                log(f"server_optimizer:   -> validation accuracy {row.get('accuracy')} ({row['status']}, "
                    f"{row.get('wall_seconds')} s)")
                rows.append(row)
                save()
    path = save()
    log(f"server_optimizer: wrote {path}")
    return 0 if all(r.get("status") == "ok" for r in rows if r["run"] == run) else 1


if __name__ == "__main__":
    raise SystemExit(main())
