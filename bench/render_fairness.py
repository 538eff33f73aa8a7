"""bench/README.md's section for bench/fairness.py: per-group accuracy and gaps by arm."""

from __future__ import annotations

from render_common import fmt, table

GAPS = [("worst_group_accuracy", "worst-group accuracy"), ("equalized_odds_difference", "equalized-odds diff."),
        ("demographic_parity_difference", "demographic-parity diff."), ("accuracy_difference", "accuracy gap")]


def fairness_md(d: dict, plots: list[str]) -> list[str]:
    summary = d["summary"]
    arms = [s["arm"] for s in summary]
    md = [f"HateCheck, {d['setup']['sites']} sites, test file scored per target group; ε = {d['setup']['epsilon']:g} "
          f"per site for the DP arms; mean over {max((s['seeds'] for s in summary), default=0)} seed(s).", ""]
    earlier = sorted({(r["seed"], r["run"]["commit"], r["run"]["started_utc"]) for r in d["rows"] if r.get("run")})
    if earlier:  # a run in parts (--seeds): the rows an earlier run measured name it
        md += ["Measured in an earlier run: " + "; ".join(f"seed {seed} (commit {commit}, started {started})"
                                                       for seed, commit, started in earlier) + ".", ""]
    md += table(["arm", "seeds", "accuracy", "macro-F1", *(label for _, label in GAPS)],
                [[s["arm"], s["seeds"], fmt(s["accuracy"], 3), fmt(s["macro_f1"], 3), *(fmt(s[k], 3) for k, _ in GAPS)]
                 for s in summary])
    groups = d["setup"]["test_groups"]
    by_arm = {s["arm"]: s["group_accuracy"] for s in summary}
    extra = []
    if {"no DP", "DP"} <= set(by_arm):
        extra.append(("DP's cost (no DP − DP)", lambda g: by_arm["no DP"][g] - by_arm["DP"][g]))
    if {"DP", "DP, reweighted"} <= set(by_arm):
        extra.append(("reweighting under DP (after − before)", lambda g: by_arm["DP, reweighted"][g] - by_arm["DP"][g]))
    md += ["", "Accuracy by group (test file):", ""]
    md += table(["group", "test records", *arms, *(name for name, _ in extra)],
                [[g, n, *(fmt(by_arm[a].get(g), 3) for a in arms), *(f"{f(g):+.3f}" for _, f in extra)]
                 for g, n in groups.items()])
    return md + [f"![plot]({p})" for p in plots]


def ner_md(d: dict, plots: list[str]) -> list[str]:
    """bench/ner.py: entity-level scores by arm (and recipe, on the dev file), each arm's distance to
    the best centralised ceiling."""
    summary, setup = d["summary"], d["setup"]
    md = [f"NCBI-disease, {setup['sites']} sites (IID, or by document: a block of the file each), "
          f"{setup['scored_sentences']} sentences scored ({setup['data']}); ε = {setup['epsilon']:g} per site "
          f"for the DP arms; entity F1 is seqeval's exact match; mean over "
          f"{max((s['seeds'] for s in summary), default=0)} seed(s); recipe: fl-sim options on top of the profile's.", ""]
    md += table(["arm", "recipe", "seeds", "entity F1", "precision", "recall", "word accuracy", "wall s",
                 "points below the ceiling"],
                [[s["arm"], s.get("recipe", "the profile's"), s["seeds"], fmt(s["entity_f1"], 3),
                  fmt(s["entity_precision"], 3), fmt(s["entity_recall"], 3), fmt(s["word_accuracy"], 3),
                  fmt(s.get("wall_seconds"), 0), fmt(s["points_below_ceiling"], 1)] for s in summary])
    return md
