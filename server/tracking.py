"""Experiment tracking: a run's rounds in TensorBoard and MLflow, and report.html after every round.

fl-server and fl-sim follow RUN_DIR/metrics.jsonl while the run goes on (RunFollower.poll after
each line the run prints) and hand every new round to the trackers. They run in the coordinator's
own process, not in the ServerApp: the app that sites and the SuperLink run stays free of them,
and a tracker that fails (a full disk, an MLflow server gone) costs a warning, never the run.

TensorBoard: torch.utils.tensorboard's SummaryWriter (event files TensorBoard reads as they grow).
MLflow: MlflowClient against any tracking URI (`file:PATH` needs no server). One MLflow run per
FedSilo run: its id is kept in RUN_DIR/tracking.json, so a resumed run goes on in the same one.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from pathlib import Path

from common.errors import FedSiloError
from common.files import atomic_write_json
from server.run_status import RunView

STATE_FILE = "tracking.json"
EXPERIMENT = "fedsilo"


def add_tracking_options(p) -> None:
    p.add_argument("--tensorboard", metavar="DIR", default=None,
                   help="write TensorBoard event files to DIR: accuracy, macro-F1, per-site accuracy and "
                        "epsilon per site, per round (view with: tensorboard --logdir DIR)")
    p.add_argument("--mlflow", metavar="URI", default=None,
                   help="log the run to MLflow at this tracking URI (file:PATH needs no server; "
                        "http://HOST:PORT for a tracking server): the configuration as parameters, every "
                        "round's metrics, the model card and report as artifacts")


def _name(text: str) -> str:
    """A site or class name as a metric key (MLflow allows letters, digits, _ - . / and space)."""
    return re.sub(r"[^A-Za-z0-9_.\- ]", "_", str(text))[:100] or "_"


def round_metrics(record: dict) -> dict[str, float]:
    out = {"round/failed": 1.0 if record.get("status") == "failed" else 0.0}
    if isinstance(record.get("seconds"), (int, float)):
        out["round/seconds"] = float(record["seconds"])
    if record.get("eval_examples"):
        out["federation/accuracy"] = float(record["accuracy"])
        out["federation/macro_f1"] = float(record["macro_f1"])
    for site, acc in (record.get("site_accuracy") or {}).items():
        if isinstance(acc, (int, float)):
            out[f"site/{_name(site)}/accuracy"] = float(acc)
    for site, fit in (record.get("fit") or {}).items():
        if isinstance(fit, dict) and fit.get("dp") and isinstance(fit.get("epsilon"), (int, float)):
            out[f"epsilon/{_name(site)}"] = float(fit["epsilon"])
    out["sites/trained"] = float(len(record.get("fit") or {}))
    return out


def run_params(config: dict) -> dict[str, str]:
    return {key: (",".join(map(str, value)) if isinstance(value, list) else str(value))[:500]
            for key, value in sorted(config.items()) if key not in ("audit_key",)}


class RunFollower:
    def __init__(self, run_dir: Path, tensorboard: str | None = None, mlflow_uri: str | None = None):
        self.run_dir = Path(run_dir)
        self.state_path = self.run_dir / STATE_FILE
        try:
            self.state = json.loads(self.state_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            self.state = {}  # none yet (or unreadable): log every round from the first
        if not isinstance(self.state, dict):
            self.state = {}
        self.logged = int(self.state.get("last_round", 0))
        self.tb = self.mlflow = None
        self.run_id = None
        self.warned = False
        self._size = -1
        if tensorboard:
            self.tb = _tensorboard_writer(Path(tensorboard).expanduser().resolve())
        if mlflow_uri:
            self.mlflow, self.run_id = _mlflow_run(mlflow_uri, self.state.get("mlflow_run_id"), self.run_dir)
            self.state["mlflow_run_id"] = self.run_id  # saved with the first round (the run directory may not exist yet)

    def _save(self) -> None:
        self.state["last_round"] = self.logged
        atomic_write_json(self.state_path, self.state)

    def _warn(self, what: str, err: Exception) -> None:
        if not self.warned:
            print(f"{Path(sys.argv[0]).name}: warning: {what} failed ({type(err).__name__}: {err}); the run goes on",
                  file=sys.stderr, flush=True)
        self.warned = True

    def poll(self) -> None:
        """Hand every round not yet logged to the trackers; rewrite report.html if there was one."""
        try:
            size = (self.run_dir / "metrics.jsonl").stat().st_size
        except OSError:
            return
        if size == self._size:
            return  # called after every line the run prints: nothing new, nothing read
        self._size = size
        try:
            view = RunView(self.run_dir)
        except FedSiloError:
            return  # the ServerApp has not written config.json yet
        new = [r for r in view.rounds if r["round"] > self.logged]
        if not new:
            return
        if self.mlflow is not None and not self.state.get("params_logged"):
            try:
                from mlflow.entities import Param

                self.mlflow.log_batch(self.run_id, params=[Param(k, v) for k, v in run_params(view.config).items()])
                self.state["params_logged"] = True
            except Exception as err:  # noqa: BLE001 - a tracker never stops the run
                self._warn("MLflow", err)
        for record in new:
            metrics = round_metrics(record)
            if self.tb is not None:
                for key, value in metrics.items():
                    self.tb.add_scalar(key, value, record["round"])
                self.tb.flush()
            if self.mlflow is not None:
                try:
                    from mlflow.entities import Metric

                    stamp = int(time.time() * 1000)
                    self.mlflow.log_batch(self.run_id, metrics=[Metric(k, v, stamp, record["round"])
                                                                for k, v in metrics.items()])
                except Exception as err:  # noqa: BLE001
                    self._warn("MLflow", err)
            self.logged = record["round"]
        self._save()
        self._report(view)

    def _report(self, view: RunView) -> None:
        from server.html_report import write_report

        try:
            write_report(view)
        except Exception as err:  # noqa: BLE001 - the report never stops the run
            self._warn("writing report.html", err)

    def finish(self, status: str | None) -> None:
        """After the run: the last rounds, report.html, and the model card and report as artifacts."""
        self.poll()
        try:
            self._report(RunView(self.run_dir))
        except FedSiloError:
            pass
        if self.run_dir.is_dir():
            self._save()
        if self.tb is not None:
            self.tb.close()
        if self.mlflow is not None:
            try:
                for name in ("MODEL_CARD.md", "model_card.html", "report.html", "report.txt", "summary.json"):
                    if (self.run_dir / name).exists():
                        self.mlflow.log_artifact(self.run_id, str(self.run_dir / name))
                self.mlflow.set_terminated(self.run_id, "FINISHED" if status == "ok" else "FAILED")
            except Exception as err:  # noqa: BLE001
                self._warn("MLflow", err)


def _tensorboard_writer(folder: Path):
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / ".fedsilo-write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise FedSiloError(f"--tensorboard {folder}: cannot write there ({err.strerror})") from None
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(log_dir=str(folder))


def _mlflow_run(uri: str, run_id: str | None, run_dir: Path):
    """The MLflow client and the run to log to, checked before the federation starts: a wrong
    URI is one line at the start, not a warning an hour in."""
    # An unreachable tracking server must fail in seconds, not after MLflow's minutes of retries.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    # MLflow 3 keeps its file store working but refuses it unless asked: `file:` is what a site
    # without a tracking server has (sqlite: needs the full mlflow package, not mlflow-skinny).
    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    from mlflow import MlflowClient

    try:
        client = MlflowClient(tracking_uri=uri)
        if run_id:
            try:
                client.get_run(run_id)
                return client, run_id
            except Exception:  # noqa: BLE001 - that run is gone from this store: start a new one
                pass
        experiment = client.get_experiment_by_name(EXPERIMENT)
        experiment_id = experiment.experiment_id if experiment else client.create_experiment(EXPERIMENT)
        run = client.create_run(experiment_id, run_name=run_dir.name, tags={"fedsilo.run_dir": str(run_dir)})
    except Exception as err:  # noqa: BLE001 - MLflow raises many kinds; each is one line here
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise FedSiloError(f"--mlflow {uri}: cannot log there: {first[:300]}") from None
    return client, run.info.run_id
