"""The run directory: everything a run leaves behind, each file written atomically.

    config.json            resolved run configuration
    labels.json            class id -> label name
    metrics.jsonl          one JSON line per round (accuracy, macro-F1, per-site figures)
    rounds/round-NNNN.npz  global trainable weights after round N
    reports/round-NNNN.json / report.txt   per-class reports, whole federation and per site
    final-model/           the final global model, loadable with from_pretrained
    summary.json           how the run ended
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from common.config import RunConfig, resolved
from common.errors import FedSiloError
from common.files import append_jsonl, atomic_write_bytes, atomic_write_json, atomic_write_text
from server.report import report_dict, report_text


class RunDir:
    def __init__(self, path: str | Path):
        self.path = Path(path).resolve()
        try:
            for sub in ("", "rounds", "reports"):
                (self.path / sub).mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise FedSiloError(f"cannot create run directory {self.path}: {err.strerror}") from None

    @property
    def final_model(self) -> Path:
        return self.path / "final-model"

    def write_start(self, cfg: RunConfig) -> None:
        atomic_write_json(self.path / "config.json", resolved(cfg))
        atomic_write_json(self.path / "labels.json", dict(enumerate(cfg.labels)))

    def save_round_weights(self, server_round: int, weights: list[np.ndarray]) -> None:
        buf = io.BytesIO()
        np.savez(buf, *weights)
        atomic_write_bytes(self.path / "rounds" / f"round-{server_round:04d}.npz", buf.getvalue())

    def save_round_report(self, server_round: int, total: np.ndarray, per_site: dict[str, np.ndarray],
                          labels: tuple[str, ...], record: dict) -> None:
        report = {
            "round": server_round,
            "federation": {"confusion": total.tolist(), "report": report_dict(total, labels)},
            "sites": {name: {"confusion": c.tolist(), "report": report_dict(c, labels)}
                      for name, c in sorted(per_site.items())},
        }
        atomic_write_json(self.path / "reports" / f"round-{server_round:04d}.json", report)
        text = [f"Classification report after round {server_round}", "",
                "== federation (all sites' eval splits) ==", report_text(total, labels)]
        for name, c in sorted(per_site.items()):
            text += [f"== site {name} ==", report_text(c, labels)]
        atomic_write_text(self.path / "report.txt", "\n".join(text))
        append_jsonl(self.path / "metrics.jsonl", record)

    def append_report_section(self, title: str, lines: list[str]) -> None:
        report = self.path / "report.txt"
        before = report.read_text(encoding="utf-8") if report.exists() else ""
        body = "\n".join(lines) if lines else "(no site trained)"
        atomic_write_text(report, f"{before}\n== {title} ==\n{body}\n")

    def write_summary(self, summary: dict) -> None:
        atomic_write_json(self.path / "summary.json", summary)
