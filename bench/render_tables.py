"""bench/render.py's Markdown: one function per benchmark, each printing that benchmark's JSON only.

Each `NAME_md(d, plots)` returns the Markdown lines of one section (without its heading) for the
result `d`; `plots` are the links to its PNG files, relative to the document being written.
"""

from __future__ import annotations

import json

from render_common import ARM_ORDER, STEP_NAMES, arm_label, details, fmt, runs_note, slowest_share, table, verdict


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
        lines += ["", "Measured in several runs (each row's commit is in the table of every run; a ceiling and the "
                      "arms compared with it are always from one run): "
                  + "; ".join(f"commit {commit} started {started}" for started, commit in d["runs"]) + "."]
    order = list(s["datasets"])  # the benchmark's own order: the headline dataset first
    parts = list(s.get("partitions", []))
    summary = sorted(d["summary"], key=lambda r: (order.index(r["dataset"]) if r["dataset"] in order else len(order),
                                                  parts.index(r["partition"]) if r["partition"] in parts else len(parts),
                                                  r["partition"], ARM_ORDER.index(r["arm"]), r["epsilon"] or 0))
    groups = list(dict.fromkeys((r["dataset"], r["partition"]) for r in summary))
    cell = {(r["dataset"], r["partition"], r["arm"], r["epsilon"]): r for r in summary}
    arms = sorted({(r["arm"], r["epsilon"]) for r in summary}, key=lambda a: (ARM_ORDER.index(a[0]), a[1] or 0))
    gap_arms = ([a for a in arms if a == ("federated", None)] + [a for a in arms if a[0] == "federated DP"][-1:]
                + [a for a in arms if a[0].endswith("head from statistics")])
    lines += ["", "At a glance: mean accuracy (%) over the seeds on each dataset's held-out test set; gap = ceiling "
                  "− arm in accuracy points, the mean of the differences paired by seed:", ""]
    lines += table(["dataset", "partition", *(arm_label(*a) for a in arms), *(f"gap: {arm_label(*a)}" for a in gap_arms)],
                   [[ds, part, *(fmt(100 * cell[ds, part, *a]["accuracy"]["mean"]) if (ds, part, *a) in cell else "–"
                                 for a in arms),
                     *(gap(cell[ds, part, *a]) if (ds, part, *a) in cell else "–" for a in gap_arms)]
                    for ds, part in groups])
    t = d["target"]
    lines += ["", f"Target ({t['definition']}): gap {fmt(t['gap_points'], 2)} points over seeds "
              f"{', '.join(map(str, t.get('seeds', []))) or '–'} → "
              + (verdict(t["met"]) if t["applies_to_this_profile"] else
                 "not judged: the target is defined on the full profile with all its seeds, and this is not "
                 "that measurement."),
              "", "By group: accuracy / macro-F1 (%) of each seed's run; the mean ± std over the seeds; the gap to the "
                  "ceiling in accuracy points, as a mean and seed by seed:", ""]
    for ds, part in groups:
        lines += [f"**{ds}, {part}**", ""] + utility_group(d, [r for r in summary if (r["dataset"], r["partition"]) == (ds, part)]) + [""]
    lines += details("Every run (status, example passes, ε spent, seconds, commit)", table(
        ["dataset", "partition", "arm", "seed", "status", "accuracy", "macro-F1", "example passes",
         "ε spent (max site)", "rounds × epochs, batch, flags", "wall s", "commit"],
        [[r["dataset"], r["partition"], arm_label(r["arm"], r["epsilon"]), r["seed"], r["status"],
          fmt(100 * r["accuracy"]) if "accuracy" in r else "–",
          fmt(100 * r["macro_f1"]) if "macro_f1" in r else "–", fmt(r.get("example_passes")),
          fmt(r.get("epsilon_spent_max"), 2), recipe(r, d["setup"]), fmt(r.get("wall_seconds", r.get("train_seconds"))),
          r.get("run", {}).get("commit", d["header"]["commit"])]
         for r in d["rows"]]))
    return lines + [""] + [f"![utility]({p})" for p in plots]


def recipe(r: dict, setup: dict) -> str:
    """What an arm ran: rounds x local epochs (or centralised epochs), batch, extra flags; rows
    measured before rows stated it ran the setup's recipe."""
    if r["arm"] == "centralised":
        return f"{r.get('epochs', setup['centralised_epochs'])} epochs, {r.get('batch_size', setup['batch_size'])}"
    flags = r.get("flags", "--head-init none (the default then)")
    return (f"{r.get('rounds', setup['rounds'])} × {r.get('local_epochs', setup['local_epochs'])}, "
            f"{r.get('batch_size', setup['batch_size'])}" + (f", {flags}" if flags else ""))


def utility_group(d: dict, summary: list[dict]) -> list[str]:
    """One (dataset, partition) group: each arm's runs side by side by seed, with their means and gaps."""
    ds, part = summary[0]["dataset"], summary[0]["partition"]
    runs = {(r["seed"], r["arm"], r["epsilon"]): r for r in d["rows"] if (r["dataset"], r["partition"]) == (ds, part)}
    seeds = sorted({seed for seed, _, _ in runs})

    def run(seed, arm, eps) -> str:
        r = runs.get((seed, arm, eps))
        if r is None:
            return "–"
        if r["status"] != "ok" or "accuracy" not in r:
            return r["status"]
        return f"{100 * r['accuracy']:.1f} / {100 * r['macro_f1']:.1f}" if "macro_f1" in r else f"{100 * r['accuracy']:.1f}"

    def by_seed(r: dict) -> str:  # the paired differences the mean gap is made of
        if r["gap_to_ceiling_points"] is None:
            return "–"
        out = []
        for seed in r.get("gap_seeds") or r["seeds"]:
            ceiling, arm = runs.get((seed, "centralised", None)), runs.get((seed, r["arm"], r["epsilon"]))
            if ceiling and arm and "accuracy" in ceiling and "accuracy" in arm:
                out.append(f"{100 * (ceiling['accuracy'] - arm['accuracy']):.1f}")
        return ", ".join(out) or "–"

    several = len(seeds) > 1
    lines = table(["arm", *(f"seed {seed}" for seed in seeds), "mean accuracy", "mean macro-F1", "gap"]
                  + (["gap by seed"] if several else []),
                  [[arm_label(r["arm"], r["epsilon"]), *(run(seed, r["arm"], r["epsilon"]) for seed in seeds),
                    pct(r["accuracy"]), pct(r["macro_f1"]), gap(r)] + ([by_seed(r)] if several else [])
                   for r in summary])
    sizes = {}  # each site's training records, where the federated runs recorded them
    for (seed, _, _), r in sorted(runs.items(), key=lambda kv: kv[0][0]):
        if isinstance(r.get("site_examples"), dict):
            sizes.setdefault(seed, ", ".join(fmt(n) for n in r["site_examples"].values()))
    if sizes:
        lines += ["", "Training records per site: " + "; ".join(f"seed {seed}: {v}" for seed, v in sizes.items())
                  + ("" if len(sizes) == len(seeds) else " (the other seeds' runs did not record them)") + "."]
    return lines


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
        f"{verdict(t['met_all_rounds'])}; rounds after the first {verdict(t['met_after_round_1'])}"
        + (f"; every round after the first {verdict(t['met_every_round_after_1'])}" if "met_every_round_after_1" in t
           else "") + "."]
    return lines + [""] + [f"![round_efficiency]({p})" for p in plots]


def dp_speed_md(d: dict, plots: list[str]) -> list[str]:
    lines = [f"Model {d['model']}; batch {d['rows'][0]['batch'] if d['rows'] else '–'}; median of {d['steps']} timed steps "
             "per configuration, each in its own process.", ""]
    lines += table(["configuration", "tokens", "samples/s", "step s", "peak RSS GB"],
                   [[r["config"], r["tokens"], fmt(r["samples_per_s"], 2), fmt(r["step_s"], 3), fmt(r["peak_rss_gb"], 2)]
                    for r in d["rows"]])
    lines += ["", "Ratios (same run): " + "; ".join(f"{t}: " + ", ".join(f"{k} ×{v}" for k, v in r.items())
                                                  for t, r in d["ratios"].items())]
    return lines + [""] + [f"![dp_speed]({p})" for p in plots]


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

    def config(r: dict) -> tuple:
        return (r["batch_size"], r["learning_rate"], r["head_learning_rate"], lora(r), server(r))

    seeds = sorted({r["seed"] for r in d["rows"]})
    runs = {(config(r), r["seed"]): r for r in d["rows"]}

    def run(m: dict, seed) -> str:
        r = runs.get((config(m), seed))
        return "–" if r is None else fmt(100 * r["accuracy"]) if r.get("accuracy") is not None else r["status"]

    lines += runs_note(d["rows"])
    lines += ["Validation accuracy (%) of each seed's run, and the mean ± std over the seeds each configuration ran "
              "with:", ""]
    lines += table(["expected batch", "lr (LoRA)", "lr (head)", "LoRA", "server step",
                    *(f"seed {seed}" for seed in seeds), "mean"],
                   [[m["batch_size"], f"{m['learning_rate']:g}", f"{m['head_learning_rate']:g}", lora(m), server(m),
                     *(run(m, seed) for seed in seeds),
                     fmt(100 * m["accuracy_mean"]) + ("" if m["accuracy_std"] is None else
                                                       f" ± {fmt(100 * m['accuracy_std'])}")]
                    for m in d.get("summary", [])])
    lines += [""]
    return lines + details("Every run (noise multiplier, ε spent, seconds, commit)", table(
        ["seed", "expected batch", "lr (LoRA)", "lr (head)", "LoRA", "server step", "status",
         "validation accuracy (%)", "noise multiplier (max site)", "ε spent (max site)", "wall s", "commit"],
        [[r["seed"], r["batch_size"], f"{r['learning_rate']:g}", f"{r['head_learning_rate']:g}",
          lora(r), server(r), r["status"], fmt(100 * r["accuracy"]) if r.get("accuracy") is not None else "–",
          fmt(r.get("noise_multiplier"), 3), fmt(r.get("epsilon_spent_max"), 2),
          fmt(r.get("wall_seconds")), r.get("run", {}).get("commit", d["header"]["commit"])]
         for r in d["rows"]]))


def dp_data_size_md(d: dict, plots: list[str]) -> list[str]:
    setup = d["setup"]
    parts = ", ".join(setup.get("partitions", [setup.get("partition")]))
    lines = [f"{setup['model']}; {setup['dataset']}, {setup['sites']} sites, partitions {parts} (Dirichlet alpha "
             f"{setup['dirichlet_alpha']}), {setup['rounds']} rounds x {setup['local_epochs']} local epoch(s) "
             f"(the ceiling: {setup['centralised_epochs']} epochs over the union); federated DP at epsilon "
             f"{setup['epsilon_per_site']:g} per site; {setup['dp']}. Scored on the test file {setup['test_file']}.",
             "", *runs_note(d["rows"]),
             "Gaps = the ceiling minus an arm, in accuracy points, paired by seed (* the two arms come from "
             "different runs of this benchmark; otherwise from one):", ""]

    def gap(points, one_run) -> str:
        return "–" if points is None else fmt(points, 2) + ("" if one_run else " *")

    def noise(s: dict) -> str:  # the DP arm's largest noise multiplier among the sites, per seed
        return ", ".join(fmt(r.get("noise_multiplier"), 3) for r in d["rows"]
                         if r["arm"] == "federated DP" and r.get("partition", "dirichlet") == s.get("partition", "dirichlet")
                         and r["subsample"] == s["subsample"] and r["seed"] in s["seeds"]) or "–"

    rows = []
    for s in d.get("summary", []):
        fed = s.get("federated_accuracy")
        fed_gap = None if fed is None else 100 * (s["ceiling_accuracy"] - fed)
        rows.append([s.get("partition", "dirichlet"), fmt(s["subsample"]), fmt(s["records_per_site"]), fmt(100 * s["ceiling_accuracy"]),
                     "–" if fed is None else fmt(100 * fed), fmt(100 * s["dp_accuracy"]),
                     gap(fed_gap, s.get("federated_gap_one_run")),
                     gap(s["gap_points"], s.get("gap_one_run", True))
                     + ("" if s["gap_points_std"] is None else f" ± {fmt(s['gap_points_std'], 2)}"),
                     noise(s), ", ".join(map(str, s["seeds"]))])
    lines += table(["partition", "subsample", "records per site (mean)", "ceiling acc (%)", "federated acc (%)", "DP acc (%)",
                    "gap: federated", "gap: DP", "DP noise multiplier (max site)", "seeds"], rows)
    lines += [""]
    lines += details("Every run (macro-F1, noise multiplier, ε spent, seconds, commit)", table(
                   ["seed", "partition", "subsample", "arm", "status", "accuracy (%)", "macro-F1 (%)", "noise multiplier (max site)",
                    "ε spent (max site)", "seconds (ceiling: training; DP: whole fl-sim)", "commit"],
                   [[r["seed"], r.get("partition", "dirichlet"), r["subsample"], r["arm"], r["status"],
                     fmt(100 * r["accuracy"]) if r.get("accuracy") is not None else "–",
                     fmt(100 * r["macro_f1"]) if r.get("macro_f1") is not None else "–",
                     fmt(r.get("noise_multiplier"), 3), fmt(r.get("epsilon_spent_max"), 2),
                     fmt(r.get("wall_seconds", r.get("train_seconds"))), r["run"]["commit"]] for r in d["rows"]]))
    return lines + [""] + [f"![dp_data_size]({p})" for p in plots]


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
