"""Render DIR/SUMMARY.md and PNG plots from the benchmark JSON files in DIR - and from nothing else.

    python bench/render.py --dir bench/results/quick

Every number shown is read from a result file; every table and figure names the machine, the
commit, the profile and the seeds of the run that produced it. A benchmark this file has no
dedicated section for is shown from its own `summary_md` (Markdown lines the benchmark rendered
from its numbers) or, failing that, as a table of its `rows`.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

ORDER = ["utility", "dp_tuning", "dp_data_size", "head_features", "round_efficiency", "scale", "traffic", "dp_speed", "secagg_overhead"]


# ------------------------------------------------------------------------------------ provenance
def provenance(h: dict | None) -> str:
    if not h:
        return "provenance not recorded (result written before the bench header existed)"
    m = h["machine"]
    load = h.get("load_average_at_start")
    return (f"{m['cpu']}, {m['cores']} cores, {m['ram_gib']} GiB RAM · commit {h['commit']} · profile {h['profile']} · "
            f"seeds {', '.join(map(str, h['seeds'])) or 'per benchmark'} · started {h['started_utc']}"
            + (f" · load avg {load[0]:.1f}" if load else ""))


def save_figure(fig, h: dict | None, out: Path, name: str, plt) -> list[str]:
    """Sign the figure with its provenance, write out/name and close it; the plots list for the section."""
    fig.text(0.01, 0.005, provenance(h), fontsize=6.5, color="0.3", ha="left", va="bottom", wrap=True)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    fig.savefig(out / name, dpi=120)
    plt.close(fig)
    return [name]


def fmt(x, digits: int = 1) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, int):
        return f"{x:,}"
    if isinstance(x, float):
        return f"{x:,.{digits}f}"
    return str(x)


def verdict(met) -> str:
    return {True: "**met**", False: "**not met**", None: "not decided by this run (not measured, or the run did not finish)"}[met]


def table(head: list[str], rows: list[list]) -> list[str]:
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head), *("| " + " | ".join(map(str, r)) + " |" for r in rows)]


# --------------------------------------------------------------------------------------- utility
ARM_ORDER = ["centralised", "federated", "federated DP"]


def arm_label(arm: str, eps) -> str:
    return f"{arm} ε={eps:g}" if eps is not None else arm


def pct(stat: dict) -> str:
    if stat["std"] is None:
        return f"{100 * stat['mean']:.1f}"
    return f"{100 * stat['mean']:.1f} ± {100 * stat['std']:.1f}"


def gap(r: dict) -> str:
    """The paired gap; names its seeds when a failed run left fewer pairs than the arm has seeds."""
    text = fmt(r["gap_to_ceiling_points"], 2)
    paired = r.get("gap_seeds", r["seeds"])
    return text if r["gap_to_ceiling_points"] is None or paired == r["seeds"] else f"{text} (seeds {', '.join(map(str, paired))})"


def utility_md(d: dict, plots: list[str]) -> list[str]:
    s = d["setup"]
    lines = [f"Model {s['model']}; {s['sites']} sites; {s['rounds']} rounds × {s['local_epochs']} local epoch(s) per "
             f"site = {s['centralised_epochs']} centralised epochs (same example passes); batch {s['batch_size']}, "
             f"max length {s['max_length']}; SecAgg+: {s['secure_aggregation']}; redaction: {s['redaction']}; "
             f"DP: {s['dp']}.", "",
             "Training data (" + s["subsampling"] + "):", ""]
    lines += table(["dataset", "training rows", "subsample used", "test rows (held out)", "classes",
                    "majority-class accuracy (%)"],
                   [[k, fmt(v["train_rows"]), fmt(v["subsample"]), fmt(v["test_rows"]), v["classes"],
                     fmt(100 * v["majority_class_accuracy"]) if "majority_class_accuracy" in v else "–"]
                    for k, v in s["datasets"].items()])
    if d.get("complete") is False:  # a profile run in parts (bench/utility.py --datasets/--seeds/--partitions)
        done = sorted({(r["dataset"], r["partition"], r["seed"]) for r in d["rows"]})
        lines += ["", f"**Part of the {d['header']['profile']} profile only:** the groups run so far are "
                  + ", ".join(f"{ds} {part} seed {seed}" for ds, part, seed in done) + "."]
    if len(d.get("runs", [])) > 1:
        lines += ["", "Measured in several runs (each row's commit is in the last table; a ceiling and the arms "
                      "compared with it are always from one run): "
                  + "; ".join(f"commit {commit} started {started}" for started, commit in d["runs"]) + "."]
    lines += ["", "Accuracy and macro-F1 (%) on the held-out test set, mean ± std over seeds; gap = ceiling − arm "
                  "in accuracy points, paired by seed:", ""]
    order = list(s["datasets"])  # the benchmark's own order: the headline dataset first
    summary = sorted(d["summary"], key=lambda r: (order.index(r["dataset"]) if r["dataset"] in order else len(order),
                                                  r["partition"], ARM_ORDER.index(r["arm"]), r["epsilon"] or 0))
    lines += table(["dataset", "partition", "arm", "accuracy", "macro-F1", "gap to ceiling", "seeds"],
                   [[r["dataset"], r["partition"], arm_label(r["arm"], r["epsilon"]), pct(r["accuracy"]),
                     pct(r["macro_f1"]), gap(r), ", ".join(map(str, r["seeds"]))]
                    for r in summary])
    t = d["target"]
    lines += ["", f"Target ({t['definition']}): gap {fmt(t['gap_points'], 2)} points over seeds "
              f"{', '.join(map(str, t.get('seeds', []))) or '–'} → "
              + (verdict(t["met"]) if t["applies_to_this_profile"] else
                 "not judged: the target is defined on the full profile with all its seeds, and this is not "
                 "that measurement."),
              "", "Every run:", ""]
    lines += table(["dataset", "partition", "arm", "seed", "status", "accuracy", "macro-F1", "example passes",
                    "ε spent (max site)", "wall s", "commit"],
                   [[r["dataset"], r["partition"], arm_label(r["arm"], r["epsilon"]), r["seed"], r["status"],
                     fmt(100 * r["accuracy"]) if "accuracy" in r else "–",
                     fmt(100 * r["macro_f1"]) if "macro_f1" in r else "–", fmt(r.get("example_passes")),
                     fmt(r.get("epsilon_spent_max"), 2), fmt(r.get("wall_seconds", r.get("train_seconds"))),
                     r.get("run", {}).get("commit", d["header"]["commit"])]
                    for r in d["rows"]])
    return lines + [""] + [f"![utility]({p})" for p in plots]


def utility_png(d: dict, out: Path, plt) -> list[str]:
    import numpy as np

    summary = d["summary"]
    datasets = list(dict.fromkeys(r["dataset"] for r in summary))
    if not datasets:
        return []
    fig, axes = plt.subplots(1, len(datasets), figsize=(max(7.0, 5.5 * len(datasets)), 4.2), squeeze=False)
    for ax, dataset in zip(axes[0], datasets):
        rows = [r for r in summary if r["dataset"] == dataset]
        arms = sorted({(r["arm"], r["epsilon"]) for r in rows}, key=lambda a: (ARM_ORDER.index(a[0]), -(a[1] or 0)))
        parts = list(dict.fromkeys(r["partition"] for r in rows))
        width = 0.8 / len(parts)
        for i, part in enumerate(parts):
            by = {(r["arm"], r["epsilon"]): r for r in rows if r["partition"] == part}
            xs = np.arange(len(arms)) + i * width
            means = [100 * by[a]["accuracy"]["mean"] if a in by else np.nan for a in arms]
            errs = [100 * (by[a]["accuracy"]["std"] or 0) if a in by else 0 for a in arms]
            ax.bar(xs, means, width, yerr=errs, capsize=3, label=part)
        ax.set_xticks(np.arange(len(arms)) + width * (len(parts) - 1) / 2)
        ax.set_xticklabels([arm_label(*a).replace("federated", "fed.") for a in arms], rotation=20, ha="right", fontsize=8)
        majority = d["setup"]["datasets"].get(dataset, {}).get("majority_class_accuracy")
        if majority is not None:
            ax.axhline(100 * majority, color="k", linestyle="--", linewidth=1, label="majority class")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(dataset)
        ax.legend(fontsize=8)
    fig.suptitle("Utility: centralised ceiling, federated, federated DP (error bars: std over seeds)", fontsize=9)
    return save_figure(fig, d["header"], out, "utility.png", plt)


# ----------------------------------------------------------------------------------------- scale
def scale_md(d: dict, plots: list[str]) -> list[str]:
    s = d["setup"]
    lines = [f"{s['engine']}, {s['model']}, {s['records_per_site']} records per site, {s['rounds']} round. "
             + " ".join(f"*{k}*: {v}." for k, v in s["configs"].items()) + f" Memory: {s['memory']}."
             + (f" SecAgg+: {s['secure_aggregation']}." if "secure_aggregation" in s else "")
             + f" A run is stopped after {fmt(s['timeout_seconds'])} s.", ""]
    if d.get("complete") is False:
        lines += [f"**Incomplete:** the benchmark was stopped after {len(d['rows'])} of its runs; these are the runs "
                  "it finished.", ""]
    runs = {(r.get("run") or {}).get("started_utc") for r in d["rows"]}
    lines += table(["configuration", "sites", "records", "status", "whole command s", "round s", "peak PSS GiB",
                    "peak RSS GiB"] + (["run (commit, start)"] if len(runs) > 1 else []),
                   [[r["config"], fmt(r["sites"]), fmt(r["records"]), r["status"], fmt(r["wall_seconds"]),
                     fmt(r.get("round_seconds")), fmt(r["peak_pss_gib"], 2), fmt(r["peak_rss_gib"], 2)]
                    + ([f"{r['run']['commit']}, {r['run']['started_utc']}" if r.get("run") else "–"] if len(runs) > 1 else [])
                    for r in d["rows"]])
    for r in d["rows"]:
        if r["status"] != "ok" and r.get("log_tail"):  # the run's own last words on why
            why = [x for x in r["log_tail"].splitlines() if "error" in x.lower() or "failed" in x.lower()]
            lines += ["", f"{r['sites']} sites ({r['config']}) {r['status']}: `{(why or r['log_tail'].splitlines())[-1].strip()}`"]
    if d["ratios"]:
        lines += ["", "Ratios (larger / smaller federation, same run): " + "; ".join(
            f"{k}: round ×{v['round']}, whole command ×{v['wall']}" for k, v in d["ratios"].items())]
    lines += ["", f"Targets (judged on the {s['targets_judged_on']} configuration):", ""]
    lines += [f"- {d['targets']['definition'][k]}: {verdict(v)}" for k, v in d["targets"]["met"].items()]
    return lines + [""] + [f"![scale]({p})" for p in plots]


def scale_png(d: dict, out: Path, plt) -> list[str]:
    ok = [r for r in d["rows"] if r["status"] == "ok"]
    if not ok:
        return []
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    for config in dict.fromkeys(r["config"] for r in ok):
        rows = [r for r in ok if r["config"] == config]
        sites = [r["sites"] for r in rows]
        a.plot(sites, [r["wall_seconds"] for r in rows], "o-", label=f"{config}: whole fl-sim command")
        a.plot(sites, [r["round_seconds"] for r in rows], "s--", label=f"{config}: the round (ServerApp's measure)")
        b.plot(sites, [r["peak_pss_gib"] for r in rows], "o-", label=f"{config}: peak PSS (process tree)")
        b.plot(sites, [r["peak_rss_gib"] for r in rows], "s--", label=f"{config}: peak RSS (upper bound)")
    for ax, ylabel in ((a, "seconds"), (b, "GiB")):
        ax.set_xscale("log")
        ax.set_xlabel("virtual sites")
        ax.set_ylabel(ylabel)
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    a.set_yscale("log")
    b.set_ylim(bottom=0)
    fig.suptitle("Simulation scale: one round, tiny BERT", fontsize=10)
    return save_figure(fig, d["header"], out, "scale.png", plt)


# --------------------------------------------------------------------------------------- traffic
def traffic_md(d: dict, plots: list[str]) -> list[str]:
    s = d["setup"]
    lines = [f"{s['engine']}; {s['model']}; {s['sites']} sites × {s['records_per_site']} records; {s['site_options']}. "
             f"Measured: {s['measurement']}. Expected: 4 bytes per trainable value, weights down twice "
             "(train, evaluate) and one update up per round. Overhead = measured − expected (both directions): "
             "the transport's framing and many small requests, polling, heartbeats, and under SecAgg+ its keys, "
             "shares and masked encoding.", ""]
    lines += table(["trainable", "aggregation", "trainable values", "down B/site/round", "up B/site/round",
                    "expected down", "expected up", "measured / expected (down, up)", "overhead B/site/round"],
                   [[r["trainable"], "SecAgg+" if r["secure_aggregation"] else "plain FedAvg", fmt(r["trainable_values"]),
                     fmt(r.get("down_bytes_per_site")) if r["status"] == "ok" else r["status"],
                     fmt(r.get("up_bytes_per_site")) if r["status"] == "ok" else r["status"],
                     fmt(r["expected_down_bytes"]), fmt(r["expected_up_bytes"]),
                     (f"{r['measured_vs_expected']['down']}, {r['measured_vs_expected']['up']}" if r["status"] == "ok" else "–"),
                     fmt(r.get("overhead_bytes_per_site"))]
                    for r in d["rows"]])
    if d["ratios"]:
        lines += ["", "Ratios (same run): " + "; ".join(f"{k}: ×{v}" for k, v in d["ratios"].items())]
    return lines + [""] + [f"![traffic]({p})" for p in plots]


def traffic_png(d: dict, out: Path, plt) -> list[str]:
    import numpy as np

    rows = [r for r in d["rows"] if r["status"] == "ok"]
    if not rows:
        return []
    fig, ax = plt.subplots(figsize=(8, 4))
    xs = np.arange(len(rows))
    ax.bar(xs - 0.2, [r["down_bytes_per_site"] for r in rows], 0.4, label="down (coordinator → site)")
    ax.bar(xs + 0.2, [r["up_bytes_per_site"] for r in rows], 0.4, label="up (site → coordinator)")
    ax.scatter(xs - 0.2, [r["expected_down_bytes"] for r in rows], marker="_", s=400, color="k", zorder=3,
               label="expected from parameter count")
    ax.scatter(xs + 0.2, [r["expected_up_bytes"] for r in rows], marker="_", s=400, color="k", zorder=3)
    ax.set_xticks(xs)
    ax.set_xlim(-1, len(rows))  # bars keep their width when a quick run has one configuration
    ax.set_xticklabels([f"{r['trainable']}\n{'SecAgg+' if r['secure_aggregation'] else 'plain'}" for r in rows])
    ax.set_yscale("log")
    ax.set_ylabel("bytes per site in one round")
    ax.legend(fontsize=8)
    ax.set_title(f"Bytes on the wire per site per round ({d['setup']['model']})", fontsize=10)
    return save_figure(fig, d["header"], out, "traffic.png", plt)


# ------------------------------------------------------------------------------ round_efficiency
STEP_NAMES = [("mean_time_train", "training"), ("mean_time_evaluate", "evaluation"), ("mean_time_load", "model loading"),
              ("mean_time_tokenise", "tokenisation"), ("other_seconds", "other (start-up, communication, SecAgg+, aggregation)")]


def slowest_share(rounds: list[dict]) -> float:
    """The slowest site's training seconds over the rounds' wall time, from the per-site times."""
    return sum(max(r["train_seconds_by_site"].values()) for r in rounds) / sum(r["round_seconds"] for r in rounds)


def pull_comparison(d: dict) -> str:
    """fl-client's short pull against Flower's 3 s: round time moves with training speed, which varies
    between runs on this machine, so the time outside training, evaluation and loading is compared too."""
    def other(mode: str) -> float:
        rounds = d["modes"][mode]["rounds"]
        return sum(r["other_seconds"] for r in rounds) / len(rounds)

    return (f" Against the site worker with Flower's 3 s wait after an empty pull: rounds ×"
            f"{d['speedup_round_time_vs_3s_pull']} as fast, and {fmt(other('site worker'), 1)} s a round outside "
            f"training, evaluation and loading against {fmt(other('site worker, 3 s pull'), 1)} s.")


def round_efficiency_md(d: dict, plots: list[str]) -> list[str]:
    s, t = d["setup"], d["target"]
    lines = [f"{s['engine']}; {s['model']}; {s['sites']} sites × {s['examples_per_site']} examples ({s['data']}); "
             f"{s['rounds']} rounds × {s['local_epochs']} local epoch; site defaults: {s['site_defaults']}. "
             "Seconds per round: the ServerApp's wall time, and each step's mean over the sites.", ""]
    rows = []
    for mode, m in d["modes"].items():
        for r in m["rounds"]:
            rows.append([mode, r["round"], fmt(r["round_seconds"]), *(fmt(r[k]) for k, _ in STEP_NAMES),
                         f"{100 * r['training_share']:.0f}%", f"{100 * slowest_share([r]):.0f}%"])
    lines += table(["mode", "round", "round s", *(name.split(" (")[0] for _, name in STEP_NAMES), "training share",
                    "slowest site's training share"], rows)
    lines += ["", "The sites train at the same time on the same cores and the round waits for the slowest, so "
                  "\"other\" includes the slowest site's training beyond the mean; the last column divides the "
                  "slowest site's training time by the round instead (the target is judged on the mean).",
              "", "Training share over all rounds: " + "; ".join(
        f"{mode} {100 * m['training_share_all_rounds']:.0f}% (slowest site {100 * slowest_share(m['rounds']):.0f}%)"
        for mode, m in d["modes"].items())
        + f". Rounds with the site worker are ×{d['speedup_round_time']} faster than with a process per message"
        + " (same run)." + (pull_comparison(d) if "speedup_round_time_vs_3s_pull" in d else ""),
        "", f"Target (training ≥ {100 * t['training_share_at_least']:.0f}% of a round, with the site worker): all rounds "
        f"{verdict(t['met_all_rounds'])}; rounds after the first {verdict(t['met_after_round_1'])}."]
    return lines + [""] + [f"![round_efficiency]({p})" for p in plots]


def round_efficiency_png(d: dict, out: Path, plt) -> list[str]:
    bars = [(f"{mode}\nround {r['round']}", r) for mode, m in d["modes"].items() for r in m["rounds"]]
    if not bars:
        return []
    fig, ax = plt.subplots(figsize=(max(6.0, 1.4 * len(bars)) + 3.5, 4.2))
    bottom = [0.0] * len(bars)
    for key, name in STEP_NAMES:
        values = [max(0.0, r[key]) for _, r in bars]
        ax.bar(range(len(bars)), values, 0.6, bottom=bottom, label=name)
        bottom = [b + v for b, v in zip(bottom, values)]
    ax.set_xticks(range(len(bars)))
    ax.set_xticklabels([label for label, _ in bars], fontsize=7)
    ax.set_ylabel("seconds (mean over sites)")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.set_title("Where a deployment round's time goes", fontsize=10)
    return save_figure(fig, d["header"], out, "round_efficiency.png", plt)


# ---------------------------------------------------------------------- dp_speed, secagg_overhead
def dp_speed_md(d: dict, plots: list[str]) -> list[str]:
    lines = [f"Model {d['model']}; batch {d['rows'][0]['batch'] if d['rows'] else '–'}; median of {d['steps']} timed steps "
             "per configuration, each in its own process.", ""]
    lines += table(["configuration", "tokens", "samples/s", "step s", "peak RSS GB"],
                   [[r["config"], r["tokens"], fmt(r["samples_per_s"], 2), fmt(r["step_s"], 3), fmt(r["peak_rss_gb"], 2)]
                    for r in d["rows"]])
    lines += ["", "Ratios (same run): " + "; ".join(f"{t}: " + ", ".join(f"{k} ×{v}" for k, v in r.items())
                                                  for t, r in d["ratios"].items())]
    return lines + [""] + [f"![dp_speed]({p})" for p in plots]


def dp_speed_png(d: dict, out: Path, plt) -> list[str]:
    import numpy as np

    configs = list(dict.fromkeys(r["config"] for r in d["rows"]))
    tokens = list(dict.fromkeys(r["tokens"] for r in d["rows"]))
    if not configs:
        return []
    fig, ax = plt.subplots(figsize=(8, 4))
    width = 0.8 / len(tokens)
    by = {(r["config"], r["tokens"]): r["samples_per_s"] for r in d["rows"]}
    for i, t in enumerate(tokens):
        ax.bar(np.arange(len(configs)) + i * width, [by.get((c, t), np.nan) for c in configs], width, label=f"T={t}")
    ax.set_xticks(np.arange(len(configs)) + width * (len(tokens) - 1) / 2)
    ax.set_xticklabels(configs, rotation=15, ha="right", fontsize=8)
    ax.set_ylabel("training samples / s")
    ax.legend(fontsize=8)
    ax.set_title("Local training speed: non-private vs DP, LoRA vs full", fontsize=10)
    return save_figure(fig, d.get("header"), out, "dp_speed.png", plt)


def secagg_overhead_md(d: dict, plots: list[str]) -> list[str]:
    by = {(r["sites"], r["secure_aggregation"]): r for r in d["rows"]}
    sites = sorted({r["sites"] for r in d["rows"]})
    lines = [f"{d['model']}; one round per configuration, side by side. Update bytes: "
             f"{d.get('update_bytes', 'computed from the round weights')}.", ""]
    lines += table(["sites", "plain round s", "SecAgg+ round s", "overhead", "update bytes/site plain", "SecAgg+"],
                   [[s, fmt(by[(s, False)]["round_seconds"], 2), fmt(by[(s, True)]["round_seconds"], 2),
                     f"{d['round_time_overhead'][str(s)]:+.0%}", fmt(by[(s, False)]["update_bytes_per_site"]),
                     fmt(by[(s, True)]["update_bytes_per_site"])]
                    for s in sites if (s, False) in by and (s, True) in by])
    return lines + [""] + [f"![secagg_overhead]({p})" for p in plots]


def secagg_overhead_png(d: dict, out: Path, plt) -> list[str]:
    import numpy as np

    sites = sorted({r["sites"] for r in d["rows"]})
    if not sites:
        return []
    by = {(r["sites"], r["secure_aggregation"]): r["round_seconds"] for r in d["rows"]}
    fig, ax = plt.subplots(figsize=(6, 4))
    xs = np.arange(len(sites))
    ax.bar(xs - 0.2, [by.get((s, False), np.nan) for s in sites], 0.4, label="plain FedAvg")
    ax.bar(xs + 0.2, [by.get((s, True), np.nan) for s in sites], 0.4, label="SecAgg+")
    ax.set_xticks(xs)
    ax.set_xticklabels([f"{s} sites" for s in sites])
    ax.set_ylabel("round seconds")
    ax.legend(fontsize=8)
    ax.set_title("SecAgg+ round-time overhead (fl-sim, tiny BERT)", fontsize=10)
    return save_figure(fig, d.get("header"), out, "secagg_overhead.png", plt)


# ------------------------------------------------------------------------------- anything else
def head_features_md(d: dict, plots: list[str]) -> list[str]:
    setup, stats = d["setup"], d["feature_stats_on_dev"]
    sizes = list(dict.fromkeys(r["train_examples"] for r in d["summary"]))
    cell = {(r["train_examples"], r["features"], r["epsilon"]): r for r in d["summary"]}
    lines = [f"Frozen {setup['model']}; a linear head on each feature set; {setup['data']}; {setup['epochs']} epochs, "
             f"expected batch {setup['expected_batch']}, {setup['optimizer']}; DP: {setup['dp']}. "
             f"Majority class: {setup['majority_class_accuracy']}. Mean accuracy over the seeds "
             f"(std in brackets).", ""]
    rows = []
    for name in ("pooler", "mean"):
        for eps in dict.fromkeys(r["epsilon"] for r in d["summary"]):
            cells = [cell[n, name, eps] for n in sizes]
            rows.append([name, "none" if eps is None else f"ε = {eps:g}"] + [
                f"{c['accuracy_mean']:.3f}" + (f" ({c['accuracy_std']:.3f})" if c["accuracy_std"] is not None else "")
                for c in cells])
    lines += table(["features", "DP"] + [f"n = {n}" for n in sizes], rows)
    lines += ["", "Spread of each feature across dev texts (mean std per dimension): "
              + ", ".join(f"{k} {v['std_across_texts']}" for k, v in stats.items())]
    return lines


def dp_tuning_md(d: dict, plots: list[str]) -> list[str]:
    setup = d["setup"]
    lines = [f"{setup['model']}; {setup['dataset']}, {setup['train_examples']} training examples over "
             f"{setup['sites']} sites, {setup['partition']} (alpha {setup['dirichlet_alpha']}), {setup['rounds']} "
             f"rounds x {setup['local_epochs']} local epoch(s); epsilon {setup['epsilon_per_site']:g} per site; "
             f"{setup['dp']}. Scored on {setup['scored_on']}.", ""]

    def lora(r: dict) -> str:  # rows from before LoRA was varied ran with FedSilo's default
        return f"r={r.get('lora_r', 8)} on {r.get('lora_targets', 'query,value')}"

    def server(r: dict) -> str:  # likewise FedAvg before the server's step was varied
        lr, momentum = r.get("server_learning_rate", 1.0), r.get("server_momentum", 0.0)
        return "FedAvg" if (lr, momentum) == (1.0, 0.0) else f"lr {lr:g}, momentum {momentum:g}"

    lines += ["Mean over the seeds each configuration ran with:", ""]
    lines += table(["expected batch", "lr (LoRA)", "lr (head)", "LoRA", "server step", "validation accuracy (%)",
                    "seeds"],
                   [[m["batch_size"], f"{m['learning_rate']:g}", f"{m['head_learning_rate']:g}", lora(m), server(m),
                     fmt(100 * m["accuracy_mean"]) + ("" if m["accuracy_std"] is None else
                                                       f" ± {fmt(100 * m['accuracy_std'])}"),
                     ", ".join(map(str, m["seeds"]))] for m in d.get("summary", [])])
    lines += ["", "Every run:", ""]
    return lines + table(["seed", "expected batch", "lr (LoRA)", "lr (head)", "LoRA", "server step", "status",
                          "validation accuracy (%)", "noise multiplier (max site)", "ε spent (max site)", "wall s",
                          "commit"],
                         [[r["seed"], r["batch_size"], f"{r['learning_rate']:g}", f"{r['head_learning_rate']:g}",
                           lora(r), server(r), r["status"], fmt(100 * r["accuracy"]) if r.get("accuracy") is not None else "–",
                           fmt(r.get("noise_multiplier"), 3), fmt(r.get("epsilon_spent_max"), 2),
                           fmt(r.get("wall_seconds")), r.get("run", {}).get("commit", d["header"]["commit"])]
                          for r in d["rows"]])


def dp_data_size_md(d: dict, plots: list[str]) -> list[str]:
    setup = d["setup"]
    parts = ", ".join(setup.get("partitions", [setup.get("partition")]))
    lines = [f"{setup['model']}; {setup['dataset']}, {setup['sites']} sites, partitions {parts} (Dirichlet alpha "
             f"{setup['dirichlet_alpha']}), {setup['rounds']} rounds x {setup['local_epochs']} local epoch(s) "
             f"(the ceiling: {setup['centralised_epochs']} epochs over the union); federated DP at epsilon "
             f"{setup['epsilon_per_site']:g} per site; {setup['dp']}. Scored on the test file {setup['test_file']}.",
             "", "Gaps = the ceiling minus an arm, in accuracy points, paired by seed (* the two arms come from "
             "different runs of this benchmark; otherwise from one):", ""]

    def gap(points, one_run) -> str:
        return "–" if points is None else fmt(points, 2) + ("" if one_run else " *")

    rows = []
    for s in d.get("summary", []):
        fed = s.get("federated_accuracy")
        fed_gap = None if fed is None else 100 * (s["ceiling_accuracy"] - fed)
        rows.append([s.get("partition", "dirichlet"), fmt(s["subsample"]), fmt(s["records_per_site"]), fmt(100 * s["ceiling_accuracy"]),
                     "–" if fed is None else fmt(100 * fed), fmt(100 * s["dp_accuracy"]),
                     gap(fed_gap, s.get("federated_gap_one_run")),
                     gap(s["gap_points"], s.get("gap_one_run", True))
                     + ("" if s["gap_points_std"] is None else f" ± {fmt(s['gap_points_std'], 2)}"),
                     ", ".join(map(str, s["seeds"]))])
    lines += table(["partition", "subsample", "records per site (mean)", "ceiling acc (%)", "federated acc (%)", "DP acc (%)",
                    "gap: federated", "gap: DP", "seeds"], rows)
    lines += ["", "Every run:", ""]
    lines += table(["seed", "partition", "subsample", "arm", "status", "accuracy (%)", "macro-F1 (%)", "noise multiplier (max site)",
                    "ε spent (max site)", "seconds (ceiling: training; DP: whole fl-sim)", "commit"],
                   [[r["seed"], r.get("partition", "dirichlet"), r["subsample"], r["arm"], r["status"],
                     fmt(100 * r["accuracy"]) if r.get("accuracy") is not None else "–",
                     fmt(100 * r["macro_f1"]) if r.get("macro_f1") is not None else "–",
                     fmt(r.get("noise_multiplier"), 3), fmt(r.get("epsilon_spent_max"), 2),
                     fmt(r.get("wall_seconds", r.get("train_seconds"))), r["run"]["commit"]] for r in d["rows"]])
    return lines + [""] + [f"![plot]({p})" for p in plots]


def dp_data_size_png(d: dict, out: Path, plt) -> list[str]:
    summary = d.get("summary", [])
    if not summary:
        return []
    parts = list(dict.fromkeys(s.get("partition", "dirichlet") for s in summary))
    fig, axes = plt.subplots(1, len(parts), figsize=(6.5 * len(parts), 4.2), squeeze=False)
    for ax, part in zip(axes[0], parts):
        mine = [s for s in summary if s.get("partition", "dirichlet") == part]
        x = [s["records_per_site"] for s in mine]
        ax.plot(x, [100 * s["ceiling_accuracy"] for s in mine], "o-", label="centralised, non-private (ceiling)")
        fed = [(s["records_per_site"], 100 * s["federated_accuracy"]) for s in mine if s.get("federated_accuracy")]
        if fed:
            ax.plot(*zip(*fed), "^--", label="federated, non-private")
        ax.plot(x, [100 * s["dp_accuracy"] for s in mine], "s-",
                label=f"federated DP, epsilon {d['setup']['epsilon_per_site']:g} per site")
        for s in mine:
            ax.annotate(f"DP gap {s['gap_points']:.1f}", (s["records_per_site"], 100 * s["dp_accuracy"]),
                        textcoords="offset points", xytext=(4, -12), fontsize=7)
        ax.set_xscale("log")
        ax.set_xticks(x, [f"{n:,}" for n in x])
        ax.minorticks_off()
        ax.set_xlabel("training records per site (mean)")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(part, fontsize=9)
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.suptitle("DP's cost against records per site (SST-2)", fontsize=10)
    return save_figure(fig, d["header"], out, "dp_data_size.png", plt)


def generic_md(d: dict, plots: list[str]) -> list[str]:
    """A benchmark without a section here: its own Markdown, else its rows as a table."""
    if isinstance(d.get("summary_md"), (str, list)):
        md = d["summary_md"]
        return (md.splitlines() if isinstance(md, str) else list(md)) + [f"![plot]({p})" for p in plots]
    rows = [r for r in d.get("rows", []) if isinstance(r, dict)]
    if not rows:
        return ["(no rows in the result file; see the JSON)"]
    keys = [k for k in dict.fromkeys(k for r in rows for k in r) if all(not isinstance(r.get(k), (dict, list)) for r in rows)]
    lines = table(keys, [[fmt(r.get(k), 3) for k in keys] for r in rows])
    for name in ("targets", "target"):
        if isinstance(d.get(name), dict):
            lines += ["", f"{name}: `{json.dumps(d[name])}`"]
    return lines


SECTIONS = {
    "utility": ("Utility on real data", utility_md, utility_png),
    "head_features": ("What the classification head sees (DP diagnosis)", head_features_md, None),
    "dp_tuning": ("Choosing DP's batch size and learning rate (validation set)", dp_tuning_md, None),
    "dp_data_size": ("DP's cost against records per site", dp_data_size_md, dp_data_size_png),
    "round_efficiency": ("Round efficiency in deployment", round_efficiency_md, round_efficiency_png),
    "scale": ("Simulation scale", scale_md, scale_png),
    "traffic": ("Bytes per site per round", traffic_md, traffic_png),
    "dp_speed": ("Local training speed (DP vs non-private)", dp_speed_md, dp_speed_png),
    "secagg_overhead": ("SecAgg+ round-time overhead", secagg_overhead_md, secagg_overhead_png),
}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dir", type=Path, required=True, help="folder with the benchmark JSON files")
    args = p.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = {}
    for path in sorted(args.dir.glob("*.json")):
        results[path.stem] = json.loads(path.read_text())
    run = results.pop("RUN", None)
    names = sorted(results, key=lambda n: (ORDER.index(n) if n in ORDER else len(ORDER), n))
    profile = (run or {}).get("header", {}).get("profile") or next(
        (r["header"]["profile"] for r in results.values() if "header" in r), "unknown")
    md = [f"# FedSilo benchmarks: {profile} profile", "",
          "Rendered by `bench/render.py` from the JSON files next to this summary; no number here is written by hand.",
          ""]
    if run:
        md += [f"Latest run: {provenance(run['header'])} · {fmt(run['wall_seconds'])} s", ""]
        # a profile run a few benchmarks at a time keeps each one's entry from the run that made it;
        # a benchmark run alone afterwards (python bench/NAME.py) supersedes its entry
        entries = []
        for s in run["scripts"]:
            started = s.get("run_started_utc", run["header"]["started_utc"])
            later = results.get(s["name"], {}).get("header", {}).get("started_utc", "")
            if later > started:
                s = {**s, "status": f"{s['status']}; superseded by a run of it alone started {later}"}
            entries.append(s)
        md += table(["benchmark", "status", "wall s", "result", "run started (UTC)"],
                    [[s["name"], s["status"], fmt(s.get("wall_seconds")), s.get("result") or s.get("reason", "–"),
                      s.get("run_started_utc", run["header"]["started_utc"])]
                     for s in entries])
        failed = [s for s in entries if s["status"] == "failed"]
        for s in failed:
            md += ["", f"**{s['name']} FAILED** (exit {s['returncode']}; full log `{s['log']}`), last lines:", "",
                   "```", s.get("log_tail", ""), "```"]
        md.append("")
    status = 0
    for name in names:
        d = results[name]
        title, to_md, to_png = SECTIONS.get(name, (name.replace("_", " ").capitalize(), generic_md, None))
        md += [f"## {title} (`{name}`)", "", f"*{provenance(d.get('header'))}"
               + (f" · {fmt(d['wall_seconds'])} s*" if "wall_seconds" in d else "*"), ""]
        try:
            plots = to_png(d, args.dir, plt) if to_png else []
            md += to_md(d, plots)
        except (KeyError, TypeError, ValueError, ZeroDivisionError) as err:
            status = 1  # a result this renderer cannot read: say so, render the rest
            md += [f"(cannot render {name}.json: {type(err).__name__}: {err})"]
        md.append("")
    (args.dir / "SUMMARY.md").write_text("\n".join(md))
    print(f"render: wrote {args.dir / 'SUMMARY.md'}")
    return status


if __name__ == "__main__":
    raise SystemExit(main())
