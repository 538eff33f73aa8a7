"""Markdown for the privacy measurements: the audit (privacy_audit.json) and redaction (redaction.json).

The same functions fill the tables in docs/privacy.md and docs/redaction-and-audit.md
(`python bench/render_privacy.py`), so a figure there always comes from the committed result file.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

from render_common import fmt, table

DOCS = Path(__file__).resolve().parent.parent / "docs"
FULL = Path(__file__).resolve().parent / "results" / "full"


def audit_table(d: dict) -> list[str]:
    rows = [[r["mechanism"], r["threat_model"], "off" if not r.get("dp") else "on",
             fmt(r.get("epsilon"), 2), fmt(r.get("epsilon_lower_bound"), 2), fmt(r.get("auroc"), 3),
             f"{r.get('canaries_in', '–')} of {r.get('canaries', '–')}"] if r["status"] == "ok" else
            [r["mechanism"], r["threat_model"], "–", "–", f"failed: {r.get('error', '')[-80:]}", "–", "–"]
            for r in d["rows"]]
    return table(["mechanism", "threat model", "DP", "claimed ε (site A)", "ε lower bound (95%)", "AUROC",
                  "canaries in"], rows)


def privacy_audit_md(d: dict, plots: list[str]) -> list[str]:
    s, c = d["setup"], d["checks"]
    return [f"{s['method']}; {s['canaries']} canaries ({s['canary']}); {s['records_per_site']} SST-2 records "
            f"per site; {s['rounds']} round; score: {s['score']}.", "", *audit_table(d), "",
            f"DP rows never exceed their claim: {fmt(c['dp_bound_at_most_claimed'])}; DP off (one site's update) "
            f"proves at least ε {s['min_power']}: {fmt(c['dp_off_one_site_detects_leakage'])}."]


def names_table(d: dict) -> list[str]:
    rows = [[arm, f"{n['caught']:,} of {n['names']:,} ({n['recall']:.3f})", fmt(n["precision"], 3),
             f"{d['false_hits_medical'][arm]['name_spans_per_100_sentences']:.1f}",
             f"{d['false_hits_medical'][arm]['share_touched']:.3f}"] for arm, n in d["names"].items()]
    return table(["recogniser", "person names caught (recall)", "precision", "NAME spans per 100 medical sentences",
                  "disease mentions touched"], rows)


def patterns_table(d: dict) -> list[str]:
    types = d["pattern_types_synthetic"]
    return table(["type", *types], [["recall", *(f"{m['recall']:.3f}" for m in types.values())],
                                    ["precision", *(f"{m['precision']:.3f}" for m in types.values())]])


def redaction_md(d: dict, plots: list[str]) -> list[str]:
    t = d["targets"]
    return [f"Names: {d['setup']['names']}; false hits: {d['setup']['false_hits']}.", "", *names_table(d), "",
            f"Pattern types ({d['setup']['patterns']}):", "", *patterns_table(d), "",
            f"Targets: name recall ≥ {t['name_recall_at_least']} ({t['name_recall']:.3f}: "
            f"{'met' if t['name_met'] else 'not met'}); every pattern type's recall ≥ {t['pattern_recall_at_least']} "
            f"({'met' if not t['patterns_below'] else 'not met: ' + ', '.join(t['patterns_below'])})."]


def fill(path: Path, marker: str, lines: list[str]) -> None:
    """Replace the block after `<!-- marker -->` (up to the next blank line) with `lines`."""
    text = path.read_text()
    start = f"<!-- {marker} -->\n"
    pattern = re.compile(re.escape(start) + r"(?:.+\n)*")
    if not pattern.search(text):
        raise SystemExit(f"{path}: no {start.strip()} to fill")
    path.write_text(pattern.sub(lambda _: start + "\n".join(lines) + "\n", text, count=1))


def main() -> int:
    audit = json.loads((FULL / "privacy_audit.json").read_text())
    fill(DOCS / "privacy.md", "audit-table", audit_table(audit))
    redaction = json.loads((FULL / "redaction.json").read_text())
    fill(DOCS / "redaction-and-audit.md", "names-table", names_table(redaction))
    fill(DOCS / "redaction-and-audit.md", "patterns-table", patterns_table(redaction))
    return 0


if __name__ == "__main__":
    sys.exit(main())
