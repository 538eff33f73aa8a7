"""Where the sites computed, from their checked reports: device kind, peak memory, Ray node.

Read back from metrics.jsonl after the run (every round's per-site fit report), so a resumed run
counts its earlier rounds too. In simulation each virtual site names the Ray node that served it
(client/site_round.py), so a user can see that a cluster spread the work; a real site never
reports one.
"""

from __future__ import annotations

import json
from pathlib import Path


def hardware_summary(metrics_path: Path) -> dict:
    """{"sites": {site: {"device", "peak_rss_mib", "gpu_peak_mib", "ray_nodes"}},
    "ray_nodes": {node: [sites]}}, peaks as the largest over the rounds."""
    sites: dict[str, dict] = {}
    nodes: dict[str, set[str]] = {}
    lines = metrics_path.read_text(encoding="utf-8").splitlines() if metrics_path.exists() else []
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a line cut by a crash: the rounds before it still count
        for site, report in (record.get("fit") or {}).items():
            entry = sites.setdefault(site, {"device": None, "peak_rss_mib": None, "gpu_peak_mib": None,
                                            "ray_nodes": []})
            entry["device"] = report.get("device", entry["device"])
            for key in ("peak_rss_mib", "gpu_peak_mib"):
                if report.get(key) is not None:
                    entry[key] = max(entry[key] or 0.0, report[key])
            node = report.get("ray_node")
            if node:
                nodes.setdefault(node, set()).add(site)
                if node not in entry["ray_nodes"]:
                    entry["ray_nodes"].append(node)
    return {"sites": dict(sorted(sites.items())),
            "ray_nodes": {node: sorted(members) for node, members in sorted(nodes.items())}}


def report_lines(summary: dict) -> list[str]:
    """The run report's "Hardware" section: one line per Ray node, then one per site."""
    lines = [f"Ray node {node[:12]}: {len(members)} virtual site(s): {', '.join(members)}"
             for node, members in summary["ray_nodes"].items()]
    for site, entry in summary["sites"].items():
        memory = f"peak RSS {entry['peak_rss_mib']:.0f} MiB" if entry["peak_rss_mib"] is not None else "peak RSS ?"
        if entry["gpu_peak_mib"] is not None:
            memory += f", GPU peak {entry['gpu_peak_mib']:.0f} MiB"
        lines.append(f"site {site}: {entry['device'] or '?'}, {memory}")
    return lines
