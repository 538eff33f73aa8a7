"""Render DIR/SUMMARY.md and PNG plots from the benchmark JSON files in DIR - and from nothing else.

    python bench/render.py DIR                  # e.g. bench/results/quick (--dir DIR works too)
    python bench/render.py bench/results/full   # also rewrites the results part of bench/README.md
    python bench/render.py DIR --readme PATH    # rewrite PATH's results part from DIR; --no-readme: never

Every number shown is read from a result file; every table and figure names the machine, the
commit, the profile and the seeds of the run that produced it. A benchmark this file has no
dedicated section for is shown from its own `summary_md` (Markdown lines the benchmark rendered
from its numbers) or, failing that, as a table of its `rows`.

bench/README.md is hand-written except between the lines `<!-- results:begin -->` and
`<!-- results:end -->`: rendering bench/results/full replaces what is between them with the same
sections as SUMMARY.md, their plot links relative to the README.

The renderer is five modules, none importing this one: render_common (provenance line, number
formatting, Markdown tables), render_tables (each benchmark's Markdown), render_privacy (the audit's
and redaction's, also written into docs/), render_plots (each benchmark's PNG), and this entry point (which sections exist, the run overview, the documents).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from render_common import fmt, provenance, table
from render_fairness import fairness_md, ner_md
from render_privacy import privacy_audit_md, redaction_md
from render_plots import (dp_data_size_png, dp_speed_png, round_efficiency_png, scale_png, secagg_overhead_png,
                          traffic_png, utility_png)
from render_tables import (dp_data_size_md, dp_speed_md, dp_tuning_md, generic_md, head_features_md,
                           round_efficiency_md, scale_md, secagg_overhead_md, traffic_md, utility_md)

BENCH = Path(__file__).resolve().parent
README = BENCH / "README.md"
FULL = BENCH / "results" / "full"  # the profile whose results bench/README.md shows
BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"

ORDER = ["utility", "ner", "ner-dev", "fairness", "privacy_audit", "redaction", "small_sites", "private_head", "dp_tuning", "server_optimizer", "dp_data_size", "head_features", "round_efficiency", "scale", "traffic", "dp_speed", "secagg_overhead"]

SECTIONS = {  # result file stem -> (title, Markdown, plot)
    "utility": ("Utility on real data", utility_md, utility_png),
    "fairness": ("Fairness by group on HateCheck", fairness_md, None),
    "ner": ("NER on NCBI-disease (test file)", ner_md, None),
    "ner-dev": ("NER on NCBI-disease (dev file: choosing the recipe)", ner_md, None),
    "privacy_audit": ("Privacy audit: an empirical lower bound on ε", privacy_audit_md, None),
    "redaction": ("Redaction on public text", redaction_md, None),
    "head_features": ("What the classification head sees (DP diagnosis)", head_features_md, None),
    "dp_tuning": ("Choosing DP's batch size and learning rate (validation set)", dp_tuning_md, None),
    "dp_data_size": ("DP's cost against records per site", dp_data_size_md, dp_data_size_png),
    "round_efficiency": ("Round efficiency in deployment", round_efficiency_md, round_efficiency_png),
    "scale": ("Simulation scale", scale_md, scale_png),
    "traffic": ("Bytes per site per round", traffic_md, traffic_png),
    "dp_speed": ("Local training speed (DP vs non-private)", dp_speed_md, dp_speed_png),
    "secagg_overhead": ("SecAgg+ round-time overhead", secagg_overhead_md, secagg_overhead_png),
}


def section(name: str):
    """(title, Markdown, plot) for a result file; utility-SUFFIX.json is a kept utility result (e.g. an older model's)."""
    if name in SECTIONS:
        return SECTIONS[name]
    if name.startswith("utility-"):
        return f"Utility on real data: {name.removeprefix('utility-').replace('-', ' ')}", utility_md, utility_png
    return name.replace("_", " ").capitalize(), generic_md, None


def run_entries(run: dict, results: dict) -> list[dict]:
    """RUN.json's entries, each marked when its result file was written by a later run of that benchmark alone.

    A profile run a few benchmarks at a time keeps each one's entry from the run that made it; a
    benchmark run alone afterwards (python bench/NAME.py) replaces its result but not the entry. A
    result is the entry's own when it started after the entry's run and before the next run in this
    folder, and took about the entry's time."""
    first = run["header"]["started_utc"]
    starts = sorted({s.get("run_started_utc", first) for s in run["scripts"]} | {first})
    entries = []
    for s in run["scripts"]:
        started = s.get("run_started_utc", first)
        result = results.get(s["name"], {})
        own = result.get("header", {}).get("started_utc")
        following = next((t for t in starts if t > started), None)
        walls = s.get("wall_seconds"), result.get("wall_seconds")
        other_time = None not in walls and abs(walls[0] - walls[1]) > max(60.0, 0.1 * walls[0])
        if own and (own < started or (following and own >= following) or other_time):
            s = {**s, "status": f"{s['status']}; superseded by a run of it alone started {own}" if own > started
                 else f"{s['status']}; its result file is from a run started {own}"}
        entries.append(s)
    return entries


def overview(run: dict, results: dict) -> list[str]:
    """The latest run and what each benchmark's entry in RUN.json says, failures with their last lines."""
    entries = run_entries(run, results)
    md = [f"Latest run: {provenance(run['header'])} · {fmt(run['wall_seconds'])} s", ""]
    md += table(["benchmark", "status", "wall s", "result", "run started (UTC)"],
                [[s["name"], s["status"], fmt(s.get("wall_seconds")), s.get("result") or s.get("reason", "–"),
                  s.get("run_started_utc", run["header"]["started_utc"])]
                 for s in entries])
    for s in entries:
        if s["status"] == "failed":
            md += ["", f"**{s['name']} FAILED** (exit {s['returncode']}; full log `{s['log']}`), last lines:", "",
                   "```", s.get("log_tail", ""), "```"]
    return md + [""]


def document(results: dict, run: dict | None, plots: dict, link, level: int) -> tuple[list[str], int]:
    """The run overview and one section per result, headings at `level`, plot file names through `link`;
    and 1 when a result could not be rendered (the others still are)."""
    md, status = overview(run, results) if run else [], 0
    for name in sorted(results, key=lambda n: (ORDER.index(n) if n in ORDER else len(ORDER), n)):
        d = results[name]
        title, to_md, _ = section(name)
        md += [f"{'#' * level} {title} (`{name}`)", "", f"*{provenance(d.get('header'))}"
               + (f" · {fmt(d['wall_seconds'])} s*" if "wall_seconds" in d else "*"), ""]
        if isinstance(plots[name], str):  # the plot failed, and with it (likely) the section
            status = 1
            md += [plots[name], ""]
            continue
        try:
            md += to_md(d, [link(p) for p in plots[name]])
        except (KeyError, TypeError, ValueError, ZeroDivisionError) as err:
            status = 1  # a result this renderer cannot read: say so, render the rest
            md += [f"(cannot render {name}.json: {type(err).__name__}: {err})"]
        md.append("")
    return md, status


def draw(results: dict, out: Path) -> dict:
    """Each result's PNG files (names in `out`), or the reason it has none."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plots = {}
    for name, d in results.items():
        to_png = section(name)[2]
        try:
            plots[name] = to_png(d, out, plt, name) if to_png else []
        except (KeyError, TypeError, ValueError, ZeroDivisionError) as err:
            plt.close("all")
            plots[name] = f"(cannot render {name}.json: {type(err).__name__}: {err})"
    return plots


def rewrite_readme(path: Path, block: list[str]) -> str | None:
    """Replace what lies between the results markers in `path` with `block`; the reason when it cannot."""
    if not path.exists():
        return f"{path} does not exist"
    text = path.read_text()
    begin, end = text.find(BEGIN), text.find(END)
    if begin < 0 or end < begin:
        return f"{path} has no '{BEGIN}' ... '{END}' lines to put the results between"
    new = text[:begin] + "\n".join([BEGIN, "", *block, END]) + text[end + len(END):]
    if new != text:
        path.write_text(new)
    return None


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("dir", type=Path, nargs="?", help="folder with the benchmark JSON files")
    p.add_argument("--dir", type=Path, dest="dir_option", help="the same (the form bench/run.py uses)")
    p.add_argument("--readme", type=Path, help="Markdown file whose results part to rewrite "
                                               "(default: bench/README.md when DIR is bench/results/full)")
    p.add_argument("--no-readme", action="store_true", help="write SUMMARY.md and the plots only")
    args = p.parse_args()
    folder = args.dir or args.dir_option
    if folder is None or (args.dir and args.dir_option and args.dir.resolve() != args.dir_option.resolve()):
        p.error("name one folder: DIR or --dir DIR")
    readme = None if args.no_readme else args.readme or (README if folder.resolve() == FULL.resolve() else None)

    results = {path.stem: json.loads(path.read_text()) for path in sorted(folder.glob("*.json"))}
    run = results.pop("RUN", None)
    profile = (run or {}).get("header", {}).get("profile") or next(
        (r["header"]["profile"] for r in results.values() if "header" in r), "unknown")
    plots = draw(results, folder)

    md, status = document(results, run, plots, lambda name: name, level=2)
    md = [f"# FedSilo benchmarks: {profile} profile", "",
          "Rendered by `bench/render.py` from the JSON files next to this summary; no number here is written by hand.",
          "", *md]
    (folder / "SUMMARY.md").write_text("\n".join(md))
    print(f"render: wrote {folder / 'SUMMARY.md'}")

    if readme:
        here = Path(os.path.relpath(folder.resolve(), readme.resolve().parent)).as_posix()
        block, _ = document(results, run, plots, lambda name: f"{here}/{name}", level=3)
        shown = (folder.resolve().relative_to(BENCH.parent).as_posix() if folder.resolve().is_relative_to(BENCH.parent)
                 else folder.resolve().as_posix())
        block = [f"*Rendered by `bench/render.py` from the JSON files in `{shown}/` (the {profile} profile); "
                 f"`python bench/render.py {shown}` rewrites everything between the results markers, so edit "
                 "nothing there by hand.*", "", *block]
        problem = rewrite_readme(readme, block)
        if problem:
            print(f"render: cannot update the README: {problem}")
            return 1
        print(f"render: wrote the results part of {readme}")
    return status


if __name__ == "__main__":
    raise SystemExit(main())
