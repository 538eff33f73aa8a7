"""RUN_DIR/report.html: one self-contained page with a run's curves, for people who do not read JSON.

Plots (matplotlib, embedded as PNG data: the page needs no network and no script): accuracy and
macro-F1 per round, epsilon per site over the rounds, per-class F1 of the latest round, accuracy
per site per round. Every text that came from a run (site names, labels, failure texts) is
HTML-escaped: a site's name is data, never markup.
"""

from __future__ import annotations

import base64
import html
import io
import time
from pathlib import Path

from common.files import atomic_write_text
from server.entity_round import entity_lines
from server.fairness_round import fairness_lines
from server.run_status import RunView, status_lines

REPORT_FILE = "report.html"


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _figures(view: RunView) -> list[tuple[str, str]]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    out = []
    rounds = [r for r in view.rounds if r.get("eval_examples")]

    def figure(title: str, draw) -> None:
        fig, ax = plt.subplots(figsize=(5.6, 3.4))
        draw(ax)
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
        if ax.get_xlabel() == "round":
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
        out.append((title, _png(fig)))
        plt.close(fig)

    if rounds:
        def quality(ax):
            xs = [r["round"] for r in rounds]
            ax.plot(xs, [r["accuracy"] for r in rounds], marker="o", label="accuracy")
            ax.plot(xs, [r["macro_f1"] for r in rounds], marker="s", label="macro-F1")
            ax.set_xlabel("round")
            ax.set_ylim(0, 1)
        figure("Accuracy and macro-F1 per round (all sites' evaluation splits)", quality)

        def per_site(ax):
            sites = sorted({s for r in rounds for s in (r.get("site_accuracy") or {})})
            for site in sites:
                points = [(r["round"], r["site_accuracy"][site]) for r in rounds if site in (r.get("site_accuracy") or {})]
                ax.plot(*zip(*points), marker="o", label=site[:40])
            ax.set_xlabel("round")
            ax.set_ylim(0, 1)
        figure("Accuracy per site per round", per_site)

    epsilon = view.epsilon()
    if epsilon:
        def eps(ax):
            for site, points in epsilon.items():
                ax.plot(*zip(*points), marker="o", label=site[:40])
            ax.set_xlabel("round")
            ax.set_ylabel("epsilon spent")
            ax.set_ylim(bottom=0)
        figure("Privacy spent per site (epsilon, the site's own accountant)", eps)

    report = (view.latest_report() or {}).get("federation", {}).get("report", {})
    classes = [(k, v) for k, v in report.items() if isinstance(v, dict) and k not in ("macro avg", "weighted avg")]
    if classes:
        def f1(ax):
            names = [k[:24] for k, _ in classes]
            ax.barh(names, [v.get("f1-score", 0.0) for _, v in classes])
            ax.set_xlim(0, 1)
            ax.invert_yaxis()
            ax.set_xlabel("F1")
        figure("Per-class F1, latest round", f1)
    return out


def render(view: RunView, compared: tuple | None = None) -> str:
    e = html.escape
    parts = ["<!doctype html>", '<html lang="en"><head><meta charset="utf-8">',
             f"<title>FedSilo run report: {e(view.path.name)}</title>",
             "<style>body{font-family:sans-serif;max-width:72em;margin:2em auto;padding:0 1em}"
             "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}"
             "pre{background:#f6f6f6;padding:1em;white-space:pre-wrap}img.plot{width:49%;min-width:22em}</style>"
             "</head><body>",
             f"<h1>FedSilo run report</h1><p>{e(str(view.path))}; written {e(time.strftime('%Y-%m-%d %H:%M:%S'))}</p>",
             "<h2>Status</h2><pre id=\"status\">" + e("\n".join(status_lines(view))) + "</pre>"]
    for title, png in _figures(view):
        parts.append(f'<img class="plot" alt="{e(title)}" title="{e(title)}" src="data:image/png;base64,{png}">')
    if view.rounds:
        parts.append("<h2>Rounds</h2><table id=\"rounds\"><tr><th>round</th><th>status</th><th>accuracy</th>"
                     "<th>macro-F1</th><th>sites trained</th><th>seconds</th></tr>")
        for r in view.rounds:
            acc = f"{r['accuracy']:.3f}" if r.get("eval_examples") else "-"
            f1 = f"{r['macro_f1']:.3f}" if r.get("eval_examples") else "-"
            parts.append(f"<tr><td>{r['round']}</td><td>{e(str(r.get('status', '')))}</td><td>{acc}</td><td>{f1}</td>"
                         f"<td>{e(', '.join(sorted(map(str, r.get('fit') or {}))))}</td><td>{r.get('seconds', '')}</td></tr>")
        parts.append("</table>")
    entities = next((r["entities"] for r in reversed(view.rounds) if r.get("entities")), None)
    if entities:  # task ner: the latest round's entity scores (server/entity_round.py)
        parts.append("<h2>Entities (latest round)</h2><pre id=\"entities\">" + e("\n".join(entity_lines(entities)))
                     + "</pre>")
    fairness = next((r["fairness"] for r in reversed(view.rounds) if r.get("fairness")), None)
    if fairness:  # the latest round with counts by group (docs/fairness.md)
        labels = tuple(str(x) for x in view.config.get("labels") or ())
        parts.append("<h2>Fairness by group (latest round)</h2><pre id=\"fairness\">"
                     + e("\n".join(fairness_lines(fairness, labels))) + "</pre>")
    if compared:  # fl-server report --compare OTHER (server/fairness_compare.py)
        heading, (header, rows), notes = compared
        parts.append(f"<h2>{e(heading)}</h2><table id=\"compare\"><tr>" + "".join(f"<th>{e(h)}</th>" for h in header)
                     + "</tr>" + "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>" for row in rows)
                     + "</table><ul>" + "".join(f"<li>{e(n)}</li>" for n in notes) + "</ul>")
    privacy = (view.summary or {}).get("privacy") or {}
    if privacy:
        parts.append("<h2>Privacy (what each site reported of itself)</h2><ul>"
                     + "".join(f"<li>{e(str(line))}</li>" for line in privacy.values()) + "</ul>")
    if (view.path / "MODEL_CARD.md").exists():
        parts.append('<p>Model card: <a href="MODEL_CARD.md">MODEL_CARD.md</a></p>')
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(view: RunView, compared: tuple | None = None) -> Path:
    return atomic_write_text(view.path / REPORT_FILE, render(view, compared))
