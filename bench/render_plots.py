"""bench/render.py's PNG plots: one function per benchmark, each drawn from that benchmark's JSON only.

Each `NAME_png(d, out, plt, stem)` draws from the result `d`, writes `out/STEM.png` signed with the run's
provenance, and returns the file names it wrote (none when the result has nothing to plot).
"""

from __future__ import annotations

from pathlib import Path

from render_common import ARM_ORDER, STEP_NAMES, arm_label, provenance


def save_figure(fig, h: dict | None, out: Path, name: str, plt) -> list[str]:
    """Sign the figure with its provenance, write out/name and close it; the plots list for the section."""
    fig.text(0.01, 0.005, provenance(h), fontsize=6.5, color="0.3", ha="left", va="bottom", wrap=True)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    fig.savefig(out / name, dpi=120)
    plt.close(fig)
    return [name]


def utility_png(d: dict, out: Path, plt, stem: str = "utility") -> list[str]:
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
    return save_figure(fig, d["header"], out, f"{stem}.png", plt)


def scale_png(d: dict, out: Path, plt, stem: str = "scale") -> list[str]:
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
    return save_figure(fig, d["header"], out, f"{stem}.png", plt)


def traffic_png(d: dict, out: Path, plt, stem: str = "traffic") -> list[str]:
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
    return save_figure(fig, d["header"], out, f"{stem}.png", plt)


def round_efficiency_png(d: dict, out: Path, plt, stem: str = "round_efficiency") -> list[str]:
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
    return save_figure(fig, d["header"], out, f"{stem}.png", plt)


def dp_speed_png(d: dict, out: Path, plt, stem: str = "dp_speed") -> list[str]:
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
    return save_figure(fig, d.get("header"), out, f"{stem}.png", plt)


def secagg_overhead_png(d: dict, out: Path, plt, stem: str = "secagg_overhead") -> list[str]:
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
    return save_figure(fig, d.get("header"), out, f"{stem}.png", plt)


def dp_data_size_png(d: dict, out: Path, plt, stem: str = "dp_data_size") -> list[str]:
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
    return save_figure(fig, d["header"], out, f"{stem}.png", plt)
