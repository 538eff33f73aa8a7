"""Choosing DP-SGD's batch size and learning rate without looking at the test set.

The utility benchmark's DP arms train with FedSilo's defaults. DP-SGD's noise per step is
sigma * C / B: a larger expected batch B costs a somewhat larger noise multiplier sigma for the same
epsilon, but divides the noise by B, at the price of fewer steps (the example passes are fixed).
This benchmark measures that trade on the utility benchmark's target setting (SST-2, 4 sites,
Dirichlet alpha = 0.5, epsilon 8 per site, the same subsample, rounds and example passes), one
`fl-sim` run per configuration, and scores each on a **validation set**: a seeded stratified sample
of SST-2 training rows outside the subsample, the size of the dev set. SST-2 dev, the utility
benchmark's test set, is never read here, so the defaults chosen from this table are not fitted to it.

    python bench/dp_tuning.py --profile quick|full [--out DIR] [--seeds 43,44] [--configs 64:0.003:0.03,...]

A configuration may also set the server's step (server-learning-rate, server-momentum: FedAvgM),
which works on the aggregate alone and so leaves every site's DP guarantee as it is.

With --seeds / --configs only those (seed, configuration) pairs run; the rows an earlier run of
the same profile left in DIR/dp_tuning.json are kept, each naming the commit and run that measured it.
"""

from __future__ import annotations

import statistics
import tempfile
from pathlib import Path

import numpy as np

from harness import bench_args, bench_header, earlier_rows, log, out_dir, subset, use_device, write_result
from common.config import OPTIONS_BY_KEY  # noqa: E402 - harness puts the repository on sys.path
from utility import ALPHA, DATA, DATASETS, MAX_LENGTH, SITES, federated, read_tsv, stratified_subsample, write_tsv

# (expected batch size, learning rate of the LoRA adapters, learning rate of the head[, LoRA rank,
# LoRA target modules[, server learning rate, server momentum]]); the rest default to FedSilo's own
TAIL_KEYS = ("lora-r", "lora-targets", "server-learning-rate", "server-momentum")
TAIL_DEFAULT = tuple(OPTIONS_BY_KEY[key].default for key in TAIL_KEYS)
PROFILES = {
    "quick": {"train_examples": 400, "validation_examples": 200, "seeds": [42], "rounds": 1, "local_epochs": 1,
              "epsilon": 8.0, "configs": [(32, 3e-3, 3e-2), (64, 6e-3, 3e-2)]},
    "full": {"train_examples": 4000, "validation_examples": 872, "seeds": [42, 43, 44], "rounds": 5, "local_epochs": 1,
             "epsilon": 8.0,
             "configs": [(64, 3e-3, 3e-2), (128, 3e-3, 3e-2), (128, 6e-3, 3e-2), (256, 6e-3, 3e-2),
                         # fewer trainable values, so less noise per useful coordinate
                         (64, 3e-3, 3e-2, 4, "value"),
                         (256, 1e-2, 5e-2),
                         # server momentum: averages the sites' independent noise over rounds
                         (64, 3e-3, 3e-2, 8, "query,value", 1.0, 0.5),
                         (64, 3e-3, 3e-2, 8, "query,value", 1.0, 0.9),
                         (64, 3e-3, 3e-2, 8, "query,value", 2.0, 0.0)]},
}
PARTITION = "dirichlet"


def validation_indices(labels: list[str], used: np.ndarray, n: int, seed: int) -> np.ndarray:
    """A seeded stratified sample of n training rows that no site trains on."""
    rest = np.setdiff1d(np.arange(len(labels)), used)
    return rest[stratified_subsample([labels[i] for i in rest], n, seed + 1000)]


def full_config(config: tuple) -> tuple:
    return tuple(config) + TAIL_DEFAULT[len(config) - 3:]


def row_config(row: dict) -> tuple:
    """A row's configuration; rows from before an option was varied ran at its default."""
    return (row["batch_size"], row["learning_rate"], row["head_learning_rate"],
            *(row.get(key.replace("-", "_"), default) for key, default in zip(TAIL_KEYS, TAIL_DEFAULT)))


def config_name(batch: int, lr: float, head_lr: float, lora_r: int, lora_targets: str,
                server_lr: float, server_momentum: float) -> str:
    lora = "" if (lora_r, lora_targets) == TAIL_DEFAULT[:2] else f":r{lora_r}:{lora_targets.replace(',', '+')}"
    server = "" if (server_lr, server_momentum) == TAIL_DEFAULT[2:] else f":s{server_lr:g}:m{server_momentum:g}"
    return f"{batch}:{lr:g}:{head_lr:g}{lora}{server}"


def summarise(rows: list[dict]) -> list[dict]:
    """Mean validation accuracy of each configuration over the seeds it ran with."""
    out = []
    for key in dict.fromkeys(map(row_config, rows)):
        accs = {r["seed"]: r["accuracy"] for r in rows if r.get("status") == "ok" and row_config(r) == key}
        if accs:
            out.append({"batch_size": key[0], "learning_rate": key[1], "head_learning_rate": key[2],
                        "lora_r": key[3], "lora_targets": key[4],
                        "server_learning_rate": key[5], "server_momentum": key[6],
                        "seeds": sorted(accs), "accuracy_mean": round(statistics.fmean(accs.values()), 4),
                        "accuracy_std": round(statistics.stdev(accs.values()), 4) if len(accs) > 1 else None})
    return out


def main() -> int:
    parser = bench_args(__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="", help="comma-separated subset of the profile's seeds")
    parser.add_argument("--configs", default="", help="comma-separated subset of the profile's configurations, "
                                                       "each BATCH:LR:HEAD_LR[:rRANK:TARGET+TARGET]"
                                                       "[:sSERVER_LR:mSERVER_MOMENTUM]")
    args = use_device(parser.parse_args())
    prof = PROFILES[args.profile]
    seeds = [int(s) for s in subset(args.seeds, prof["seeds"], "seeds", parser)]
    by_name = {config_name(*full_config(c)): full_config(c) for c in prof["configs"]}
    configs = [by_name[n] for n in subset(args.configs, list(by_name), "configs", parser)]
    header = bench_header("dp_tuning", args.profile, seeds)
    run = {"commit": header["commit"], "started_utc": header["started_utc"]}
    texts, labels = read_tsv(DATA / DATASETS["sst2"][0])
    label_set = tuple(sorted(set(labels)))
    rows, _ = earlier_rows(out_dir(args) / "dp_tuning.json", args.profile,
                           lambda r: (r["seed"], config_name(*row_config(r))),
                           {(s, config_name(*c)) for s in seeds for c in configs})

    def save() -> Path:
        return write_result(out_dir(args), "dp_tuning", {
            "header": header,
            "setup": {"model": "all-MiniLM-L6-v2 (embedded), LoRA (rank and targets per configuration) + "
                               "classification head; server step per configuration (FedAvg by default)",
                      "dataset": "sst2", "sites": SITES, "partition": PARTITION, "dirichlet_alpha": ALPHA,
                      "epsilon_per_site": prof["epsilon"], "rounds": prof["rounds"],
                      "local_epochs": prof["local_epochs"], "train_examples": prof["train_examples"],
                      "max_length": MAX_LENGTH,
                      "scored_on": f"validation: {prof['validation_examples']} SST-2 training rows outside the "
                                   "subsample (seeded, stratified); SST-2 dev is not read",
                      "dp": "DP-SGD at every site, delta = min(1e-5, 0.1/n), clipping 1.0, PRV accountant"},
            "rows": rows, "summary": summarise(rows)})

    with tempfile.TemporaryDirectory(prefix="bench-dp-tuning-") as work:
        work = Path(work)
        for seed in seeds:
            keep = stratified_subsample(labels, prof["train_examples"], seed)
            val = validation_indices(labels, keep, prof["validation_examples"], seed)
            assert not set(val) & set(keep)
            validation = ([texts[i] for i in val], [labels[i] for i in val])
            data_file = write_tsv(work / f"sst2-seed{seed}.tsv", [texts[i] for i in keep], [labels[i] for i in keep])
            run_prof = {"rounds": prof["rounds"], "local_epochs": prof["local_epochs"]}
            for config in configs:
                batch, lr, head_lr, lora_r, lora_targets, server_lr, server_momentum = config
                name = config_name(*config)
                log(f"dp_tuning: seed {seed}: expected batch {batch}, lr {lr:g}, head lr {head_lr:g}, "
                    f"LoRA rank {lora_r} on {lora_targets}, server lr {server_lr:g}, momentum {server_momentum:g}")
                row = {"seed": seed, "batch_size": batch, "learning_rate": lr, "head_learning_rate": head_lr,
                       "lora_r": lora_r, "lora_targets": lora_targets, "server_learning_rate": server_lr,
                       "server_momentum": server_momentum, "run": run}
                try:
                    row.update(federated(data_file, label_set, PARTITION, prof["epsilon"], seed,
                                         {**run_prof, "batch_size": batch}, work, validation,
                                         extra=("--learning-rate", str(lr), "--head-learning-rate", str(head_lr),
                                                "--lora-r", str(lora_r), "--lora-targets", lora_targets,
                                                "--server-learning-rate", str(server_lr),
                                                "--server-momentum", str(server_momentum)),
                                         name=f"{name.replace(':', '_').replace('+', '_')}-seed{seed}"))
                except Exception as err:  # noqa: BLE001 - record it, go on with the other configurations
                    row.update(status="failed", error=f"{type(err).__name__}: {err}")
                log(f"dp_tuning:   -> validation accuracy {row.get('accuracy')}, noise multiplier "
                    f"{row.get('noise_multiplier')} ({row['status']}, {row.get('wall_seconds')} s)")
                rows.append(row)
                save()
    path = save()
    log(f"dp_tuning: wrote {path}")
    return 0 if all(r.get("status") == "ok" for r in rows if r["run"] == run) else 1


if __name__ == "__main__":
    raise SystemExit(main())
