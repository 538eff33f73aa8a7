"""The FedSilo ServerApp: initial model -> rounds of (train at sites, aggregate, evaluate) -> final model.

Runs on Flower's compat stack (LegacyContext + DefaultWorkflow + a FedAvg strategy), the
stack on which Flower's SecAgg+ workflow runs.
"""

from __future__ import annotations

import time
from logging import ERROR, INFO
from pathlib import Path

from flwr.app import Context
from flwr.common.logger import log
from flwr.server import Grid, LegacyContext, ServerConfig
from flwr.server.workflow import DefaultWorkflow
from flwr.serverapp import ServerApp

from common.config import RunConfig
from common.errors import FedSiloError
from common.model import build_model, get_weights, load_tokenizer, save_pretrained_atomic, set_weights
from common.privacy import guarantee_sentence
from server.run_dir import RunDir
from server.strategy import FedSiloStrategy

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    try:
        run(grid, context)
    except FedSiloError as err:
        # One line for the operator; fl-server reads summary.json for the exit status.
        log(ERROR, "FedSilo run failed: %s", err)
        raise SystemExit(2) from None


def run(grid: Grid, context: Context) -> None:
    cfg = RunConfig.from_dict(dict(context.run_config))
    cfg.require_labels()
    run_dir = RunDir(cfg.run_dir or Path.cwd() / "runs" / str(context.run_id))
    run_dir.write_start(cfg)
    log(INFO, "FedSilo run %s -> %s", context.run_id, run_dir.path)

    model = build_model(cfg)
    strategy = FedSiloStrategy(cfg, run_dir, get_weights(model))
    legacy = LegacyContext(context=context, config=ServerConfig(num_rounds=cfg.rounds), strategy=strategy)
    started = time.monotonic()
    DefaultWorkflow()(grid, legacy)

    summary = {
        "run_id": context.run_id,
        "rounds_planned": cfg.rounds,
        "rounds_completed": strategy.completed_rounds,
        "rounds_failed": {str(k): v for k, v in strategy.failed_rounds.items()},
        "seconds": round(time.monotonic() - started, 1),
        "status": "ok" if strategy.completed_rounds else "failed",
    }
    summary["privacy"] = privacy_summary(strategy.site_privacy)
    run_dir.append_report_section("Privacy (what each site reported of itself)", list(summary["privacy"].values()))
    if strategy.completed_rounds:
        set_weights(model, strategy.global_weights)
        save_pretrained_atomic(model, load_tokenizer(cfg.model), run_dir.final_model)
        summary["final_model"] = str(run_dir.final_model)
    run_dir.write_summary(summary)
    report = (run_dir.path / "report.txt")
    if report.exists():
        log(INFO, "\n%s", report.read_text(encoding="utf-8"))
    log(INFO, "FedSilo run finished: %d of %d rounds completed; outputs in %s",
        len(strategy.completed_rounds), cfg.rounds, run_dir.path)


def privacy_summary(site_privacy: dict[str, dict]) -> dict[str, str]:
    """One exact sentence per site, from what each site last reported about itself."""
    out = {}
    for name, rep in sorted(site_privacy.items()):
        if rep.get("dp"):
            out[name] = guarantee_sentence(name, float(rep["epsilon"]), float(rep["delta"]),
                                           str(rep["accountant"]), int(rep["records"]))
        else:
            out[name] = f"site {name}: NO differential privacy (turned off at the site with --no-dp)."
    return out
