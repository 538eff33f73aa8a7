"""The private least-squares head's constants, chosen on validation rows: prior scale, ridge floor, noise multiple.

common/head_stats.py builds a classification head from two sums over a site's records,
G = sum x~ x~^T and X = sum x~ onehot(y)^T, released once with Gaussian noise (std z * SENSITIVITY on
every value of [upper triangle of G, X]); the server's ridge pulls the head toward a zero-shot head
from the label names (`label_prior`). This benchmark simulates that release and measures, on
VALIDATION rows, how good the resulting head is for each choice of the module's constants:

  * for each dataset and seed, the training rows are utility.py's seeded stratified subsample of the
    training file (its 'full' sizes); they are split over 4 sites IID and Dirichlet(alpha=0.5) with
    FedSilo's own common/data.py `partition`, and each site keeps the training split that
    `split_train_eval` (eval fraction 0.1, same seed) leaves it - exactly what fl-sim's sites train on;
    plus, to judge the constants where data are scarce, a small-sites setting (full profile:
    financial_phrasebank only, reported as dataset 'financial_phrasebank_small'): a seeded stratified
    432-row subsample of the seed's subsample over 3 IID sites of 144 records, all of which train;
  * each site computes `sufficient_stats` of the frozen embedded all-MiniLM-L6-v2's mean-pooled
    embeddings (FedSilo's tokenizer and batching, max length 128) and adds Gaussian noise with
    std z_k * SENSITIVITY, z_k = gaussian_noise_for(epsilon, min(1e-5, 0.1 / n_k), "prv") (one
    release: q = 1, one step); the server takes the sum over sites divided by the total record
    count N, so a value of the mean statistics carries noise of std sqrt(sum z_k^2) * SENSITIVITY / N;
  * the head is `solve_head(upper_mean, cross_mean, ridge, prior)`, ridge = floor + c * 2 * std_of_mean
    * sqrt(d + 1) (ridge_for's formula), c (RIDGE_NOISE) in {1/16, 1/8, 1/4, 1/2, 1} (--noise-multiples)
    and the module's RIDGE_NOISE; prior: none (floor in {1e-4, 1e-3, 1e-2}) or, at floor RIDGE_FLOOR,
    server/head_init.py's `label_prior` of the label names' pooled embeddings ('_', '-' read as spaces)
    with its cosine part at scale a in {0, 3, 10, 30} (--prior-scales; a = 0: only the bias 1/C) and
    the module's PRIOR_SCALE; at epsilon 8 and 4 (the release alone) and without noise (ridge = floor);
    for reference also the nearest-class-prototype head (cosine to the class sums of the released X);
  * scored on up to 1,000 training-file rows outside the subsample (seeded, stratified; the small sites
    on their dataset's): accuracy, macro-F1, and the cross-entropy of softmax(scale * least-squares
    prediction) for several logit scales (LOGIT_SCALE: how confident DP-SGD's starting head should be).

`chosen`, per epsilon: the (a, c) that maximises the mean validation macro-F1 over the 4 datasets x
2 partitions, the best without a prior, the module's constants, and the best (a, c) when the small
sites count as a fifth dataset of equal weight.

Why validation rows: these constants become FedSilo defaults, and choosing them on a test file
would make every test-set number that uses the head optimistic. No test file is read here. The
noise is numpy's default_rng seeded per (seed, dataset, partition, epsilon) - a simulation, not the
product's noise - and the same draw serves every (prior, floor, c) of a setting (common random numbers).

    python bench/private_head.py --profile quick|full [--out DIR] [--noise-multiples LIST] [--prior-scales LIST]
"""

from __future__ import annotations

import math
import operator
import statistics
import time
import warnings

import numpy as np

from harness import bench_args, bench_header, log, out_dir, write_result
from utility import ALPHA, DATA, DATASETS, EVAL_FRACTION, MAX_LENGTH, SITES, read_tsv, stratified_subsample
from utility import PROFILES as UTILITY_PROFILES

PROFILES = {
    "quick": {"datasets": ["sst2"], "train_examples": {"sst2": 400}, "validation": 200, "seeds": [42],
              "partitions": ["iid", "dirichlet"], "small_sites": {"sst2": (3, 48)}},
    "full": {"datasets": UTILITY_PROFILES["full"]["datasets"],
             "train_examples": UTILITY_PROFILES["full"]["train_examples"], "validation": 1000,
             "seeds": UTILITY_PROFILES["full"]["seeds"], "partitions": UTILITY_PROFILES["full"]["partitions"],
             "small_sites": {"financial_phrasebank": (3, 144)}},  # (sites, training records per site), IID
}
EPSILONS = [None, 8.0, 4.0]
FLOORS = [1e-4, 1e-3, 1e-2]  # without a prior; with one, the module's RIDGE_FLOOR
NOISE_MULTIPLES = [0.0625, 0.125, 0.25, 0.5, 1.0]
PRIOR_SCALES = [0.0, 3.0, 10.0, 30.0]
LOGIT_SCALES = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0]
ACCOUNTANT = "prv"
THREADS = 1  # the machine is shared: one core for the encoder and for numpy
# Opacus's PRV accountant takes log(0) for q = 1 on its way (harmless, once per epsilon and delta).
warnings.filterwarnings("ignore", message="divide by zero encountered in log", category=RuntimeWarning)


def embed(encoder, tokenizer, texts: list[str], name: str):
    """Attention-masked mean of the last hidden states, length-sorted batches (FedSilo's batching)."""
    import torch

    from common.batching import collate, encode, length_sorted_batches

    data = encode(tokenizer, texts, MAX_LENGTH)
    out = np.zeros((len(data), encoder.config.hidden_size), dtype=np.float32)
    batches = length_sorted_batches(data, 64)
    started, done = time.monotonic(), 0
    with torch.no_grad():
        for i, idx in enumerate(batches):
            batch = collate(data, idx, tokenizer.pad_token_id or 0)
            hidden = encoder(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).float()
            out[idx] = ((hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)).numpy()
            done += len(idx)
            if (i + 1) % 25 == 0 or i + 1 == len(batches):
                rate = done / max(time.monotonic() - started, 1e-9)
                log(f"private_head: {name}: embedded {done}/{len(data)} texts ({rate:.0f}/s, longest batch so far "
                    f"{max(len(data.ids[j]) for j in idx)} tokens)")
    return out


def validation_rows(labels: list[str], keep: np.ndarray, cap: int, seed: int) -> np.ndarray:
    """Up to `cap` rows of the training file outside the subsample, seeded and stratified."""
    rest = np.setdiff1d(np.arange(len(labels)), keep)
    return rest[stratified_subsample([labels[i] for i in rest], cap, seed)]


def site_rows(y_sub: np.ndarray, scheme: str, seed: int) -> list[np.ndarray]:
    """Indices (into the subsample) each site trains on: fl-sim's partition + split_train_eval."""
    from common.data import partition, split_train_eval

    shares = partition(y_sub, SITES, scheme, ALPHA, seed)
    return [share[split_train_eval(len(share), EVAL_FRACTION, seed)[0]] for share in shares]


def scores(logits: np.ndarray, y: np.ndarray, label_set: tuple[str, ...]) -> dict:
    """Accuracy and macro-F1 through FedSilo's report code (as utility.py scores)."""
    from server.report import report_dict

    confusion = np.zeros((len(label_set), len(label_set)), dtype=np.int64)
    np.add.at(confusion, (y, logits.argmax(axis=1)), 1)
    rep = report_dict(confusion, label_set)
    return {"accuracy": round(float(rep["accuracy"]), 4), "macro_f1": round(float(rep["macro avg"]["f1-score"]), 4)}


def cross_entropy(raw: np.ndarray, y: np.ndarray) -> dict:
    """Mean validation cross-entropy of softmax(scale * raw) for each logit scale."""
    out = {}
    for scale in LOGIT_SCALES:
        z = scale * (raw - raw.max(axis=1, keepdims=True))
        logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
        out[f"{scale:g}"] = round(float(-logp[np.arange(len(y)), y].mean()), 4)
    return out


def release(stats: list[list[np.ndarray]], zs: list[float], rng: np.random.Generator, total: int):
    """Each site's sums plus its Gaussian noise, summed and divided by the total record count."""
    from common.head_stats import SENSITIVITY

    upper = sum(s[0] + (rng.normal(0.0, z * SENSITIVITY, s[0].shape) if z else 0.0) for s, z in zip(stats, zs))
    cross = sum(s[1] + (rng.normal(0.0, z * SENSITIVITY, s[1].shape) if z else 0.0) for s, z in zip(stats, zs))
    std = math.sqrt(sum(z * z for z in zs)) * SENSITIVITY / total
    return upper / total, cross / total, std


def scaled_priors(label_embeddings: np.ndarray, scales: list[float]) -> dict:
    """server/head_init.py's prior (`label_prior` of the label names' embeddings) with its cosine
    part at each scale a instead of PRIOR_SCALE (it is linear in it); the bias row stays 1/C."""
    from common.head_stats import PRIOR_SCALE, label_prior

    base = label_prior(label_embeddings)
    return {a: np.vstack([base[:-1] * (a / PRIOR_SCALE), base[-1:]]) for a in scales}


def evaluate_setting(emb, y_full, sites, val, label_set, eps, seed, key, base, multiples, priors) -> list[dict]:
    """All heads of one (dataset, seed, partition, epsilon): the (prior, floor, c) grid and the prototype head."""
    from common.head_stats import RIDGE_FLOOR, solve_head, sufficient_stats
    from common.privacy import gaussian_noise_for

    stats = [sufficient_stats(emb[rows], y_full[rows], len(label_set)) for rows in sites]
    sizes = [len(rows) for rows in sites]
    zs = [0.0 if eps is None else gaussian_noise_for(eps, min(1e-5, 0.1 / n), ACCOUNTANT) for n in sizes]
    rng = np.random.default_rng([seed, *key])
    upper, cross, std = release(stats, zs, rng, sum(sizes))
    e_val = emb[val] / np.linalg.norm(emb[val], axis=1, keepdims=True)
    y_val = y_full[val]
    common = {**base, "epsilon": eps, "noise_multiplier": round(max(zs), 4),
              "noise_std_of_mean": float(f"{std:.4g}")}
    cs = [None] if eps is None else multiples  # without noise the ridge is the floor alone
    grid = [(None, floor, c) for floor in FLOORS for c in cs] + [(a, RIDGE_FLOOR, c) for a in priors for c in cs]
    rows = []
    for a, floor, c in grid:
        ridge = floor + (c or 0.0) * 2.0 * std * math.sqrt(cross.shape[0])
        weight, bias = solve_head(upper, cross, ridge, None if a is None else priors[a], logit_scale=1.0)
        raw = e_val @ weight.T.astype(np.float64) + bias
        rows.append({**common, "head": "least_squares", "prior_scale": a, "floor": floor, "c": c,
                     "ridge": float(f"{ridge:.4g}"), **scores(raw, y_val, label_set),
                     "cross_entropy_by_logit_scale": cross_entropy(raw, y_val)})
    proto = cross[:-1]  # class sums of x~ (without the bias feature), released with the noise
    proto = proto / np.maximum(np.linalg.norm(proto, axis=0, keepdims=True), 1e-12)
    rows.append({**common, "head": "prototype", "prior_scale": None, "floor": None, "c": None, "ridge": None,
                 **scores(e_val @ proto, y_val, label_set)})
    return rows


def mean_std(values: list[float]) -> dict:
    return {"mean": round(statistics.fmean(values), 4),
            "std": round(statistics.stdev(values), 4) if len(values) > 1 else None, "n": len(values)}


KEY = ("dataset", "partition", "epsilon", "prior_scale", "floor", "c", "head")


def summarise(rows: list[dict]) -> list[dict]:
    """Mean and std over seeds of each (dataset, partition, epsilon, prior_scale, floor, c, head)."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault(tuple(r[k] for k in KEY), []).append(r)
    out = []
    for key, same in groups.items():
        entry = dict(zip(KEY, key))
        entry.update({"seeds": [r["seed"] for r in same], "accuracy": mean_std([r["accuracy"] for r in same]),
                      "macro_f1": mean_std([r["macro_f1"] for r in same])})
        if key[-1] == "least_squares":
            entry["cross_entropy_by_logit_scale"] = {
                s: round(statistics.fmean(r["cross_entropy_by_logit_scale"][s] for r in same), 4)
                for s in same[0]["cross_entropy_by_logit_scale"]}
        out.append(entry)
    return out


config = operator.itemgetter("prior_scale", "floor", "c")  # of a row, a summary entry or a grid entry


def grid_means(ls: list[dict], small: set[str]) -> dict:
    """Per (prior_scale, floor, c): the mean over the main datasets x partitions (each a mean over
    seeds), the small-sites setting's, and the mean over all datasets (small sites as a fifth)."""
    grid = {}
    for key in dict.fromkeys(config(s) for s in ls):
        cells = [s for s in ls if config(s) == key]
        main = [s for s in cells if s["dataset"] not in small]
        by_dataset = {d: [s["macro_f1"]["mean"] for s in cells if s["dataset"] == d]
                      for d in dict.fromkeys(s["dataset"] for s in cells)}
        grid[key] = {"prior_scale": key[0], "floor": key[1], "c": key[2], "cells": len(main),
                     "mean_macro_f1": round(statistics.fmean(s["macro_f1"]["mean"] for s in main), 4),
                     "mean_accuracy": round(statistics.fmean(s["accuracy"]["mean"] for s in main), 4),
                     "small_sites_macro_f1": next((round(statistics.fmean(v), 4) for d, v in by_dataset.items()
                                                  if d in small), None),
                     "all_datasets_macro_f1": round(statistics.fmean(statistics.fmean(v)
                                                                     for v in by_dataset.values()), 4)}
    return grid


def choose(summary: list[dict], small: set[str]) -> dict:
    """Per epsilon: the (prior scale a, c) at the module's floor with the best validation macro-F1
    averaged over the main datasets and partitions, what it gives per dataset (small sites too), the
    best without a prior, the module's constants, and the best with small sites as a fifth dataset."""
    from common.head_stats import PRIOR_SCALE, RIDGE_FLOOR, RIDGE_NOISE

    chosen = {}
    for eps in EPSILONS:
        ls = [s for s in summary if s["epsilon"] == eps and s["head"] == "least_squares"]
        grid = grid_means(ls, small)
        with_prior = [g for g in grid.values() if g["prior_scale"] is not None]
        best = max(with_prior, key=lambda g: g["mean_macro_f1"])
        best_all = max(with_prior, key=lambda g: g["all_datasets_macro_f1"])
        no_prior = max((g for g in grid.values() if g["prior_scale"] is None), key=lambda g: g["mean_macro_f1"])

        def per_dataset(g: dict) -> list[dict]:
            return [{"dataset": s["dataset"], "partition": s["partition"], "accuracy": s["accuracy"]["mean"],
                     "macro_f1": s["macro_f1"]["mean"]} for s in ls if config(s) == config(g)]

        at = [s for s in ls if config(s) == config(best) and s["dataset"] not in small]
        proto = [s for s in summary if s["epsilon"] == eps and s["head"] == "prototype" and s["dataset"] not in small]
        scales = {k: round(statistics.fmean(s["cross_entropy_by_logit_scale"][k] for s in at), 4)
                  for k in at[0]["cross_entropy_by_logit_scale"]}
        chosen["none" if eps is None else f"{eps:g}"] = {
            "epsilon": eps, **best, "per_dataset": per_dataset(best),
            "with_small_sites_as_fifth_dataset": best_all,
            "no_prior": {**no_prior, "per_dataset": per_dataset(no_prior)},
            "module_constants": grid.get((PRIOR_SCALE, RIDGE_FLOOR, None if eps is None else RIDGE_NOISE)),
            "prototype_mean_macro_f1": round(statistics.fmean(s["macro_f1"]["mean"] for s in proto), 4),
            "mean_cross_entropy_by_logit_scale": scales, "best_logit_scale": float(min(scales, key=scales.get)),
            "grid": sorted(grid.values(), key=lambda g: -g["mean_macro_f1"])}
    return chosen


def table(summary: list[dict], chosen: dict) -> str:
    """dataset x partition x epsilon: accuracy / macro-F1 at the chosen (a, c), at the best
    constants without a prior, and the prototype head's macro-F1."""
    cell = {(s["dataset"], s["partition"], s["epsilon"], *config(s)): s for s in summary}  # prototype: (None,) * 3

    def fmt(s: dict) -> str:
        return " ".join(f"{s[k]['mean']:.4f}+-{s[k]['std'] or 0:.4f}" for k in ("accuracy", "macro_f1"))

    def pick(g: dict) -> str:
        a = "" if g["prior_scale"] is None else f"a={g['prior_scale']:g} "
        return f"{a}fl={g['floor']:g} c={'-' if g['c'] is None else format(g['c'], 'g')}"

    lines = [f"{'dataset':<27}{'partition':<10}{'eps':>5}  {'prior':<23}{'accuracy':>13} {'macro-F1':>13}"
             f"  {'no prior':<19}{'accuracy':>13} {'macro-F1':>13}  {'proto F1':>8}"]
    for key, c in chosen.items():
        for d, part in dict.fromkeys((s["dataset"], s["partition"]) for s in summary):
            s, bare, proto = (cell[(d, part, c["epsilon"], *k)]
                              for k in (config(c), config(c["no_prior"]), (None,) * 3))
            lines.append(f"{d:<27}{part:<10}{key:>5}  {pick(c):<23}{fmt(s)}  {pick(c['no_prior']):<19}{fmt(bare)}  "
                         f"{proto['macro_f1']['mean']:>8.4f}")
    return "\n".join(lines)


def main() -> int:
    parser = bench_args(__doc__.splitlines()[0])
    parser.add_argument("--noise-multiples", default=",".join(f"{c:g}" for c in NOISE_MULTIPLES),
                        help="comma-separated values of c (RIDGE_NOISE) to try")
    parser.add_argument("--prior-scales", default=",".join(f"{a:g}" for a in PRIOR_SCALES),
                        help="comma-separated values of the label-name prior's scale a (PRIOR_SCALE) to try")
    args = parser.parse_args()
    from common.head_stats import LOGIT_SCALE, PRIOR_SCALE, RIDGE_FLOOR, RIDGE_NOISE, SENSITIVITY

    # the module's current RIDGE_NOISE and PRIOR_SCALE are always measured too, so the result says how they score
    multiples = sorted({float(c) for c in args.noise_multiples.split(",") if c.strip()} | {RIDGE_NOISE})
    prior_scales = sorted({float(a) for a in args.prior_scales.split(",") if a.strip()} | {PRIOR_SCALE})
    prof = PROFILES[args.profile]
    header = bench_header("private_head", args.profile, prof["seeds"])
    import torch
    from transformers import AutoModel

    from common.data import partition
    from common.model import load_tokenizer, quiet_transformers, resolve_model

    from threadpoolctl import threadpool_limits

    torch.set_num_threads(THREADS)
    threadpool_limits(THREADS)  # numpy's OpenBLAS too: two threads on a shared pair of cores spin, not work
    quiet_transformers()
    tokenizer, encoder = load_tokenizer(""), AutoModel.from_pretrained(resolve_model("")).eval()
    rows, datasets, small_names = [], {}, set()
    for d_index, dataset in enumerate(prof["datasets"]):
        train_path = DATA / DATASETS[dataset][0]  # the training file only: no test file is read
        texts, labels = read_tsv(train_path)
        label_set = tuple(sorted(set(labels)))
        y_full = np.array([label_set.index(x) for x in labels], dtype=np.int64)
        splits = {}
        for seed in prof["seeds"]:
            keep = stratified_subsample(labels, prof["train_examples"][dataset], seed)
            splits[seed] = (keep, validation_rows(labels, keep, prof["validation"], seed))
        needed = np.unique(np.concatenate([np.concatenate(s) for s in splits.values()]))
        started = time.monotonic()
        log(f"private_head: {dataset}: embedding {len(needed)} training-file rows (all seeds' training + validation)")
        emb = np.zeros((len(texts), encoder.config.hidden_size), dtype=np.float32)
        emb[needed] = embed(encoder, tokenizer, [texts[i] for i in needed], dataset)
        label_texts = [label.replace("_", " ").replace("-", " ") for label in label_set]  # as server/head_init.py
        priors = scaled_priors(embed(encoder, tokenizer, label_texts, f"{dataset} label names"), prior_scales)
        datasets[dataset] = {"train_file": str(train_path), "train_rows": len(texts), "classes": len(label_set),
                             "subsample": {s: len(k) for s, (k, _) in splits.items()}, "site_records": {},
                             "validation_rows": {s: len(v) for s, (_, v) in splits.items()},
                             "embedded_rows": len(needed), "embed_seconds": round(time.monotonic() - started, 1)}
        started = time.monotonic()
        for seed, (keep, val) in splits.items():
            settings = [(dataset, part, p_index, [keep[r] for r in site_rows(y_full[keep], part, seed)])
                        for p_index, part in enumerate(prof["partitions"])]  # sites' rows of the training file
            if dataset in prof["small_sites"]:  # few IID sites, all their records train
                n_sites, per_site = prof["small_sites"][dataset]
                few = keep[stratified_subsample([labels[i] for i in keep], n_sites * per_site, seed)]
                settings.append((f"{dataset}_small", "iid", len(prof["partitions"]),
                                 [few[r] for r in partition(y_full[few], n_sites, "iid", ALPHA, seed)]))
                small_names.add(f"{dataset}_small")
            for name, part, p_index, sites in settings:
                datasets[dataset]["site_records"][f"seed {seed} {name} {part}"] = [len(r) for r in sites]
                for e_index, eps in enumerate(EPSILONS):
                    base = {"dataset": name, "partition": part, "seed": seed}
                    got = evaluate_setting(emb, y_full, sites, val, label_set, eps, seed,
                                           (d_index, p_index, e_index), base, multiples, priors)
                    rows.extend(got)
                    b, n = (max((r for r in got if r["head"] == "least_squares" and (r["prior_scale"] is None) == f),
                                key=lambda r: r["macro_f1"]) for f in (False, True))
                    log(f"private_head: {name} seed {seed} {part} epsilon {eps}: best macro-F1 with a prior "
                        f"{b['macro_f1']} (a {b['prior_scale']:g}, c {b['c']}), without {n['macro_f1']} (floor "
                        f"{n['floor']:g}, c {n['c']}), prototype {got[-1]['macro_f1']}")
        datasets[dataset]["solve_seconds"] = round(time.monotonic() - started, 1)
    summary = summarise(rows)
    chosen = choose(summary, small_names)
    path = write_result(out_dir(args), "private_head", {
        "header": header,
        "setup": {"model": "all-MiniLM-L6-v2 (embedded), frozen; attention-masked mean of the last hidden states",
                  "max_length": MAX_LENGTH, "sites": SITES, "partitions": prof["partitions"], "dirichlet_alpha": ALPHA,
                  "site_records": "each site's training split (common/data.py partition, then split_train_eval "
                                  f"with eval fraction {EVAL_FRACTION}), as fl-sim's sites",
                  "small_sites": {f"{d}_small": f"{n} IID sites x {k} records (all train) from the seed's {d} "
                                  "subsample; its validation rows" for d, (n, k) in prof["small_sites"].items()},
                  "validation": f"up to {prof['validation']} rows of the training file outside the seed's "
                                "subsample (seeded, stratified); no test file is read",
                  "release": "per site sufficient_stats + N(0, (z * SENSITIVITY)^2) on every value, summed, / N; "
                             f"z = gaussian_noise_for(epsilon, min(1e-5, 0.1/n_site), '{ACCOUNTANT}')",
                  "ridge": "floor + c * 2 * noise_std_of_mean * sqrt(d + 1)", "epsilons": EPSILONS,
                  "prior": "label_prior of the label names' pooled embeddings (server/head_init.py), its cosine "
                           "part at prior_scale a instead of PRIOR_SCALE; prior_scale null: no prior",
                  "grid": f"no prior: floor in {FLOORS}; prior scale a in {prior_scales}: floor {RIDGE_FLOOR}; "
                          f"c in {multiples} (none without noise)", "logit_scales": LOGIT_SCALES,
                  "module_constants": {"SENSITIVITY": SENSITIVITY, "RIDGE_FLOOR": RIDGE_FLOOR, "RIDGE_NOISE":
                                       RIDGE_NOISE, "PRIOR_SCALE": PRIOR_SCALE, "LOGIT_SCALE": LOGIT_SCALE},
                  "noise_rng": "numpy default_rng([seed, dataset, partition, epsilon index]): a simulation",
                  "torch_threads": THREADS, "datasets": datasets},
        # the cross-entropies are kept as means over seeds (summary), which keeps the file small
        "rows": [{k: v for k, v in r.items() if k != "cross_entropy_by_logit_scale"} for r in rows],
        "summary": summary, "chosen": chosen})
    print(table(summary, chosen), flush=True)
    for key, c in chosen.items():
        alt, bare = c["with_small_sites_as_fifth_dataset"], c["no_prior"]
        log(f"private_head: chosen for epsilon {key}: a {c['prior_scale']:g}, c {c['c']}: mean macro-F1 "
            f"{c['mean_macro_f1']} (small sites {c['small_sites_macro_f1']}); no prior: floor {bare['floor']:g}, "
            f"c {bare['c']}: {bare['mean_macro_f1']}; small sites as a fifth dataset: a {alt['prior_scale']:g}, "
            f"c {alt['c']}; module constants: {c['module_constants']['mean_macro_f1']}")
    log(f"private_head: wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
