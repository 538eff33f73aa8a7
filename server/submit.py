"""Submit the FedSilo app to a running SuperLink with `flwr run`, stream its log, read the outcome."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from common.config import RunConfig, write_run_config_toml
from common.errors import FedSiloError
from common.files import atomic_write_json
from common.launch import app_dir, die_with_parent, flower_env, flower_script, process_identity, write_flwr_home
from server.live_status import LIVE_FILE

# Flower's own chatter that says nothing to an operator of FedSilo.
_NOISE = re.compile(r"configure_(fit|evaluate): strategy sampled|aggregate_(fit|evaluate): received|"
                    r"^INFO\s*:\s*$|Requesting initial parameters|Using initial global parameters|"
                    r"Evaluating initial global parameters|\[INIT\]|\[ROUND \d+\]|"
                    r"No fit_metrics_aggregation_fn|No evaluate_metrics_aggregation_fn")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
# Simulation chatter on top: Ray's lines from the virtual sites' actors (per-site progress and
# library warnings, hundreds a round with many sites) and Flower's simulation banners. All of it
# stays in RUN_DIR/logs/serverapp.log; fl-sim --verbose shows it.
_SIM_NOISE = re.compile(r"^\(\w+ pid=\d+(, ip=[\d.]+)?\)|Starting Flower Simulation|simulated SuperNodes|"
                        r"Federation `|To change federation size|flwr federation simulation-config|"
                        r"FutureWarning|^\s*warnings\.warn\(|Starting evaluation of initial|Evaluation returned no results|"
                        r"Using SuperLink:|Successfully started run|Starting logstream|Successfully installed fedsilo|"
                        r"\[SUMMARY\]|Run finished \d+ round|History \(|^\s*INFO\s*:\s*(round \d+: [-\d.e]+|\{.*\})\s*$")
_ROUND = re.compile(r"\bround (\d+)/(\d+) \|")


class Display:
    """Where the run's lines go: stdout, and for fl-sim a progress bar under them (rich; drawn
    only on a terminal, so logs and pipes get the plain lines)."""

    def __init__(self, rounds: int = 0, progress: bool = False, console=None):
        self.bar = None
        if progress:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            console = console or Console()
            if console.is_terminal:
                self.bar = Progress(TextColumn("rounds"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                                    console=console, transient=True)
                self.task = self.bar.add_task("rounds", total=rounds)
                self.bar.start()

    def line(self, text: str) -> None:
        if self.bar is None:
            sys.stdout.write(text)
            sys.stdout.flush()
            return
        from rich.text import Text

        self.bar.console.print(Text.from_ansi(text.rstrip("\n")), highlight=False, markup=False)
        found = _ROUND.search(_ANSI.sub("", text))
        if found:
            self.bar.update(self.task, completed=int(found.group(1)))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def absolute_local_paths(args) -> None:
    """Local paths among the run options as absolute paths: Flower's processes run in the run's
    private FLWR_HOME, not where fl-server / fl-sim was started, and `fl-server resume` reads
    options, never a working directory. A model name that is no local path stays as it is."""
    model = getattr(args, "model", None)
    if model and Path(model).expanduser().exists():
        args.model = str(Path(model).expanduser().resolve())
    if getattr(args, "audit_key", None):
        args.audit_key = str(Path(args.audit_key).expanduser().resolve())


def submit_and_stream(cfg: RunConfig, run_dir: Path, flwr_home: Path, superlink: str, insecure: bool,
                      federation_config: str | None = None, root_cert: str | None = None,
                      verbose: bool = False, follower=None, simulation: bool = False) -> dict:
    """Run the app to completion; returns summary.json (the ServerApp's own account of the run).
    `flwr_home`: this run's private FLWR_HOME (common.launch.private_flwr_home), also the working
    directory of `flwr run`. `follower` (server/tracking.RunFollower) sees every round as it lands;
    `simulation`: fl-sim's quieter output, with a progress bar."""
    write_flwr_home(flwr_home, superlink, insecure, root_cert)
    config_file = write_run_config_toml(cfg, run_dir / "run-config.toml")
    cmd = [flower_script("flwr"), "run", str(app_dir()), "fedsilo", "--run-config", str(config_file),
           "--stream"]
    if federation_config:
        cmd += ["--federation-config", federation_config]
    summary_path = run_dir / "summary.json"
    summary_path.unlink(missing_ok=True)  # only this run's outcome counts
    # Until the ServerApp keeps live.json (server/live_status.py), `fl-server status` sees the
    # coordinator starting, not a stopped run.
    atomic_write_json(run_dir / LIVE_FILE, {"coordinator": process_identity(os.getpid()), "phase": "starting",
                                            "rounds": cfg.rounds, "min_sites": cfg.min_sites, "round": None,
                                            "sites_connected": 0, "asked": 0, "replied": 0,
                                            "updated_at": time.time()})
    log_path = run_dir / "logs" / "serverapp.log"
    log_path.parent.mkdir(exist_ok=True)
    display = Display(cfg.rounds, progress=simulation and not verbose)
    try:
        with open(log_path, "a", encoding="utf-8") as log, subprocess.Popen(
                cmd, env=flower_env(flwr_home), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, text=True, errors="replace", cwd=flwr_home,
                preexec_fn=die_with_parent) as proc:
            for line in proc.stdout:
                log.write(line)
                log.flush()
                plain = _ANSI.sub("", line)
                if verbose or not (_NOISE.search(plain) or simulation and _SIM_NOISE.search(plain)):
                    display.line(line)
                if follower is not None:
                    follower.poll()
            proc.wait()
    finally:
        display.close()
        if follower is not None:
            summary = json.loads(summary_path.read_text(encoding="utf-8")) if summary_path.exists() else {}
            follower.finish(summary.get("status"))
    if not summary_path.exists():
        raise FedSiloError(f"the run ended without a summary (flwr run exit code {proc.returncode}); "
                           f"see {log_path}")
    return json.loads(summary_path.read_text(encoding="utf-8"))


def finish(summary: dict, run_dir: Path) -> int:
    """Exit status from the ServerApp's own account of the run."""
    if summary.get("status") != "ok":
        raise FedSiloError(f"no round completed ({summary.get('rounds_failed') or 'see logs'}); "
                           f"outputs in {run_dir}")
    print(f"done: {len(summary['rounds_completed'])}/{summary['rounds_planned']} rounds; "
          f"final model in {summary['final_model']}", flush=True)
    return 0
