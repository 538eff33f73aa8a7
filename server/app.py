"""The FedSilo ServerApp: initial model -> rounds of (train at sites, aggregate, evaluate) -> final model.

Runs on Flower's compat stack (LegacyContext + DefaultWorkflow + a FedAvg strategy), the
stack on which Flower's SecAgg+ workflow runs.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
import tomllib
from importlib.metadata import PackageNotFoundError, version
from logging import ERROR, INFO, WARNING
from pathlib import Path

from flwr.app import Context
from flwr.common.logger import log
from flwr.server import Grid, LegacyContext, ServerConfig
from flwr.serverapp import ServerApp

from common.config import RunConfig
from common.errors import FedSiloError
from common.launch import COORDINATOR_ENV, app_dir, process_identity
from common.audit import AuditLog, generate_key
from common.model import (
    EMBEDDED_MODEL,
    build_model,
    file_digest,
    final_model_digest,
    get_weights,
    weights_digest,
    load_tokenizer,
    resolve_model,
    save_classifier_atomic,
    set_weights,
)
from common.privacy import guarantee_sentence
from common.token_model import build_tagger
from server.hardware import hardware_summary, report_lines as hardware_lines
from server.head_init import label_names_prior
from server.live_status import LiveStatus
from server.model_card import write_model_card
from server.run_dir import RunDir
from server.secure_aggregation import workflow
from server.site_reports import unreadable_reply
from server.strategy import FedSiloStrategy

app = ServerApp()


def _fedsilo_version() -> str:
    """The installed package's version; in a source tree run without installing it (bench/gpu_check.py
    on a machine without a package index), the app folder's pyproject.toml's."""
    try:
        return version("fedsilo")
    except PackageNotFoundError:
        return tomllib.loads((app_dir() / "pyproject.toml").read_text(encoding="utf-8"))["project"]["version"]


__version__ = _fedsilo_version()

class BoundedGrid:
    """Flower's Grid, except that waiting for the sites' replies ends after round-timeout, and
    replies are looked for every REPLY_POLL_S.

    The compat workflow calls send_and_receive without a timeout, which waits forever for a site
    whose reply never comes; a site that misses the deadline is left out of that round instead.
    Flower's own loop also sleeps 3 s between looks, which a SecAgg+ round (five exchanges)
    pays up to five times."""

    REPLY_POLL_S = 0.5

    def __init__(self, grid: Grid, timeout: float, strategy=None, secure: bool = False,
                 live: LiveStatus | None = None):
        self._grid, self._timeout = grid, timeout
        self._strategy, self._secure, self._live = strategy, secure, live

    def get_node_ids(self):
        ids = self._grid.get_node_ids()
        if self._live is not None:
            self._live.connected(ids)
        return ids

    def send_and_receive(self, messages, *, timeout: float | None = None):
        messages = list(messages)
        if self._live is not None:
            self._live.asking(messages)
        ids = list(self._grid.push_messages(messages))
        sent, waiting = dict(zip(ids, messages)), set(ids)
        deadline = time.monotonic() + (timeout or self._timeout)
        replies = []
        while waiting:
            got = list(self._grid.pull_messages(waiting))
            replies += got
            waiting -= {msg.metadata.reply_to_message_id for msg in got}
            if self._live is not None:
                self._live.update(replied=len(ids) - len(waiting))
            if not waiting or time.monotonic() >= deadline:
                break
            time.sleep(self.REPLY_POLL_S)
        return [reply for reply in replies if self._readable(reply, sent.get(reply.metadata.reply_to_message_id))]

    def _readable(self, reply, instruction) -> bool:
        """A reply Flower's workflow would crash on is left out, as a site that did not answer
        (server/site_reports.py unreadable_reply); the strategy names and audits it."""
        problem = unreadable_reply(reply, instruction, self._secure)
        if problem is None:
            return True
        node, kind = reply.metadata.src_node_id, str(reply.metadata.message_type)
        log(WARNING, "node %s: reply left out: %s", node, problem)
        if self._strategy is not None:
            self._strategy.unreadable_reply(node, "evaluate" if kind == "evaluate" else "train", problem)
        return False

    def __getattr__(self, name):
        return getattr(self._grid, name)


@app.main()
def main(grid: Grid, context: Context) -> None:
    try:
        run(grid, context)
    except FedSiloError as err:
        # One line for the operator; fl-server reads summary.json for the exit status.
        log(ERROR, "FedSilo run failed: %s", err)
        raise SystemExit(2) from None


def watch_coordinator(interval: float = 1.0) -> None:
    """End this ServerApp as soon as the fl-server / fl-sim that started it is gone.

    Killed with SIGKILL, a coordinator cannot stop the ServerApp (two sessions below it); left
    alone it would run on until its waits time out, writing into the run directory that a
    resumed coordinator is using by then."""
    identity = os.environ.get(COORDINATOR_ENV, "")
    if not identity:
        return  # started by hand with `flwr run`: nobody to watch
    pid = int(identity.split(":")[0])

    def watch() -> None:
        while process_identity(pid) == identity:
            time.sleep(interval)
        log(ERROR, "FedSilo: the coordinator (pid %d) is gone; this ServerApp stops", pid)
        os._exit(3)  # no cleanup: whatever it would write belongs to the resumed run now

    threading.Thread(target=watch, name="watch-coordinator", daemon=True).start()


def run(grid: Grid, context: Context) -> None:
    watch_coordinator()
    cfg = RunConfig.from_dict(dict(context.run_config))
    cfg.require_labels()
    run_dir = RunDir(cfg.run_dir or Path.cwd() / "runs" / str(context.run_id))
    resumed = run_dir.resume_point(cfg)  # the checkpoint of an earlier, killed run of this configuration
    run_dir.write_start(cfg)
    live = LiveStatus(run_dir.path, cfg.rounds, cfg.min_sites)
    log(INFO, "FedSilo run %s -> %s", context.run_id, run_dir.path)

    audit = open_audit(cfg, run_dir)
    if not resumed:
        audit.append("run_start", {"run_id": context.run_id, "fedsilo_version": __version__,
                                   "config_sha256": hashlib.sha256(cfg.to_json().encode()).hexdigest(),
                                   "base_model": cfg.model or EMBEDDED_MODEL, "base_model_digest": model_digest(cfg.model),
                                   "labels": list(cfg.labels), "secure_aggregation": cfg.secure_aggregation})
    model = build_tagger(cfg, cfg.labels) if cfg.task == "ner" else build_model(cfg)
    if resumed:
        done = int(resumed["last_round"])
        last_model = max(resumed["completed_rounds"], default=0)
        initial = run_dir.load_round_weights(last_model)
        if [w.shape for w in initial] != [w.shape for w in get_weights(model)]:
            raise FedSiloError(f"cannot resume: {run_dir.path}/rounds/round-{last_model:04d}.npz does not fit the model")
        run_dir.trim_metrics(done)
        audit.append("run_resume", {"run_id": context.run_id, "after_round": done,
                                    "model_of_round": last_model, "weights": weights_digest(initial)})
        log(INFO, "FedSilo run resumed after round %d of %d (global model of round %d)", done, cfg.rounds, last_model)
    else:
        done, initial = 0, get_weights(model)
        run_dir.save_round_weights(0, initial)
    strategy = FedSiloStrategy(cfg, run_dir, initial, audit, resumed)
    if cfg.stats_round is not None and done < cfg.stats_round:
        strategy.head_prior = label_names_prior(model, load_tokenizer(cfg.model), cfg.labels, cfg.max_length)
    started = time.monotonic()
    if done < cfg.rounds:
        legacy = LegacyContext(context=context, config=ServerConfig(num_rounds=cfg.rounds - done), strategy=strategy)
        bounded = BoundedGrid(grid, cfg.round_timeout, strategy, cfg.secure_aggregation, live)
        workflow(cfg)(bounded, legacy)
    strategy.close_rounds()  # a round SecAgg+ halted never reached aggregate_fit
    strategy.checkpoint(cfg.rounds)

    summary = {
        "run_id": context.run_id,
        "rounds_planned": cfg.rounds,
        "rounds_completed": strategy.completed_rounds,
        "rounds_failed": {str(k): v for k, v in strategy.failed_rounds.items()},
        "secure_aggregation": cfg.secure_aggregation,
        "site_names_from": strategy.names_source,
        "resumed_after_round": done if resumed else None,
        "seconds": round(time.monotonic() - started, 1),
        "status": "ok" if strategy.completed_rounds else "failed",
    }
    summary["privacy"] = privacy_summary(strategy.site_privacy, cfg.task)
    run_dir.append_report_section("Privacy (what each site reported of itself)", list(summary["privacy"].values()))
    summary["hardware"] = hardware_summary(run_dir.path / "metrics.jsonl")
    run_dir.append_report_section("Hardware (what each site reported of itself)", hardware_lines(summary["hardware"]))
    if strategy.completed_rounds:
        set_weights(model, strategy.global_weights)
        save_classifier_atomic(model, load_tokenizer(cfg.model), run_dir.final_model)
        summary["final_model"] = str(run_dir.final_model)
        summary["final_model_digest"] = final_model_digest(run_dir.final_model)
    audit.append("final_model", {"status": summary["status"], "digest": summary.get("final_model_digest"),
                                 "rounds_completed": strategy.completed_rounds})
    summary["audit_log"] = str(audit.path)
    summary["audit_head"] = audit.head  # keep it elsewhere too: it pins the log's length
    run_dir.write_summary(summary)
    write_model_card(run_dir.path, cfg, summary, strategy.site_privacy)
    live.finished(summary["status"])
    report = (run_dir.path / "report.txt")
    if report.exists():
        log(INFO, "\n%s", report.read_text(encoding="utf-8"))
    log(INFO, "FedSilo run finished: %d of %d rounds completed; outputs in %s",
        len(strategy.completed_rounds), cfg.rounds, run_dir.path)


def open_audit(cfg: RunConfig, run_dir: RunDir) -> AuditLog:
    """The coordinator's signed audit trail, run_dir/audit.jsonl."""
    key = Path(cfg.audit_key) if cfg.audit_key else run_dir.path / "server-audit.key"
    if not key.exists():
        generate_key(key)
    return AuditLog(run_dir.path / "audit.jsonl", key, "server")


def model_digest(name: str) -> str:
    """Digest of the base model's weight files (a name not on disk is recorded as a name)."""
    path = Path(resolve_model(name))
    files = sorted(path.glob("*.safetensors")) + sorted(path.glob("*.bin")) if path.is_dir() else []
    if not files:
        return f"name:{name}"
    h = hashlib.sha256()
    for f in files:
        h.update(file_digest(f).encode())
    return "sha256:" + h.hexdigest()


def privacy_summary(site_privacy: dict[str, dict], task: str = "classify") -> dict[str, str]:
    """One exact sentence per site, from what each site last reported about itself."""
    out = {}
    for name, rep in sorted(site_privacy.items()):
        if rep.get("dp"):
            n_eval = rep.get("eval_records")
            out[name] = guarantee_sentence(name, float(rep["epsilon"]), float(rep["delta"]), str(rep["accountant"]),
                                           int(rep["records"]), None if n_eval is None else int(n_eval),
                                           json.loads(rep["mechanisms"]) if rep.get("mechanisms") else None, task)
        else:
            out[name] = f"site {name}: NO differential privacy (turned off at the site with --no-dp)."
    return out
