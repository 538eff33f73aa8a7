"""The provenance card written next to the final model: MODEL_CARD.md and model_card.html.

Everything on it comes from the run's own records (config, summary, the last round's report,
what each site reported of itself); nothing is typed in by hand.
"""

from __future__ import annotations

import html
import json
from pathlib import Path

from common.config import RunConfig
from common.errors import printable
from common.files import atomic_write_text
from common.model import EMBEDDED_MODEL
from server.site_reports import Malformed, redaction_counts

# Every string on the card is escaped for its medium: site names and counts are checked when they
# arrive (server/site_reports.py), and the card does not rely on that.
_MARKDOWN_SPECIAL = "\\`*_[]<>|~#"

NER_LIMITATIONS = [
    "Task ner: the DP unit is one sentence (a CoNLL sentence of the site's file): a document or a "
    "person spread over many sentences is protected only through group privacy.",
]
LIMITATIONS = [
    "Differential privacy protects each site's training records (record-level); evaluation "
    "confusion matrices (per group too, where a site reports groups) and record counts leave the "
    "sites without noise.",
    "A person with several records is protected only through group privacy (a larger epsilon).",
    "Secure aggregation hides single updates from the server, not the aggregate; metrics and "
    "example counts travel unmasked.",
    "PII redaction is rule-based: names without context and unusual formats can be missed "
    "(see the README for measured recall).",
    "The model was evaluated only on the sites' held-out splits, which share the sites' biases.",
]


def _last_report(run_dir: Path) -> dict | None:
    reports = sorted((run_dir / "reports").glob("round-*.json"))
    return json.loads(reports[-1].read_text(encoding="utf-8")) if reports else None


def card_sections(run_dir: Path, cfg: RunConfig, summary: dict, sites: dict[str, dict]) -> list[tuple[str, object]]:
    """(heading, content) pairs; content is a string, a list of strings, or a table (header, rows)."""
    report = _last_report(run_dir)
    ner = cfg.task == "ner"
    unit = "sentences" if ner else "records"
    site_rows = []
    for name, rep in sorted(sites.items()):
        try:
            red = redaction_counts(rep.get("redactions") or "{}")
        except Malformed:
            red = {"(malformed report)": "?"}
        site_rows.append([name, str(rep.get("records", "?")), str(rep.get("eval_records", "?")),
                          ", ".join(f"{k} {v}" for k, v in sorted(red.items())) or "none found"])
    sections: list[tuple[str, object]] = [
        ("Task", f"Named-entity recognition: a tag per word, IOB2, {len(cfg.labels)} tags: {', '.join(cfg.labels)}."
         if ner else f"Text classification into {len(cfg.labels)} labels: {', '.join(cfg.labels)}."),
        ("Base model", f"{cfg.model or EMBEDDED_MODEL}; trainable set: {cfg.trainable}"
                       + (f" (LoRA r={cfg.lora_r} on {', '.join(cfg.lora_targets)} + head)" if cfg.trainable == "lora" else "")
                       + ("; the head is linear, on each token's last hidden state (a word's tag is read from its "
                          "first sub-token)" if ner else "; the head is linear, on the mean of the last hidden states")
                       + (" (L2-normalised), started in round 1 from the sites' released head statistics (ridge "
                          "least squares; under DP each site's release is a Gaussian mechanism charged to its ledger)"
                          if cfg.head_init == "stats" else ", started at random")),
        ("Training", f"{len(summary.get('rounds_completed', []))} of {summary.get('rounds_planned')} federated "
                     f"rounds completed (run {summary.get('run_id')}); failed rounds: "
                     f"{summary.get('rounds_failed') or 'none'}; server step: {server_step(cfg)}."),
        (f"Sites (names and {unit[:-1]} counts only) and PII redaction (placeholders inserted, by type)",
         (["site", f"training {unit}", f"held-out {unit}", "redactions"], site_rows)),
        ("Differential privacy, per site", list(summary.get("privacy", {}).values()) or ["no site trained"]),
        ("Secure aggregation", "on (Flower SecAgg+): the server saw only the sum of the sites' updates"
         if cfg.secure_aggregation else "OFF: the server saw each site's update"),
    ]
    if report:
        fed = report["federation"]["report"]
        rows = [[label, *(f"{fed[label][m]:.3f}" for m in ("precision", "recall", "f1-score")),
                 str(int(fed[label]["support"]))] for label in cfg.labels if label in fed]
        if ner:
            sections.append(entity_section(report))
        sections.append((f"Per-{'tag metrics, word level' if ner else 'class metrics'} (all sites' eval splits, "
                         f"round {report['round']})",
                         (["label", "precision", "recall", "F1", "support"], rows)))
        per_site = [[name, f"{s['report'].get('accuracy', float('nan')):.3f}",
                     f"{s['report'].get('macro avg', {}).get('f1-score', float('nan')):.3f}"]
                    for name, s in sorted(report["sites"].items())]
        sections.append(("Per-site metrics", (["site", "accuracy", "macro-F1"], per_site)))
        if not ner:
            sections += fairness_sections(report, cfg.labels, cfg.max_fairness_gap)
    sections += [
        ("Explanations", "fl-predict RUN_DIR --text TEXT lists each text's entities (type, words, character span, "
                         "score); word attributions (--explain) are for classification runs." if ner else
                         "Token attributions for any prediction of this model (Integrated Gradients, Captum): "
                         "fl-predict RUN_DIR --text TEXT --explain [--html FILE]; an example page: "
                         "docs/explanation-example.html in FedSilo's repository; how to read it: docs/explanations.md."),
        ("Audit", f"Coordinator audit log {summary.get('audit_log')}, chain head {summary.get('audit_head')}; "
                  f"final model digest {summary.get('final_model_digest')}. Check with: fl-audit verify LOG."),
        ("Known limitations", (NER_LIMITATIONS if ner else []) + LIMITATIONS),
    ]
    return sections


def entity_section(report: dict) -> tuple[str, object]:
    """Entity-level scores of the last round: seqeval's exact match, on the summed site counts."""
    fed = (report.get("entities") or {}).get("federated") or {}
    rows = [[kind, *(f"{m[k]:.3f}" for k in ("precision", "recall", "f1-score")), str(int(m["support"]))]
            for kind, m in fed.items()]
    return (f"Entities (seqeval, exact match; all sites' eval splits, round {report['round']})",
            (["entity type", "precision", "recall", "F1", "entities"], rows))


def fairness_sections(report: dict, labels: tuple[str, ...], max_gap: float) -> list[tuple[str, object]]:
    """Per-group metrics of the last round (sites with a group column), its gaps and any alert."""
    fed = (report.get("fairness") or {}).get("federated")
    if not fed:
        return [("Fairness", "No site reported groups (fl-client --group-column): no per-group figures.")]
    cell = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
    header = ["group", "records", "accuracy", *(f"{k} {name}" for name in labels for k in ("TPR", "FPR"))]
    rows = [[g, str(int(m["records"])), cell(m["accuracy"]),
             *(cell(m[f"{k}/{name}"]) for name in labels for k in ("tpr", "fpr"))] for g, m in fed["groups"].items()]
    gaps = fed["gaps"]
    notes = [f"Equalized-odds difference (largest TPR or FPR gap between groups, any class): "
             f"{cell(gaps['equalized_odds_difference'])}",
             f"Demographic-parity difference (largest selection-rate gap): {cell(gaps['demographic_parity_difference'])}",
             f"Worst group: {gaps['worst_group']}, accuracy {cell(gaps['worst_group_accuracy'])}",
             "Groups are counted at each site on its held-out split; a site merges groups of fewer than its "
             "min-group-size records into 'other' (metrics by fairlearn's MetricFrame on the summed counts)."]
    alert = report["fairness"].get("alert")
    notes.append(f"ALERT: {alert}" if alert else
                 (f"No gap above max-fairness-gap {max_gap:g}." if max_gap else "No alert threshold set (--max-fairness-gap)."))
    return [(f"Fairness by group (all sites' eval splits, round {report['round']})", (header, rows)),
            ("Fairness gaps", notes)]


def server_step(cfg: RunConfig) -> str:
    rule = "FedAvg (weighted mean)" if cfg.aggregation == "fedavg" else cfg.aggregation
    if cfg.server_optimizer != "sgd":  # Reddi et al. 2021
        name = {"adam": "FedAdam", "yogi": "FedYogi"}[cfg.server_optimizer]
        return (f"{rule}, then a {name} server step (learning rate {cfg.server_learning_rate:g}, "
                f"tau {cfg.server_tau:g})")
    if cfg.server_momentum:
        rule += f" with server momentum {cfg.server_momentum:g}"
    return rule + (f", server learning rate {cfg.server_learning_rate:g}" if cfg.server_learning_rate != 1.0 else "")


def write_model_card(run_dir: Path, cfg: RunConfig, summary: dict, sites: dict[str, dict],
                     extra: list[tuple[str, object]] = ()) -> None:
    """extra: sections added after the fairness ones (fl-server report --compare)."""
    sections = card_sections(run_dir, cfg, summary, sites)
    at = next((i for i, (h, _) in enumerate(sections) if h == "Explanations"), len(sections))
    sections[at:at] = list(extra)
    atomic_write_text(run_dir / "MODEL_CARD.md", to_markdown(sections))
    atomic_write_text(run_dir / "model_card.html", to_html(sections))


def plain(text) -> str:
    """One line of text: control characters (ESC sequences, newlines) escaped, nothing cut."""
    return printable(str(text), limit=1 << 30)


def markdown(text) -> str:
    """`text` as Markdown shows it literally: no link, image, HTML tag, emphasis, code span or
    table cell of its own, and no line break."""
    return "".join("\\" + c if c in _MARKDOWN_SPECIAL else c for c in plain(text))


def to_markdown(sections) -> str:
    m = markdown
    out = ["# Model card (FedSilo)", ""]
    for heading, content in sections:
        out += [f"## {m(heading)}", ""]
        if isinstance(content, tuple):
            header, rows = content
            out += ["| " + " | ".join(m(h) for h in header) + " |", "|" + "---|" * len(header)]
            out += ["| " + " | ".join(m(c) for c in row) + " |" for row in rows]
        elif isinstance(content, list):
            out += [f"- {m(item)}" for item in content]
        else:
            out.append(m(content))
        out.append("")
    return "\n".join(out)


def to_html(sections) -> str:
    e = lambda text: html.escape(plain(text))  # noqa: E731
    out = ["<!doctype html><html><head><meta charset='utf-8'><title>Model card (FedSilo)</title>",
           "<style>body{font-family:sans-serif;max-width:60em;margin:2em auto}table{border-collapse:collapse}"
           "td,th{border:1px solid #999;padding:.2em .6em}</style></head><body><h1>Model card (FedSilo)</h1>"]
    for heading, content in sections:
        out.append(f"<h2>{e(heading)}</h2>")
        if isinstance(content, tuple):
            header, rows = content
            out.append("<table><tr>" + "".join(f"<th>{e(h)}</th>" for h in header) + "</tr>")
            out += ["<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>" for row in rows]
            out.append("</table>")
        elif isinstance(content, list):
            out.append("<ul>" + "".join(f"<li>{e(item)}</li>" for item in content) + "</ul>")
        else:
            out.append(f"<p>{e(content)}</p>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"
