"""Reading a run directory from outside the run: `fl-server status RUN_DIR`, report.html and the
experiment trackers all see a run through RunView.

Everything here only reads. Whatever a site sent (site names, failure texts) is shown through
common.errors.printable: one line stays one line.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from common.errors import FedSiloError, printable
from common.launch import process_identity
from server.fairness_round import fairness_text
from server.live_status import LIVE_FILE


class RunView:
    def __init__(self, path: str | Path):
        self.path = Path(path).expanduser().resolve()
        if not (self.path / "config.json").is_file():
            raise FedSiloError(f"{self.path} is not a FedSilo run directory (no config.json)")
        self.config = self._json("config.json") or {}
        self.rounds = self._metrics()
        self.summary = self._json("summary.json")
        self.live = self._json(LIVE_FILE)

    def _json(self, name: str) -> dict | None:
        try:
            value = json.loads((self.path / name).read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as err:
            raise FedSiloError(f"cannot read {self.path / name}: {err}") from None
        return value if isinstance(value, dict) else None

    def _metrics(self) -> list[dict]:
        """metrics.jsonl's rounds; a line cut short by a crash (the last one) is skipped."""
        try:
            lines = (self.path / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return []
        rounds = []
        for line in lines:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and isinstance(record.get("round"), int):
                rounds.append(record)
        return rounds

    @property
    def rounds_planned(self) -> int:
        return int((self.live or {}).get("rounds") or self.config.get("rounds") or 0)

    def state(self) -> str:
        """'finished', 'running' or 'stopped' (no summary, and the coordinator that ran it is gone)."""
        if self.summary is not None and (self.live or {}).get("phase", "finished").startswith("finished"):
            return "finished"
        coordinator = (self.live or {}).get("coordinator")
        if coordinator and process_identity(int(str(coordinator).split(":")[0])) == coordinator:
            return "running"
        return "stopped"

    def epsilon(self) -> dict[str, list[tuple[int, float]]]:
        """Each site's epsilon after each round it trained in: [(round, epsilon), ...]."""
        out: dict[str, list[tuple[int, float]]] = {}
        for record in self.rounds:
            for site, fit in sorted((record.get("fit") or {}).items()):
                if isinstance(fit, dict) and fit.get("dp") and isinstance(fit.get("epsilon"), (int, float)):
                    out.setdefault(str(site), []).append((record["round"], float(fit["epsilon"])))
        return out

    def last_failure(self) -> str | None:
        for record in reversed(self.rounds):
            if record.get("status") == "failed":
                return f"round {record['round']}: {record.get('failed_reason') or 'failed'}"
            left_out = [*record.get("fit_failures", []), *record.get("eval_failures", [])]
            if left_out:
                return f"round {record['round']}: left out: {left_out[-1]}"
        return None

    def latest_report(self) -> dict | None:
        reports = sorted((self.path / "reports").glob("round-*.json"))
        for path in reversed(reports):
            try:
                return json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
        return None


def _ago(timestamp) -> str:
    if not isinstance(timestamp, (int, float)):
        return "?"
    seconds = max(0, int(time.time() - timestamp))
    return f"{seconds}s ago" if seconds < 120 else f"{seconds // 60} min ago"


def status_lines(view: RunView) -> list[str]:
    state = view.state()
    live, rounds = view.live or {}, view.rounds
    planned = view.rounds_planned
    done = [r["round"] for r in rounds if r.get("status") != "failed"]
    lines = [f"run {view.path}: {state.upper()}"]
    if state == "running":
        where = f"round {live['round']}/{planned}, " if live.get("round") else ""
        lines.append(f"now: {where}{printable(str(live.get('phase', '?')), 80)}; sites connected "
                     f"{live.get('sites_connected', 0)} (needs {live.get('min_sites', '?')}); "
                     f"replies {live.get('replied', 0)} of {live.get('asked', 0)} (updated {_ago(live.get('updated_at'))})")
    elif state == "stopped":
        lines.append("no summary: the coordinator that ran it is gone (killed?); "
                     f"continue it with: fl-server resume {view.path}")
    lines.append(f"rounds: {len(done)} of {planned} completed"
                 + (f", {len(rounds) - len(done)} failed" if len(rounds) > len(done) else ""))
    if rounds:
        last = rounds[-1]
        if last.get("eval_examples"):
            lines.append(f"last round {last['round']}: accuracy {last['accuracy']:.3f}  macro-F1 {last['macro_f1']:.3f}")
        if fairness := fairness_text(last):  # sites with a group column (docs/fairness.md)
            lines.append(f"fairness in round {last['round']}: {printable(fairness, 300)}")
        trained = sorted(str(s) for s in (last.get("fit") or {}))
        lines.append(f"trained in round {last['round']}: " + (", ".join(printable(s, 100) for s in trained) or "no site"))
    eps = view.epsilon()
    if eps:
        lines.append("epsilon spent: " + "  ".join(f"{printable(s, 100)}={v[-1][1]:.2f}" for s, v in eps.items()))
    failure = view.last_failure()
    lines.append(f"last failure: {printable(failure, 300)}" if failure else "last failure: none")
    if state == "finished":
        lines.append(f"outcome: {view.summary.get('status')}; final model {view.summary.get('final_model', '-')}")
        for name in ("report.html", "MODEL_CARD.md"):
            if (view.path / name).exists():
                lines.append(f"{name}: {view.path / name}")
    return lines


def status_json(view: RunView) -> dict:
    """What status_lines says, for scripts and monitoring."""
    return {"run_dir": str(view.path), "state": view.state(), "rounds_planned": view.rounds_planned,
            "rounds_completed": [r["round"] for r in view.rounds if r.get("status") != "failed"],
            "live": view.live if view.state() == "running" else None,
            "last_round": view.rounds[-1] if view.rounds else None,
            "epsilon": {site: values[-1][1] for site, values in view.epsilon().items()},
            "last_failure": view.last_failure(), "summary_status": (view.summary or {}).get("status")}
